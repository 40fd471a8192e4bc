"""Stage 1: the bottleneck cache."""
