"""DDP: a 2-process ``torchrun`` run (gloo, CPU) gives the same training and metrics as one
process with the doubled batch. Run as a script, this file is the torchrun worker."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

SHARED = Path(os.environ.get("CGN_SHARED_DATA")
              or Path(__file__).resolve().parents[1] / ".." / "shared" / "data")
IN9_FOLDERS = ["00_dog", "01_bird", "02_wheeled vehicle", "03_reptile", "04_carnivore",
               "05_insect", "06_musical instrument", "07_primate", "08_fish"]


def _cli(argv: list[str]) -> int:
    from cgn.commands import imagenet_classifier
    p = argparse.ArgumentParser()
    imagenet_classifier.register(p.add_subparsers())
    args = p.parse_args(argv)
    return args.func(args)


def _args(out: Path, data: Path, batch: int) -> list[str]:
    sample = str(SHARED / "imagenet_sample_subset")
    return ["train-classifier", "--out", str(out), "--preset", "smoke", "--device", "cpu",
            "--train-dir", sample, "--val-dir", sample, "--cf-dir", str(data / "cf"),
            "--in9", str(data / "in9"), "--cue-conflict", str(SHARED / "cue_conflict_subset"),
            "--batch-size", str(batch), "--eval-batch-size", "5", "--no-tensorboard",
            "--set", "eval.in9_variants=mixed_same,mixed_rand"]


def _make_data(root: Path) -> None:
    from PIL import Image

    from cgn.imagenet.cfdata import CFDatasetWriter
    rng = np.random.default_rng(0)
    for split, n in (("train", 10), ("val", 7)):
        w = CFDatasetWriter(root / "cf", split)
        for i in range(n):
            w.add(rng.integers(0, 256, (36, 36, 3), dtype=np.uint8), seed=i,
                  shape_class=int(rng.integers(1000)), texture_class=int(rng.integers(1000)),
                  background_class=int(rng.integers(1000)))
    for variant, n in (("mixed_same", 23), ("mixed_rand", 13)):      # odd sizes: uneven shards
        for i in range(n):
            d = root / "in9" / variant / "val" / IN9_FOLDERS[i % 9]
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(d / f"{i}.png")


def test_two_process_gloo_matches_one_process(tmp_path, capsys):
    import pytest
    import torch

    from cgn.core.checkpoint import load_checkpoint
    if not (SHARED / "imagenet_sample_subset").exists():
        pytest.skip(f"../shared/data not present: {SHARED}")
    _make_data(tmp_path)
    # one process, 12 real + 12 counterfactual images per step: 60 / 12 = 5 steps
    assert _cli(_args(tmp_path / "one", tmp_path, 12)) == 0
    one = json.loads(capsys.readouterr().out)
    # two processes with 6 + 6 each
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CGN_PROGRESS": "0"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           __file__, str(tmp_path / "two"), str(tmp_path)]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    two = json.loads(r.stdout[r.stdout.index("{"):])
    assert two["step"] == one["step"] == 5
    m1, m2 = one["metrics"], two["metrics"]
    assert m1.keys() == m2.keys()
    for k in m1:
        assert m2[k] == pytest.approx(m1[k], abs=1e-9), k
    assert m1["in9/mixed_same/n"] == 23 and m1["in9/mixed_rand/n"] == 13 and m1["cf/n"] == 7
    assert m1["real/n"] == 60
    w1 = load_checkpoint(tmp_path / "one" / "checkpoints" / "last.pt")["model"]
    w2 = load_checkpoint(tmp_path / "two" / "checkpoints" / "last.pt")["model"]
    for k in w1:
        torch.testing.assert_close(w1[k], w2[k], rtol=1e-4, atol=1e-6)
    rows = [[json.loads(x) for x in (tmp_path / d / "metrics.jsonl").read_text().splitlines()]
            for d in ("one", "two")]
    l1 = [r["train/loss"] for r in rows[0] if "train/loss" in r]
    l2 = [r["train/loss"] for r in rows[1] if "train/loss" in r]
    assert len(l1) == len(l2) == 5 and l1 == pytest.approx(l2, rel=1e-5)


if __name__ == "__main__":  # the torchrun worker
    out, data = Path(sys.argv[1]), Path(sys.argv[2])
    sys.exit(_cli(_args(out, data, 6)))
