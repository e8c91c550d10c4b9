"""Stopping long commands cleanly.

Two pieces:

- :func:`sigterm_as_interrupt` routes SIGTERM (``kill``, schedulers, CI timeouts) to
  ``KeyboardInterrupt``, so every command stops the same way on either signal.
- :class:`StepBoundary` makes a training loop stop *between* steps. Inside ``with
  StepBoundary() as stop:`` a first SIGINT or SIGTERM only sets ``stop.requested``; the loop
  finishes the step it is in, sees the flag, saves exactly the state an uninterrupted run has at
  that step, and calls ``stop.raise_()``. A second signal means "now": it raises
  ``KeyboardInterrupt`` at once (the periodic checkpoints on disk are untouched, so nothing
  is lost either way; the work since the last one is redone on resume).

Outside the main thread (an embedding application) signal handlers cannot be installed; the
loop then runs as before and signals keep their usual meaning.
"""
from __future__ import annotations

import signal
import sys
import threading

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


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


class StepBoundary:
    """Defer SIGINT / SIGTERM to the next step boundary of a loop (see the module docstring).

    ::

        with StepBoundary() as stop:
            while step < total:
                train_step(); step += 1
                if stop.requested:
                    save(); stop.raise_()
    """

    def __init__(self) -> None:
        self.requested: str | None = None  # the name of the first signal received
        self._previous: dict[int, object] = {}

    def _handler(self, signum, frame):
        if self.requested is not None:
            raise KeyboardInterrupt  # a second signal: stop now
        self.requested = signal.Signals(signum).name
        sys.stderr.write(f"\n{self.requested}: stopping after the current step "
                         "(send it again to stop at once)\n")
        sys.stderr.flush()

    def __enter__(self) -> "StepBoundary":
        if threading.current_thread() is threading.main_thread():
            for s in _SIGNALS:
                self._previous[s] = signal.signal(s, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h)
        self._previous.clear()

    def raise_(self) -> None:
        """Leave the loop the way a Ctrl-C does (``cgn.cli`` prints the one-line message)."""
        raise KeyboardInterrupt(self.requested or "interrupted")
