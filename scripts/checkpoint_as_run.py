"""Make a finished-run folder from one checkpoint of a ``cgn train-cgn`` run, to evaluate it
downstream: an interim checkpoint, or the trained generator of a run that keeps an EMA of it.

    python scripts/checkpoint_as_run.py CHECKPOINT OUT_DIR [--weights saved|trained]

CHECKPOINT is a ``cgn train-cgn`` checkpoint (``RUN/checkpoints/last.pt``, ``final.pt``, or a copy
of one). ``--weights saved`` (default) keeps the generator the run saves (its EMA when
``train.ema_decay`` > 0); ``trained`` takes the generator the EMA was taken of. Writes
``OUT_DIR/checkpoints/final.pt`` and ``OUT_DIR/results.json`` (dataset, step, where it came
from), so ``cgn reproduce mnist --cgn-run DATASET=OUT_DIR`` evaluates that generator.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cgn.core.checkpoint import load_checkpoint, save_checkpoint
from cgn.core.results import write_results
from cgn.errors import CGNError
from cgn.mnist.model import CHECKPOINT_KIND


def checkpoint_as_run(checkpoint: Path, out: Path, weights: str = "saved") -> Path:
    ckpt = load_checkpoint(checkpoint, kind=CHECKPOINT_KIND)
    extra, config = dict(ckpt["extra"]), ckpt["config"]
    model = ckpt["model"]
    averaged = "generator" in extra
    if weights == "trained":
        if not averaged:
            raise CGNError(f"{checkpoint} holds no EMA (train.ema_decay was 0): its model already "
                           "is the trained generator; use --weights saved")
        model = extra.pop("generator")
        config["train"] = {**config["train"], "ema_decay": 0.0}
        averaged = False
    dest = out / "checkpoints" / "final.pt"
    dest.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(dest, kind=CHECKPOINT_KIND, step=ckpt["step"], config=config, model=model,
                    optim=ckpt["optim"], rng=ckpt["rng"], extra=extra)
    t = config["train"]
    write_results(out, {"dataset": t["dataset"], "steps": int(ckpt["step"]),
                        "generator": f"ema (decay {t['ema_decay']:g} from step {t['ema_start']})"
                        if averaged else "trained",
                        "source": f"{checkpoint} at step {ckpt['step']}",
                        "checkpoint": str(dest.resolve())})
    return dest


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--weights", choices=("saved", "trained"), default="saved",
                    help="saved: the generator the run saves (its EMA if any); trained: the one the "
                         "EMA was taken of (default: saved)")
    a = ap.parse_args()
    try:
        print(checkpoint_as_run(a.checkpoint, a.out, a.weights))
    except CGNError as e:
        print(f"checkpoint_as_run: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
