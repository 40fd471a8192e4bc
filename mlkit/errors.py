"""Errors a user can hit. The CLI prints them without a traceback."""


class MlkitError(Exception):
    """A problem with the user's input or files, explained in the message."""


class ManifestError(MlkitError, ValueError):
    """A manifest that cannot be used; the message names the file and row."""


class CacheError(MlkitError):
    """A bottleneck cache that is missing, incomplete or does not match the request."""
