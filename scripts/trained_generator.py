"""Copy a finished ``cgn train-cgn`` run that kept an EMA of its generator (``train.ema_decay``),
with the trained generator as its CGN instead of the average, to compare the two downstream.

    python scripts/trained_generator.py RUN_DIR OUT_DIR [--checkpoint final.pt]

Writes ``OUT_DIR/checkpoints/final.pt`` (the same checkpoint with ``model`` set to the trained
generator, no EMA in it) and ``OUT_DIR/results.json`` (the run's, pointing there), so
``cgn reproduce mnist --cgn-run DATASET=OUT_DIR`` evaluates the generator the EMA was taken of.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cgn.core.checkpoint import load_checkpoint, save_checkpoint
from cgn.core.results import read_results, write_results
from cgn.errors import CGNError
from cgn.mnist.model import CHECKPOINT_KIND


def copy_trained_generator(run: Path, out: Path, checkpoint: str = "final.pt") -> Path:
    res = read_results(run)
    if res is None:
        raise CGNError(f"{run}: no results.json; finish the run first (rerun it with --resume)")
    ckpt = load_checkpoint(run / "checkpoints" / checkpoint, kind=CHECKPOINT_KIND)
    extra = dict(ckpt["extra"])
    if "generator" not in extra:
        raise CGNError(f"{run}/checkpoints/{checkpoint} holds no EMA (train.ema_decay was 0): its "
                       "model already is the trained generator")
    generator = extra.pop("generator")
    config = ckpt["config"]
    config["train"] = {**config["train"], "ema_decay": 0.0}
    dest = out / "checkpoints" / "final.pt"
    dest.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(dest, kind=CHECKPOINT_KIND, step=ckpt["step"], config=config, model=generator,
                    optim=ckpt["optim"], rng=ckpt["rng"], extra=extra)
    write_results(out, {**res, "generator": f"trained (the EMA run {run}, {checkpoint})",
                        "checkpoint": str(dest.resolve())})
    return dest


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--checkpoint", default="final.pt", help="file in RUN/checkpoints (default final.pt)")
    a = ap.parse_args()
    try:
        print(copy_trained_generator(a.run, a.out, a.checkpoint))
    except CGNError as e:
        print(f"trained_generator: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
