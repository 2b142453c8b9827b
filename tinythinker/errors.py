"""User-facing errors: one clear line naming the thing and the fix, never a traceback."""


class TinyThinkerError(Exception):
    """An error the user caused and can fix (bad file, unknown data set, existing output, ...).

    The CLI prints ``str(error)`` on one line and exits with status 2; library callers catch it."""


def where(path, line: int | None = None) -> str:
    """`path` or `path:line` for error messages."""
    return f"{path}:{line}" if line is not None else str(path)
