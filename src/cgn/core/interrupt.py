"""SIGTERM handled like Ctrl-C, so `kill`, schedulers and CI timeouts stop a run the way an
interactive user does: the current step finishes its bookkeeping, checkpoints are kept, and a
rerun resumes."""
from __future__ import annotations

import signal


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def sigterm_as_interrupt():
    """Route SIGTERM to KeyboardInterrupt; returns the previous handler (None when this is not
    the main thread, e.g. inside an embedding application, whose signals are left alone)."""
    try:
        return signal.signal(signal.SIGTERM, _raise_interrupt)
    except ValueError:
        return None


def restore_sigterm(previous) -> None:
    if previous is not None:
        signal.signal(signal.SIGTERM, previous)
