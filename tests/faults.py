"""Real stops of real processes: start a ``cgn`` command, wait until it is working, send a signal
at a random moment, and report how it ended. Used by the fault tests of every long command."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

SRC = str(Path(__file__).resolve().parents[1] / "src")


def cgn_process(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": "1"}
    # A test run started in the background of a non-interactive shell (`cmd &`) inherits SIGINT
    # ignored, and Python then never raises KeyboardInterrupt: the child gets the default
    # disposition back, as a command typed at a terminal has it.
    return subprocess.Popen([sys.executable, "-m", "cgn", *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def stop_at_random(args: list[str], ready: Callable[[], bool], sig: int, seed: int,
                   max_delay: float = 1.0, timeout: float = 600) -> tuple[int, str, float]:
    """Run ``cgn *args``; once ``ready()`` holds, wait a random delay (seeded) and send ``sig``.
    Returns (exit status, stderr, the delay used) -- the delay goes into assertion messages so a
    failure can be replayed."""
    delay = random.Random(seed).uniform(0, max_delay)
    primed = ready()  # a predicate that holds before the start says nothing about progress
    proc = cgn_process(args)
    start = time.monotonic()
    while not ready() and proc.poll() is None and time.monotonic() - start < timeout:
        time.sleep(0.01)
    time.sleep(delay)
    if proc.poll() is None:
        proc.send_signal(sig)
    _, err = proc.communicate(timeout=timeout)
    rc = proc.returncode
    if rc == -sig and sig in (signal.SIGINT, signal.SIGTERM) and not primed:
        # cgn turns both signals into a clean stop from the start of its main to its end; dying
        # of one once ready() came true (it was false before the start, so the work had begun)
        # means it came during Python's shutdown (which restores the default handlers), after
        # the command had finished: on a fast machine it may. Report that as finished, as if
        # the signal had come after the exit.
        rc = 0
    return rc, err, delay


SIGNALS = {"ctrl-c": signal.SIGINT, "sigterm": signal.SIGTERM, "hard-kill": signal.SIGKILL}
