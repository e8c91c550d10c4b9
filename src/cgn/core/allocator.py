"""Keep freed memory in the process between training steps (glibc's ``malloc`` tuned once).

A training step allocates the same few-MiB tensors (activations, gradients) and frees them again.
glibc serves blocks above a dynamic threshold with fresh ``mmap`` pages and hands the top of the
heap back to the kernel whenever more than twice that threshold is free; the next step then takes
a page fault on every 4 KiB it writes. On a 2-core AVX-512 VM the MNIST classifier's step spent
a third of its time zero-filling one such fresh block (the max-pool gradient, 6 MiB), and the
whole step was 1.3x faster with the thresholds below (benchmarks/isa_levels.py, docs/speed.md).

:func:`keep_freed_memory` raises the mmap threshold to 256 MiB (bigger blocks, such as whole
datasets, still get their own mapping and go back when freed) and keeps up to 1 GiB of freed heap
for reuse. Peak memory is unchanged; the resident size stays near the peak until the process
exits. A no-op outside glibc, and when the user set ``MALLOC_MMAP_THRESHOLD_`` or
``MALLOC_TRIM_THRESHOLD_`` (their values win) or ``CGN_MALLOC=default``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

MMAP_THRESHOLD = 256 << 20
TRIM_THRESHOLD = 1 << 30
TOP_PAD = 64 << 20
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3  # glibc's mallopt parameters

_state: str | None = None  # what keep_freed_memory did in this process


def keep_freed_memory() -> str:
    """Tune glibc's malloc once per process; returns what was done (for logs and tests):
    ``"tuned"``, ``"tuned already"``, or why not."""
    global _state
    if _state is not None:
        return "tuned already" if _state == "tuned" else _state
    if os.environ.get("CGN_MALLOC", "").strip().lower() == "default":
        _state = "left alone (CGN_MALLOC=default)"
    elif any(k in os.environ for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")):
        _state = "left alone (MALLOC_*_THRESHOLD_ set by the user)"
    else:
        _state = _tune()
    return _state


def _tune() -> str:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return "left alone (no glibc mallopt)"
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = all(mallopt(p, v) == 1 for p, v in ((_M_MMAP_THRESHOLD, MMAP_THRESHOLD),
                                              (_M_TRIM_THRESHOLD, TRIM_THRESHOLD), (_M_TOP_PAD, TOP_PAD)))
    return "tuned" if ok else "left alone (mallopt refused)"
