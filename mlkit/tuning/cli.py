def register(subparsers):
    """Adds this module's subcommands (being written)."""
