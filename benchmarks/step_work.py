"""The arithmetic of an MNIST-CGN step: its FLOPs, the rate this CPU's convolutions reach, and
the bounds the two put on the step's time.

    python benchmarks/step_work.py [--presets wildlife-mnist ...]   # GFLOP per step, no timing

FLOPs are counted with torch's own formulas (``torch.utils.flop_counter.flop_registry``:
convolutions and their backward, matrix products, the Gram matrices' bmm), the same whatever the
precision:

- ``original``: one step of benchmarks/cgn_train_step.py's original-like mode;
- ``cgn``: one step of cgn's loop (its stages, D frozen in the generator step);
- ``floor``: the style loss's VGG passes of a step (cgn_train_step.VGGPasses).

:func:`conv_peak` times a large 3x3 convolution (batch 32, 256 -> 256 channels, 32 x 32,
channels_last), the kind oneDNN runs fastest: a rate the step's smaller convolutions do not
exceed. :func:`bounds` then gives, for measured times of the original step, cgn's step and the
floor, the least time cgn's step can take when its work beyond the floor (generator,
discriminator, Gram matrices) runs at that peak, and the speed-up and step / floor that follow.
Where the best speed-up is under the target and the least step / floor over its limit, no
kernel change reaches the target at that precision: only less work or a faster number format can.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

PEAK_SHAPE = (32, 256, 32, 32)  # batch, channels in = out, height, width of the peak probe


def count_gflop(fn: Callable[[], object]) -> float:
    """GFLOP of one call of ``fn`` (forward and backward), by torch's own FLOP formulas. Counted
    in a dispatch mode of its own: ``FlopCounterMode`` also tracks modules, whose hooks fail
    inside ``torch.autograd.grad`` (the floor's backward)."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import flop_registry

    class Count(TorchDispatchMode):
        flops = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            formula = flop_registry.get(func._overloadpacket)
            if formula is not None:
                self.flops += formula(*args, **kwargs, out_val=out)
            return out

    with Count() as counter:
        fn()
    return counter.flops / 1e9


def conv_peak(dtype: torch.dtype, calls: int = 5) -> float:
    """GFLOP/s of the fastest of ``calls`` timed 3x3 convolutions of PEAK_SHAPE in ``dtype``
    (after two untimed ones)."""
    b, c, h, w = PEAK_SHAPE
    x = torch.randn(b, c, h, w, dtype=dtype).contiguous(memory_format=torch.channels_last)
    k = torch.randn(c, c, 3, 3, dtype=dtype).contiguous(memory_format=torch.channels_last)
    gflop = 2 * b * c * h * w * c * 9 / 1e9
    with torch.no_grad():
        for _ in range(2):
            torch.nn.functional.conv2d(x, k, padding=1)
        best = float("inf")
        for _ in range(calls):
            t0 = time.perf_counter()
            torch.nn.functional.conv2d(x, k, padding=1)
            best = min(best, time.perf_counter() - t0)
    return gflop / best


def step_gflop(trainers: dict) -> dict[str, float]:
    """``{"original", "cgn", "floor"}`` GFLOP of one call each, from benchmarks/cgn_train_step.py's
    trainers keyed by mode (``original-like``, ``ours-auto``, ``floor``). Each trainer takes
    one step more (the step counter advanced), as a warm-up would."""
    from cgn_train_step import step_fn
    return {name: count_gflop(step_fn(trainers[mode], mode))
            for name, mode in (("original", "original-like"), ("cgn", "ours-auto"), ("floor", "floor"))}


def bounds(gflop: dict[str, float], seconds: dict[str, float], peak: float,
           target_speedup: float = 2.5, floor_limit: float = 1.25) -> dict:
    """What the arithmetic allows a step, at ``peak`` GFLOP/s for its work beyond the floor.

    gflop: original / cgn / floor per step; seconds: measured original / default / floor.
    Returns the rates each reaches (GFLOP/s), the least step time, the best speed-up over the
    original and the least step / floor, and whether either target is within reach."""
    rest = max(gflop["cgn"] - gflop["floor"], 0.0)
    least = seconds["floor"] + rest / peak
    best_speedup = seconds["original"] / least
    least_over_floor = least / seconds["floor"]
    return {
        "rest_gflop": rest,
        "rates": {"original": gflop["original"] / seconds["original"], "default": gflop["cgn"] / seconds["default"],
                  "floor": gflop["floor"] / seconds["floor"]},
        "peak": peak, "least_step": least, "best_speedup": best_speedup, "least_over_floor": least_over_floor,
        "reachable": best_speedup >= target_speedup or least_over_floor <= floor_limit,
    }


def main(argv: list[str] | None = None) -> int:
    from cgn_train_step import make_trainer
    from cgn.core.runcontrol import set_threads
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=["colored-mnist", "double-colored-mnist", "wildlife-mnist"])
    ap.add_argument("--feature-extractor", default="hed", help="the style loss's VGG16 (the recipe's: hed)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    a = ap.parse_args(argv)
    set_threads(a.threads)
    print("| preset | original (GFLOP) | cgn | floor | cgn beyond the floor |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for preset in a.presets:
            trainers = {m: make_trainer(preset, m, Path(tmp), a.feature_extractor)
                        for m in ("original-like", "ours-auto", "floor")}
            g = step_gflop(trainers)
            print(f"| {preset} | {g['original']:.2f} | {g['cgn']:.2f} | {g['floor']:.2f} | {g['cgn'] - g['floor']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
