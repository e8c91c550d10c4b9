"""User-facing errors.

Anything a user can cause (unknown dataset, missing or corrupt file, wrong checkpoint, bad
config value) raises :class:`CGNError` with a one-line message that names the problem and the
fix. The CLI prints it as ``cgn: error: <message>`` and exits with status 2, without a traceback.
"""


class CGNError(Exception):
    """An error caused by input the user controls; its message says what to do."""


def warn(message: str) -> None:
    """A one-line warning on stderr (``cgn: warning: ...``): something worked but deserves a look."""
    import sys
    print(f"cgn: warning: {message}", file=sys.stderr, flush=True)
