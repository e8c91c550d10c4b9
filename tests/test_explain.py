"""LIME explanations (the study's Fig. 3): heatmaps follow the evidence; ``cgn explain`` writes
the figure for an image of the shared sample folder."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from cgn.config import to_dict
from cgn.core.checkpoint import save_checkpoint
from cgn.presets import preset
from cgn.imagenet.ensemble import InvariantEnsemble
from cgn.imagenet.explain import explain_top_classes

SHARED = Path(os.environ.get("CGN_SHARED_DATA")
              or Path(__file__).resolve().parents[1] / ".." / "shared" / "data")


def test_heatmap_marks_the_evidence():
    # class 7's probability grows with the brightness of the left half; class 3 takes the rest
    rng = np.random.default_rng(0)
    # a 4 x 4 grid of flat 8 x 8 patches: superpixels that do not straddle the halves
    image = np.kron(rng.uniform(0.2, 0.9, (4, 4, 3)), np.ones((8, 8, 1)))

    def predict(images: np.ndarray) -> np.ndarray:
        left = images[:, :, :16].mean(axis=(1, 2, 3))
        p = np.full((len(images), 1000), 1e-6)
        p[:, 7] = left
        p[:, 3] = 1 - left
        return p / p.sum(1, keepdims=True)

    names = [f"c{i}" for i in range(1000)]
    res = explain_top_classes(predict, image, top_k=2, num_samples=150, seed=0, names=names)
    assert [e.index for e in res] == [7, 3] and res[0].name == "c7"
    assert res[0].probability == pytest.approx(predict(image[None])[0, 7])
    heat = res[0].heatmap
    assert heat.shape == (32, 32)
    assert heat[:, :12].mean() > 0 and heat[:, :12].mean() > 5 * abs(heat[:, 20:].mean())
    assert res[1].heatmap[:, :12].mean() < 0                       # hiding the left helps class 3


def test_cgn_explain_writes_heatmap_png(tmp_path, capsys, monkeypatch):
    from PIL import Image

    import cgn.cli
    from cgn.cli import main
    # the real entry point, with only this command registered (independent of other modules)
    monkeypatch.setattr(cgn.cli, "COMMAND_MODULES", ["cgn.commands.explain"])
    img = SHARED / "imagenet_sample_subset" / "n01443537" / "n01443537_goldfish.JPEG"
    if not img.exists():
        pytest.skip(f"../shared/data not present: {img}")
    cfg = preset("smoke")
    torch.manual_seed(0)
    model = InvariantEnsemble("tiny", weights=None)
    ckpt = tmp_path / "run" / "checkpoints" / "last.pt"
    save_checkpoint(ckpt, kind="imagenet-classifier", step=0, config=to_dict(cfg),
                    model=model.state_dict())
    out = tmp_path / "fig" / "goldfish.png"
    rc = main(["explain", "--checkpoint", str(ckpt), "--image", str(img), "--out", str(out),
               "--plain-weights", "random", "--num-samples", "12", "--device", "cpu"])
    assert rc == 0
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size[0] > 6 * 100 and im.size[1] > 2 * 100
    summary = json.loads(out.with_suffix(".json").read_text())
    assert json.loads(capsys.readouterr().out) == summary
    rows = summary["models"]
    assert list(rows) == ["plain tiny", "ensemble (avg)"]
    for classes in rows.values():
        probs = [c["probability"] for c in classes]
        assert len(classes) == 5 and probs == sorted(probs, reverse=True) and sum(probs) <= 1
    # the ensemble's classes are its own top-5 of the averaged logits
    from cgn.imagenet.explain import load_image, probability_fn
    p = probability_fn(model, "avg")(load_image(img, 32, 36)[None])[0]
    assert [c["class"] for c in rows["ensemble (avg)"]] == list(np.argsort(-p)[:5])
    assert main(["explain", "--checkpoint", str(ckpt), "--image", str(img), "--out",
                 str(tmp_path / "x.jpg")]) == 2
