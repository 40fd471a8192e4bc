"""Errors a user can hit. The CLI prints them without a traceback."""


class MlkitError(Exception):
    """A problem with the user's input or files, explained in the message."""


class ManifestError(MlkitError, ValueError):
    """A manifest that cannot be used; the message names the file and row."""


class CacheError(MlkitError):
    """A bottleneck cache that is missing, incomplete or does not match the request."""


def check_choice(value, choices, what):
    """`value` when it is one of `choices`; else MlkitError naming `what`, the value and the choices."""
    if value not in choices:
        raise MlkitError(f"unknown {what} {value!r}; choose one of: {', '.join(map(str, choices))}")
    return value
