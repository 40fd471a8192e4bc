"""Stage 2: top models tuned on the cache."""
