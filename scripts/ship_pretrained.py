"""Export a finished ``cgn train-cgn`` run as a shipped pretrained CGN.

    python scripts/ship_pretrained.py RUN_DIR [--checkpoint final.pt] [--out src/cgn/mnist/weights]

Writes ``<dataset>.pt`` (weights only, float16, with a provenance record: the run's command,
steps, style features, shape judge and mask statistics) and prints the ``SHIPPED`` entry to
add to ``cgn/mnist/pretrained.py``. Then measure its OOD accuracy with the printed command and
record it in that entry (``ood_accuracy``, ``ood_command``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cgn.core.results import read_results
from cgn.core.sampling import iter_samples, mechanism_seeds
from cgn.mnist import pretrained
from cgn.mnist.model import load_generator


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--checkpoint", default="final.pt",
                    help="file in RUN/checkpoints (default final.pt; last.pt of a run still training "
                         "ships an interim CGN, recorded as such)")
    ap.add_argument("--out", type=Path, default=Path(pretrained.__file__).with_name("weights"))
    a = ap.parse_args()
    res = read_results(a.run) or {}
    cfg = json.loads((a.run / "config.json").read_text())
    ckpt = a.run / "checkpoints" / a.checkpoint
    dataset = cfg["config"]["train"]["dataset"]
    env = cfg.get("environment", {})
    argv = list(env.get("argv", []))[1:]
    # paths of the training machine: the run's own folder, and the texture folder (as `cgn
    # download mnist-textures` lays it out; the digest in texture_set says which images it held)
    for flag, portable in (("--out", f"runs/{a.run.name}"), ("--textures", "data/textures")):
        if flag in argv:
            argv[argv.index(flag) + 1] = portable
    import torch
    step = int(torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True)["step"])
    total = cfg["config"]["train"].get("max_steps")
    record = {"command": " ".join(["cgn", *argv]),
              "environment": {k: env.get(k) for k in ("cgn", "torch", "python", "cpu_count", "started")}, "steps": step, "epochs": res.get("epochs"),
              # a checkpoint of a run still training (no results.json yet): say so
              "interim": None if res else f"checkpoint at step {step:,} of a {total:,}-step run",
              "feature_extractor": res.get("feature_extractor") or cfg["config"].get("resolved", {}).get("feature_extractor"),
              "precision": res.get("precision"),
              "texture_set": (res.get("data") or {}).get("texture_set"),
              "shape_accuracy": res.get("shape_accuracy"), "mask_mean": res.get("mask_mean"),
              "train_seconds": res.get("train_seconds"),
              "checkpoint": a.checkpoint}
    a.out.mkdir(parents=True, exist_ok=True)
    out = a.out / f"{dataset}.pt"
    info = pretrained.export_weights(ckpt, out, provenance=record)
    # how far the float16 weights move the images (same labels and seeds, 1,000 counterfactuals)
    full, _ = load_generator(ckpt)
    small, _ = load_generator(out)
    y = torch.arange(1000) % 10
    diff = max(float((p.composite - q.composite).abs().max()) for p, q in zip(
        iter_samples(full, 1000, y, y.roll(3), y.roll(7), seeds=mechanism_seeds(0), batch_size=500, device="cpu"),
        iter_samples(small, 1000, y, y.roll(3), y.roll(7), seeds=mechanism_seeds(0), batch_size=500, device="cpu")))
    print(f"{out}: {info['bytes']:,} bytes, sha256 {info['sha256']}, largest weight change "
          f"{info['max_cast_error']:.2e}, largest pixel change {diff:.4f} (of a [-1, 1] range)")
    print(f'    "{dataset}": ShippedCGN("{dataset}", "{out.name}", "{info["sha256"]}"),')
    textures = " --textures data/textures" if record["texture_set"] not in (None, "procedural") else ""
    print(f"measure: cgn reproduce mnist --dataset {dataset} --cgn pretrained --size 1e6 "
          f"--train-set real+cf{textures} --out runs/pretrained-{dataset}")


if __name__ == "__main__":
    main()
