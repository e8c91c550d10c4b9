"""When did a CGN's masks become digits? The shape judge's accuracy on a run's mask timeline.

    python scripts/timeline_shapes.py RUN_DIR [RUN_DIR ...] [--window 2000]

Reads ``samples/mask_timeline.npz`` (masks of fixed noise and labels, two per class, recorded
every ``train.timeline_every`` steps) and prints the judge's accuracy averaged over windows of
``--window`` steps. With 20 masks per frame each frame is coarse (steps of 0.05); the window mean
smooths that. Compare with the authors' checkpoints (0.89–0.93 on 1,000 samples, docs/mnist_cgn.md).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cgn.errors import CGNError
from cgn.mnist.quality import ShapeJudge, timeline_shape_accuracy


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--window", type=int, default=2000, help="steps per window (default 2000)")
    a = ap.parse_args()
    judge = ShapeJudge.load()
    for run in a.runs:
        path = run / "samples" / "mask_timeline.npz"
        if not path.exists():
            raise SystemExit(f"error: {path} not found: give the run directory of `cgn train-cgn`")
        try:
            rows = timeline_shape_accuracy(path, judge, a.window)
        except (KeyError, ValueError, OSError) as e:
            raise SystemExit(f"error: {path} is not a mask timeline ({e}): give a `cgn train-cgn` run directory")
        print(f"{run}:")
        for r in rows:
            print(f"  steps {r['from']:>6}-{r['to']:<6} ({r['frames']:>2} frames)  shape accuracy {r['shape_accuracy']:.2f}")


if __name__ == "__main__":
    try:
        main()
    except CGNError as e:
        raise SystemExit(f"error: {e}")
