def register(subparsers):
    """Adds `mlkit evaluate` (being written)."""
