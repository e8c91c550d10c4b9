"""Training statistics over the log window: the steps between two metrics lines.

Every trainer sums its per-step statistics (losses, mask means, accuracies) between two rows of
``metrics.jsonl`` and logs their means; :class:`WindowStats` is that running sum::

    window = WindowStats(every=cfg.log_every)
    for step in ...:
        window.add({"loss": loss, "acc": (n_correct, n)})  # a value counts 1; (sum, count) pairs
        if window.ready(step, last=step == total):
            w = window.flush(dist)                          # means over the window (and all ranks)
            run.metric({"step": step, **w.means, "sec_per_step": w.sec_per_step})

Values may be numbers or tensors (kept on their device until the flush, so adding never waits
for the GPU). A mean is ``sum / count`` with sums and counts added over DDP ranks first (NaN for
a zero count). The sums are part of a trainer's exact-resume state: :meth:`state_dict` /
:meth:`load_state_dict` (or :meth:`running_sums` / :meth:`load_running_sums` for statistics that
count one per step), so a resumed run writes the same rows as an uninterrupted one.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch

from cgn.core.distributed import DistInfo
from cgn.errors import CGNError


def check_finite(record: Mapping[str, Any], step: int, last_checkpoint: Path | None = None,
                 what: str = "training") -> None:
    """Stop a diverged run with one line (NaN / inf in a step's statistics) before anything of
    that step is logged or saved; the last good checkpoint (``last_checkpoint``, named in the
    message when it exists) stays as it is."""
    bad = []
    for name, value in record.items():
        v = value[0] if isinstance(value, tuple) else value
        if isinstance(v, torch.Tensor):
            v = v.detach().float().sum().item()
        if isinstance(v, float) and not math.isfinite(v):
            bad.append(f"{name}={v}")
    if bad:
        kept = (f"; the last checkpoint ({last_checkpoint}) is kept"
                if last_checkpoint is not None and last_checkpoint.exists() else "")
        raise CGNError(f"{what} diverged at step {step} ({', '.join(bad[:4])}): lower the learning "
                       f"rate or check the data and settings{kept}")


@dataclass(frozen=True)
class Window:
    """One flushed window: the means (in the order the statistics were first added), the number
    of :meth:`WindowStats.add` calls and the wall-clock seconds it spanned."""
    means: dict[str, float]
    steps: int
    seconds: float

    @property
    def sec_per_step(self) -> float:
        return self.seconds / max(1, self.steps)


class WindowStats:
    """Running sums ``name -> [sum, count]`` since the last flush; ``every``: log period in steps."""

    def __init__(self, every: int = 1):
        self.every = max(1, int(every))
        self._sums: dict[str, list] = {}
        self.steps = 0
        self.start = time.perf_counter()

    @property
    def empty(self) -> bool:
        return not self._sums

    def add(self, record: Mapping[str, Any]) -> None:
        """One step's statistics: ``name -> value`` (count 1) or ``name -> (sum, count)``."""
        for name, value in record.items():
            s, c = value if isinstance(value, tuple) else (value, 1)
            acc = self._sums.setdefault(name, [0.0, 0.0])
            acc[0] += s.detach() if isinstance(s, torch.Tensor) else s
            acc[1] += c.detach() if isinstance(c, torch.Tensor) else c
        self.steps += 1

    def ready(self, step: int, last: bool = False) -> bool:
        """Is ``step`` a logging step (every ``every`` steps, and the ``last`` one)?"""
        return step % self.every == 0 or last

    def restart_clock(self) -> None:
        """Time the window from now (e.g. when a loop starts after set-up work)."""
        self.start = time.perf_counter()

    def flush(self, dist: DistInfo | None = None) -> Window:
        """The window's means (sums and counts added over ``dist``'s ranks first; every rank must
        call it) and start a new window."""
        now = time.perf_counter()
        sums, steps, seconds = self._sums, self.steps, now - self.start
        self._sums, self.steps, self.start = {}, 0, now
        names = sorted(sums)  # the same order on every rank
        device = dist.device if dist is not None and dist.enabled else torch.device("cpu")
        t = torch.tensor([float(sums[k][0]) for k in names] + [float(sums[k][1]) for k in names],
                         dtype=torch.float64, device=device)
        if dist is not None:
            dist.all_reduce_sum(t)
        vals = t.tolist()
        total = dict(zip(names, vals))
        count = dict(zip(names, vals[len(names):]))
        means = {k: total[k] / count[k] if count[k] else float("nan") for k in sums}
        return Window(means, steps, seconds)

    # -- exact resume ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, list[float]]:
        """``name -> [sum, count]`` as plain floats."""
        return {k: [float(v[0]), float(v[1])] for k, v in self._sums.items()}

    def load_state_dict(self, state: Mapping[str, Any], steps: int = 0) -> None:
        self._sums = {k: [float(v[0]), float(v[1])] for k, v in state.items()}
        self.steps = int(steps)

    def running_sums(self) -> dict[str, float]:
        """``name -> sum`` (for statistics added once per step: each count is :attr:`steps`)."""
        return {k: float(v[0]) for k, v in self._sums.items()}

    def load_running_sums(self, sums: Mapping[str, Any], steps: int) -> None:
        """Restore :meth:`running_sums` taken after ``steps`` steps."""
        self.load_state_dict({k: (v, steps) for k, v in sums.items()}, steps)
