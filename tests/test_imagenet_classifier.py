"""The invariant classifier ensemble: 1000-way folders, model, loss, training, resume, evaluation
(CPU, tiny backbone, 32 px, random weights)."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cgn.core.checkpoint import load_checkpoint
from cgn.errors import CGNError
from cgn.imagenet.cfdata import CFDatasetWriter
from cgn.imagenet.ensemble import InvariantEnsemble, PlainClassifier, TinyConvNet
from cgn.imagenet.imagefolder import WNIDS, ImageNetFolder

SHARED = Path(os.environ.get("CGN_SHARED_DATA")
              or Path(__file__).resolve().parents[1] / ".." / "shared" / "data")


def _shared(rel: str) -> Path:
    p = SHARED / rel
    if not p.exists():
        pytest.skip(f"../shared/data not present: {p}")
    return p


def test_wnid_mapping_matches_index_tsv():
    root = _shared("imagenet_sample_subset")
    assert len(WNIDS) == 1000 and list(WNIDS) == sorted(set(WNIDS))
    ds = ImageNetFolder(root)
    got = {Path(p).name: y for p, y in ds.samples}
    rows = [line.split("\t") for line in (root / "index.tsv").read_text().splitlines()[1:]]
    assert len(rows) == len(got) == 60
    for idx, wnid, name in rows:
        assert got[name] == int(idx) and WNIDS[int(idx)] == wnid


def _png(path: Path, v: int = 0) -> None:
    from PIL import Image
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (v, v, v)).save(path)


def test_folder_names_numbers_and_class_index_file(tmp_path):
    _png(tmp_path / "a" / "n01443537" / "x.png")        # goldfish = 1
    _png(tmp_path / "a" / "7" / "x.png")                # an index
    _png(tmp_path / "a" / "my_shark" / "x.png")         # needs the class-index file
    with pytest.raises(CGNError, match="class-index"):
        ImageNetFolder(tmp_path / "a")
    (tmp_path / "idx.tsv").write_text("folder\tindex\nmy_shark\t2\n")
    ds = ImageNetFolder(tmp_path / "a", class_index=tmp_path / "idx.tsv")
    assert sorted(ds.targets) == [1, 2, 7]
    (tmp_path / "idx.json").write_text(json.dumps({"my_shark": 1}))
    with pytest.raises(CGNError, match="same ImageNet index"):
        ImageNetFolder(tmp_path / "a", class_index=tmp_path / "idx.json")
    with pytest.raises(CGNError, match="does not exist"):
        ImageNetFolder(tmp_path / "missing")


def test_ensemble_heads_and_predictions():
    torch.manual_seed(0)
    m = InvariantEnsemble("tiny", weights=None).eval()
    x = torch.randn(3, 3, 32, 32)
    out = m(x)
    assert set(out) == {"shape", "texture", "background", "avg", "shape_texture"}
    assert all(v.shape == (3, 1000) for v in out.values())
    torch.testing.assert_close(out["avg"], (out["shape"] + out["texture"] + out["background"]) / 3)
    torch.testing.assert_close(out["shape_texture"], (out["shape"] + out["texture"]) / 2)
    assert not torch.equal(m.heads["shape"].weight, m.heads["texture"].weight)  # fresh heads
    # a real torchvision backbone: resnet18 loses its fc, the heads take its 512 features
    r = InvariantEnsemble("resnet18", weights=None).eval()
    assert isinstance(r.backbone.fc, torch.nn.Identity) and r.heads["shape"].in_features == 512
    assert r(torch.randn(1, 3, 32, 32))["avg"].shape == (1, 1000)
    with pytest.raises(CGNError, match="unknown architecture"):
        InvariantEnsemble("resnet5000", weights=None)
    with pytest.raises(CGNError, match="no ImageNet weights"):
        InvariantEnsemble("tiny", weights="imagenet")


def test_backbone_from_local_weights_file(tmp_path):
    torch.manual_seed(1)
    net = TinyConvNet()
    torch.save(net.state_dict(), tmp_path / "tiny.pth")
    m = InvariantEnsemble("tiny", weights=tmp_path / "tiny.pth")
    torch.testing.assert_close(m.backbone.features[0].weight, net.features[0].weight)
    p = PlainClassifier("tiny", weights=tmp_path / "tiny.pth").eval()
    net.eval()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(p(x)["avg"], net(x))
    torch.save({"something": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(CGNError, match="missing key"):
        InvariantEnsemble("tiny", weights=tmp_path / "bad.pth")


def test_loss_gradient_equals_two_backward_passes():
    from cgn.core.classifier_trainer import batchnorm_eval
    from cgn.imagenet.classifier_train import ensemble_loss
    torch.manual_seed(0)
    m = InvariantEnsemble("tiny", weights=None)
    m.train()
    batchnorm_eval(m)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 1000, (4,))
    xc = torch.randn(3, 3, 32, 32)
    ys, yt, yb = (torch.randint(0, 1000, (3,)) for _ in range(3))
    out = ensemble_loss(True)(m, ((x, y), (xc, ys, yt, yb)))
    out.loss.backward()
    g1 = [p.grad.clone() for p in m.parameters()]
    m.zero_grad()
    # the original: real batch and counterfactual batch through separate passes
    F.cross_entropy(m(x)["avg"], y).backward()
    o = m(xc)
    (F.cross_entropy(o["shape"], ys) + F.cross_entropy(o["texture"], yt)
     + F.cross_entropy(o["background"], yb)).backward()
    for a, p in zip(g1, m.parameters()):
        torch.testing.assert_close(a, p.grad, rtol=1e-4, atol=1e-6)
    assert set(out.stats) == {"loss_real", "loss_cf", "real_top1", "cf_shape_top1",
                              "cf_texture_top1", "cf_background_top1"}


# --------------------------------------------------------------------------------------------
# End to end through the command
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cf_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cf")
    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("val", 5)):
        w = CFDatasetWriter(root, split)
        for i in range(n):
            w.add(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8), seed=i,
                  shape_class=int(rng.integers(1000)), texture_class=int(rng.integers(1000)),
                  background_class=int(rng.integers(1000)))
    return root


def _cli(argv: list[str]) -> int:
    from cgn.commands import imagenet_classifier
    p = argparse.ArgumentParser()
    imagenet_classifier.register(p.add_subparsers())
    args = p.parse_args(argv)
    return args.func(args)


def _common(cf_dir) -> list[str]:
    sample = str(_shared("imagenet_sample_subset"))
    return ["--preset", "smoke", "--train-dir", sample, "--val-dir", sample, "--cf-dir",
            str(cf_dir)]


def test_train_resume_and_evaluate(tmp_path, cf_dir, capsys):
    cue = str(_shared("cue_conflict_subset"))
    base = _common(cf_dir) + ["--cue-conflict", cue]
    assert _cli(["train-classifier", "--out", str(tmp_path / "a")] + base) == 0
    straight = json.loads(capsys.readouterr().out)
    assert straight["step"] == 8 and straight["epoch"] == 1     # 60 images, batch 8
    m = straight["metrics"]
    assert m["real/n"] == 60 and m["cf/n"] == 5 and m["shape_bias/n"] + m["shape_bias/excluded"] == 80
    assert (tmp_path / "a" / "tb").is_dir()
    # interrupted after 3 steps, then resumed: the same weights and metrics
    assert _cli(["train-classifier", "--out", str(tmp_path / "b"), "--max-steps", "3",
                 "--no-tensorboard"] + base) == 0
    capsys.readouterr()
    ck = load_checkpoint(tmp_path / "b" / "checkpoints" / "last.pt", kind="imagenet-classifier")
    assert ck["step"] == 3 and ck["extra"]["step_in_epoch"] == 3
    with pytest.raises(CGNError, match="optim.lr"):
        _cli(["train-classifier", "--out", str(tmp_path / "b"), "--resume", "--lr", "0.5"] + base)
    assert _cli(["train-classifier", "--out", str(tmp_path / "b"), "--resume",
                 "--max-steps", "0"] + base) == 0
    resumed = json.loads(capsys.readouterr().out)
    assert resumed == straight
    sa = load_checkpoint(tmp_path / "a" / "checkpoints" / "last.pt")["model"]
    sb = load_checkpoint(tmp_path / "b" / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    train_rows = [json.loads(r) for r in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in train_rows if "train/loss" in r] == list(range(1, 9))
    assert all("train/loss_cf" in r for r in train_rows if "train/loss" in r)
    # evaluate-only on the run, and evaluate-classifier on its checkpoint
    assert _cli(["train-classifier", "--out", str(tmp_path / "a"), "--evaluate-only"]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert ev == straight["metrics"]
    assert json.loads((tmp_path / "a" / "eval.json").read_text())["metrics"] == ev
    assert _cli(["evaluate-classifier", "--checkpoint", str(tmp_path / "a" / "checkpoints" / "last.pt"),
                 "--metrics", "shape_bias", "--include-same-category",
                 "--out", str(tmp_path / "e.json")]) == 0
    sb_all = json.loads(capsys.readouterr().out)
    assert sb_all["shape_bias/n"] == 80 and sb_all["shape_bias/excluded"] == 0
    with pytest.raises(CGNError, match="needs --in9"):
        _cli(["evaluate-classifier", "--checkpoint", str(tmp_path / "a" / "checkpoints" / "last.pt"),
              "--metrics", "in9_bg_gap"])


def test_baseline_mode_and_plain_evaluation(tmp_path, cf_dir, capsys):
    sample = str(_shared("imagenet_sample_subset"))
    assert _cli(["train-classifier", "--out", str(tmp_path / "base"), "--preset", "smoke",
                 "--train-dir", sample, "--baseline", "--max-steps", "2", "--no-tensorboard"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["step"] == 2
    cfg = json.loads((tmp_path / "base" / "config.json").read_text())["config"]
    assert cfg["data"]["cf_dir"] == "" and cfg["model"]["arch"] == "tiny"
    rows = [json.loads(r) for r in (tmp_path / "base" / "metrics.jsonl").read_text().splitlines()]
    assert rows and all("train/loss_cf" not in r for r in rows)
    with pytest.raises(CGNError, match="drop --cf-dir"):
        _cli(["train-classifier", "--out", str(tmp_path / "x"), "--preset", "smoke",
              "--train-dir", sample, "--baseline", "--cf-dir", str(cf_dir)])
    assert _cli(["evaluate-classifier", "--plain", "tiny", "--no-pretrained", "--image-size", "32",
                 "--resize-size", "36", "--val-dir", sample, "--workers", "0"]) == 0
    plain = json.loads(capsys.readouterr().out)
    assert plain["real/n"] == 60 and plain["real/avg/top1"] == plain["real/shape/top1"]


def test_threads_recorded_and_free_on_resume(tmp_path, capsys):
    """--threads is a run-control field: recorded in config.json, applied before the model is
    built, and a resume may change it."""
    sample = str(_shared("imagenet_sample_subset"))
    run = ["train-classifier", "--out", str(tmp_path / "r"), "--preset", "smoke", "--train-dir",
           sample, "--baseline", "--no-tensorboard"]
    assert _cli([*run, "--max-steps", "1"]) == 0
    capsys.readouterr()
    assert json.loads((tmp_path / "r" / "config.json").read_text())["config"]["threads"] == 0
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert _cli([*run, "--resume", "--max-steps", "2", "--threads", "1"]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    assert json.loads(capsys.readouterr().out)["step"] == 2
