"""Counterfactual datasets: protocol, per-image regeneration, resumable shards, errors."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from cgn.mnist.cfdata import CounterfactualSet
from cgn.cli import main
from cgn.core.checkpoint import save_checkpoint
from cgn.errors import CGNError
from cgn.mnist import counterfactuals as C
from cgn.presets import preset
from cgn.config import to_dict
from cgn.mnist.model import MnistCGN


@pytest.fixture(scope="module")
def tiny_cgn(tmp_path_factory):
    """A randomly initialised MNIST CGN saved as a cgn checkpoint."""
    torch.manual_seed(0)
    cfg = preset("double-colored-mnist")
    model = MnistCGN(cfg.model).eval()
    path = tmp_path_factory.mktemp("cgn") / "cgn.pt"
    save_checkpoint(path, kind="mnist-cgn", step=0, config=to_dict(cfg), model=model.state_dict())
    return model, path


def test_plan_protocol():
    cfg = C.GenerateConfig(n=200, cf_ratio=10, seed=5)
    p = C.plan(cfg, 0, 200)
    # One shape label and shape seed per group of cf_ratio; fresh image seeds for everyone.
    groups = np.arange(200) // 10
    for g in range(20):
        assert len(set(p["shape"][groups == g])) == 1 and len(set(p["shape_seed"][groups == g])) == 1
    assert len(set(p["seed"])) == 200
    assert np.array_equal(p["shape_seed"][::10], p["seed"][::10])
    # Texture / background labels are independent of the shape label.
    big = C.plan(C.GenerateConfig(n=20000, seed=1), 0, 20000)
    assert 0.07 < np.mean(big["texture"] == big["shape"]) < 0.13
    assert set(np.unique(big["background"])) == set(range(10))
    # A plan is a pure function of (cfg, index): any window of it agrees with the whole.
    assert np.array_equal(C.plan(cfg, 50, 120)["seed"], p["seed"][50:120])
    plain = C.plan(C.GenerateConfig(n=50, counterfactual=False), 0, 50)
    assert np.array_equal(plain["texture"], plain["shape"]) and np.array_equal(plain["background"], plain["shape"])


def test_generate_regenerate_and_resume(tiny_cgn, tmp_path):
    model, path = tiny_cgn
    out = tmp_path / "cf"
    cfg = C.GenerateConfig(n=70, cf_ratio=5, seed=3, shard_size=30, batch_size=16)
    C.generate(model, cfg, out, source=C.checkpoint_source(path, {"dataset": "double-colored-mnist"}))
    ds = CounterfactualSet(out)
    assert len(ds) == 70 and len(ds.shards) == 3
    imgs = ds.images(np.arange(70))
    assert imgs.dtype == np.uint8 and imgs.shape == (70, 32, 32, 3)
    # Arbitrary row sets (random, repeated, descending, across shards) read what was written.
    rng = np.random.default_rng(0)
    for idx in (rng.integers(0, 70, 15), np.array([69, 3, 3, 30, 29, 28, 0]), np.arange(70)[::-1]):
        assert np.array_equal(ds.images(idx), imgs[idx])
    assert np.array_equal(ds.images(np.arange(70)), np.concatenate(
        [np.load(out / f"shard-0000{k}.images.npy") for k in range(3)]))
    L = ds.labels
    # Every image is rebuilt from its stored seeds and labels alone, bit for bit.
    for i in (0, 4, 5, 31, 69):
        r = C.regenerate(model, ds.manifest, L["shape"][i], L["texture"][i], L["background"][i],
                         L["seed"][i], L["shape_seed"][i])
        assert np.array_equal(r, imgs[i])
    # Same group: same mask -> the same digit pixels differ only through fg/bg.
    _, masks = C.render(model, {k: v[:5] for k, v in C.plan(cfg, 0, 5).items()}, True, cfg.precision)
    assert np.allclose(masks, masks[0:1])

    # Interrupted run: shard 1 lost its completion marker, shard 2 never started.
    (out / "shard-00001.labels.npz").unlink()
    (out / "shard-00002.images.npy").unlink()
    (out / "shard-00002.labels.npz").unlink()
    with pytest.raises(CGNError, match="incomplete .*resume"):
        CounterfactualSet(out)
    logs = []
    # A dataset started by an older renderer (no "renderer" in its manifest) resumes with a note.
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest.pop("renderer") == C.RENDERER
    (out / "manifest.json").write_text(json.dumps(manifest))
    # The batch size only sets the pace: a resume with another one is accepted, same images.
    C.generate(model, dataclasses.replace(cfg, batch_size=7), out,
               source=C.checkpoint_source(path, {"dataset": "double-colored-mnist"}), log=logs.append)
    assert any("renderer layers-1" in line for line in logs)
    assert any("1 of 3 shards" in line for line in logs)
    assert np.array_equal(CounterfactualSet(out).images(np.arange(70)), imgs)
    # Other settings into the same folder are refused.
    with pytest.raises(CGNError, match="different generation"):
        C.generate(model, C.GenerateConfig(n=70, cf_ratio=2, shard_size=30), out,
                   source=C.checkpoint_source(path, {}))


def test_generate_cli(tiny_cgn, tmp_path, capsys):
    _, path = tiny_cgn
    out = tmp_path / "gan"
    assert main(["generate", "--checkpoint", str(path), "--n", "40", "--no-counterfactual",
                 "--seed", "1", "--batch-size", "16", "--out", str(out)]) == 0
    m = json.loads((out / "manifest.json").read_text())
    assert m["config"]["counterfactual"] is False and m["generator"]["sha256"]
    ds = CounterfactualSet(out)
    assert np.array_equal(ds.labels["texture"], ds.labels["shape"])
    assert "40 plain images" in capsys.readouterr().out
    assert main(["generate", "--checkpoint", str(tmp_path / "missing.pt"), "--n", "4", "--out", str(tmp_path / "x")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_generate_threads(tiny_cgn, tmp_path, capsys):
    """--threads as in the other commands: torch's CPU threads, 0 = its default."""
    _, path = tiny_cgn
    before = torch.get_num_threads()
    args = ["generate", "--checkpoint", str(path), "--n", "8", "--batch-size", "8"]
    try:
        torch.set_num_threads(2)
        assert main([*args, "--threads", "1", "--out", str(tmp_path / "a")]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    capsys.readouterr()
    assert main([*args, "--threads", "-1", "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip()
    assert "--threads -1" in err and len(err.splitlines()) == 1 and not (tmp_path / "b").exists()


def test_reference_counterfactuals_follow_labels(shared_data, tmp_path):
    """With the authors' double-colored CGN, colours follow the texture / background labels."""
    from cgn.mnist.model import load_generator
    from cgn.mnist.variants import double_colored_tables
    model, info = load_generator(shared_data / "cgn_reference/checkpoints/double_colored_mnist.pth",
                                 reference_format=True)
    cfg = C.GenerateConfig(n=200, cf_ratio=10, seed=0)
    labels = C.plan(cfg, 0, 200)
    imgs, masks = C.render(model, labels, True, cfg.precision)
    _, bg_table = double_colored_tables()
    x = imgs.astype(np.float64) / 255
    ok = 0
    for i in range(200):
        bgpix = x[i][masks[i] < 0.05]
        if len(bgpix) > 50:
            ok += np.abs(np.median(bgpix, 0) - bg_table[labels["background"][i]]).max() < 0.15
    assert ok / 200 > 0.9
    assert 0.05 < masks.mean() < 0.35
