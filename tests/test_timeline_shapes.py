"""scripts/timeline_shapes.py: the shape judge's accuracy over a run's mask timeline."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from cgn.io import save_npz_atomic
from cgn.mnist.quality import ShapeJudge, timeline_shape_accuracy
from cgn.mnist.variants import upscale_digits

from conftest import require_mnist

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "timeline_shapes.py"


def _timeline(run: Path) -> None:
    """Blank masks for steps 0-750, then real held-out digits of the right labels from step 1000."""
    from cgn.mnist.source import load_mnist
    mnist = load_mnist()
    labels = np.repeat(np.arange(10), 2)
    picks = [np.flatnonzero(mnist.train_labels[50000:] == k)[:2] + 50000 for k in range(10)]
    digits = (upscale_digits(mnist.train_images[np.concatenate(picks)]) > 25).astype(np.float32)
    steps = np.arange(0, 2000, 250)
    masks = np.stack([np.zeros_like(digits) if s < 1000 else digits for s in steps])
    (run / "samples").mkdir(parents=True)
    save_npz_atomic(run / "samples" / "mask_timeline.npz", steps=steps, masks=masks, labels=labels)


def test_timeline_accuracy_rises_when_masks_become_digits(tmp_path):
    require_mnist()
    _timeline(tmp_path / "run")
    rows = timeline_shape_accuracy(tmp_path / "run" / "samples" / "mask_timeline.npz", ShapeJudge.load(), 1000)
    assert [(r["from"], r["to"], r["frames"]) for r in rows] == [(0, 750, 4), (1000, 1750, 4)]
    assert rows[0]["shape_accuracy"] <= 0.1          # a blank mask is one class at most
    assert rows[1]["shape_accuracy"] >= 0.9          # held-out digits are recognised
    blank = torch.zeros(3, 32, 32)
    assert ShapeJudge.load().predict(blank).unique().numel() == 1


def test_script_prints_windows_and_rejects_a_missing_timeline(tmp_path):
    require_mnist()
    _timeline(tmp_path / "run")
    out = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "run"), "--window", "1000"],
                         capture_output=True, text=True, check=True).stdout
    assert "steps      0-750" in out and "steps   1000-1750" in out
    bad = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "nothing")], capture_output=True, text=True)
    assert bad.returncode != 0
    assert "mask_timeline.npz not found" in bad.stderr and "Traceback" not in bad.stderr
