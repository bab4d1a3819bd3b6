"""The one user-facing error type.

A `DiffmixError` carries a one-line message naming the file, field or value at
fault. The CLI prints it on stderr and exits non-zero, without a traceback.
Bad *rows* are never errors: they go to `rejects/` with a reason.
"""


class DiffmixError(Exception):
    """Bad input or configuration, reported as one line."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))


class WorkerDied(Exception):
    """A task whose Dask worker died each time it ran it (out of memory, killed, a crash in
    compiled code): one line, with the build's staged work kept for a rerun, as after a kill."""


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so that a command ends as Ctrl-C ends it: through
    its cleanups (temporary files, a temporary Prefect server, a Dask cluster), with one line."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"signal {signum}")
        self.signum = signum


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when it has none)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
