"""The benchmarks' one timing loop: named callables interleaved in rounds.

Each call is timed alone, in wall seconds and in process CPU seconds (the CPU time, divided by
the thread count, estimates the wall time on an otherwise idle machine). Interleaving the
callables round by round makes a background load that comes and goes hit all of them alike.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable


def interleaved(fns: dict[str, Callable[[], object]], rounds: int, calls: int = 1,
                warmup: int = 0) -> dict[str, dict[str, list[float]]]:
    """Call every fn ``warmup`` times (untimed), then ``rounds`` rounds in which each fn, in the
    order given, runs ``calls`` times in a row. Returns ``{name: {"wall": [...], "cpu": [...]}}``
    with one entry per timed call."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    out = {name: {"wall": [], "cpu": []} for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            for _ in range(calls):
                t0, c0 = time.perf_counter(), time.process_time()
                fn()
                out[name]["wall"].append(time.perf_counter() - t0)
                out[name]["cpu"].append(time.process_time() - c0)
    return out


def median(times: dict[str, list[float]], key: str = "wall") -> float:
    return statistics.median(times[key])
