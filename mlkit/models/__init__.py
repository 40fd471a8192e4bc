"""Stage 3: fine-tuning, export and prediction."""
