"""The U2-Net stand-in (cgn imagenet pretrain u2net) on a synthetic world of textured ellipses on
textured backgrounds: it learns the masks, resumes bit-identically, exports the public file
layout that cgn imagenet train --u2net loads, and the mask metric counts as defined."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from cgn.cli import main
from cgn.config import override
from cgn.core.checkpoint import load_checkpoint
from cgn.core.metrics import calc_metric
from cgn.imagenet.config import ModelConfig
from cgn.imagenet.model import build_cgn
from cgn.imagenet.saliency import MaskedImages, load_masked_split, mask_counts
from cgn.imagenet.u2net import U2Net, U2NetConfig
from cgn.imagenet.u2net_train import release_state_dict, train_u2net
from cgn.presets import preset

DATA = Path(__file__).resolve().parent / "data"


pytestmark = pytest.mark.usefixtures("one_thread_no_onednn")


def ellipses(n: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Striped warm ellipses (the objects, masks 255) on noisy cool backgrounds."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    images = np.empty((n, size, size, 3), np.uint8)
    masks = np.empty((n, size, size), np.uint8)
    for i in range(n):
        cy, cx = rng.uniform(0.3, 0.7, 2) * size
        ry, rx = rng.uniform(0.15, 0.35, 2) * size
        th = rng.uniform(0, np.pi)
        u = ((xx - cx) * np.cos(th) + (yy - cy) * np.sin(th)) / rx
        v = (-(xx - cx) * np.sin(th) + (yy - cy) * np.cos(th)) / ry
        inside = u * u + v * v <= 1
        stripes = 0.5 + 0.5 * np.sin((xx * np.cos(th + 1) + yy * np.sin(th + 1)) * rng.uniform(0.8, 1.6))
        fg = np.stack([200 + 55 * stripes, 60 + 80 * stripes, 40 + 0 * stripes], -1)
        bg = np.stack([40 + 60 * rng.random((size, size)), 90 + 80 * rng.random((size, size)),
                       160 + 90 * rng.random((size, size))], -1)
        images[i] = np.where(inside[..., None], fg, bg).clip(0, 255).astype(np.uint8)
        masks[i] = inside * 255
    return images, masks


def write_split(path: Path, images: np.ndarray, masks: np.ndarray | None, **extra) -> Path:
    arrays = {"images": images, "labels": np.zeros(len(images), np.int64), **extra}
    if masks is not None:
        arrays["masks"] = masks
    np.savez(path, **arrays)
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("world")
    return (write_split(root / "train.npz", *ellipses(64, 16, 1)),
            write_split(root / "test.npz", *ellipses(64, 16, 2)))


def test_learns_the_masks_and_exports_what_imagenet_train_loads(world, tmp_path, capsys):
    train, test = world
    out = tmp_path / "run"
    # 3 epochs of 8 steps of 8 images at 16 px; a larger lr than the paper's so that a few
    # dozen steps suffice
    assert main(["imagenet", "pretrain", "u2net", "--preset", "u2net-tiny", "--data", str(train),
                 "--test", str(test), "--out", str(out), "--epochs", "3", "--lr", "0.02",
                 "--set", "data.epoch_images=64", "--set", "train.eval_every=100"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res == json.loads((out / "results.json").read_text())
    _, gt = load_masked_split(test)
    all_object_iou = float((gt >= 128).mean(axis=(1, 2)).mean())      # predict "object" everywhere
    assert res["steps"] == 24 and res["test_images"] == 64 and res["image_size"] == 16
    assert res["iou"] > all_object_iou + 0.25 and res["mae"] < 0.25, (res, all_object_iou)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "train/loss" in r] == list(range(1, 25))
    assert [r["eval/iou"] for r in rows if "eval/iou" in r] == [res["iou"]]  # the final one
    # the exported file: a plain state dict without BatchNorm counters, loaded by the code path
    # of `cgn imagenet train --u2net` (build_cgn -> U2Net.from_pretrained, strict)
    weights = out / "u2net-tiny.pth"
    state = torch.load(weights, weights_only=True)
    assert not any(k.endswith("num_batches_tracked") for k in state)
    cgn = build_cgn(ModelConfig(biggan_arch="tiny", tiny_resolution=16, u2net=str(weights)))
    assert cgn.u2net.config.arch == "tiny" and not cgn.u2net.training
    assert all(torch.equal(cgn.u2net.state_dict()[k], v) for k, v in state.items())
    again = calc_metric("mask_iou", model=cgn.u2net, mask_set=MaskedImages(*load_masked_split(test)),
                        batch_size=64)                                 # the preset's batches
    assert again["iou"] == pytest.approx(res["iou"], abs=1e-9)


def _run(world, out: Path, **sets) -> dict:
    train, test = world
    cfg = override(preset("u2net-tiny", "imagenet pretrain u2net"), {
        "data.train": str(train), "data.test": str(test), "train.limit_train": 24,
        "train.limit_test": 16, "data.epoch_images": 24, "train.epochs": 2, "train.checkpoint_every": 0,
        "train.log_every": 2, **sets})
    return train_u2net(cfg, out, resume=(out / "config.json").exists())


def test_resume_is_bit_identical(world, tmp_path):
    full = _run(world, tmp_path / "full")                              # 2 epochs x 3 steps
    _run(world, tmp_path / "cut", **{"train.max_steps": 4})             # stopped inside epoch 2
    assert load_checkpoint(tmp_path / "cut" / "checkpoints" / "last.pt")["step"] == 4
    resumed = _run(world, tmp_path / "cut")                             # max_steps 0: to the end
    assert resumed["steps"] == full["steps"] == 6 and resumed["iou"] == full["iou"]
    a, b = (load_checkpoint(tmp_path / d / "checkpoints" / "last.pt") for d in ("full", "cut"))
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    sa, sb = a["optim"]["optimizer"]["state"], b["optim"]["optimizer"]["state"]
    assert all(torch.equal(sa[i]["exp_avg_sq"], sb[i]["exp_avg_sq"]) for i in sa)
    train_rows = lambda d: [r for r in map(json.loads, (tmp_path / d / "metrics.jsonl").open())  # noqa: E731
                            if "train/loss" in r]
    assert train_rows("full") == train_rows("cut")


def test_small_arch_exports_the_u2netp_layout():
    expected = {line.split()[0]: tuple(int(s) for s in line.split()[1].split(","))
                for line in (DATA / "u2netp_keys.txt").read_text().splitlines()
                if not line.startswith("#")}
    state = release_state_dict(U2Net(U2NetConfig("small")))
    assert {k: tuple(v.shape) for k, v in state.items()} == expected
    assert all(v.dtype == torch.float32 for v in state.values())


def test_forward_is_the_sigmoid_of_the_fused_logit():
    torch.manual_seed(0)
    net = U2Net(U2NetConfig("tiny")).eval()
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    logits = net(x, all_logits=True)
    assert len(logits) == 7 and all(z.shape == (2, 1, 16, 16) for z in logits)
    assert torch.equal(net(x), torch.sigmoid(logits[0]))


def test_resize_and_flips_keep_image_and_mask_together():
    images, masks = ellipses(4, 16, 5)
    plain_x, plain_m = MaskedImages(images, masks, size=8).__getitems__([0, 1, 2, 3])
    assert plain_x.shape == (4, 3, 8, 8) and plain_m.shape == (4, 1, 8, 8)
    assert -1 <= plain_x.min() and plain_x.max() <= 1 and 0 <= plain_m.min() and plain_m.max() <= 1
    torch.manual_seed(0)
    x, m = MaskedImages(images, masks, size=8, flip="horizontal").__getitems__([0, 1, 2, 3])
    flipped = [torch.equal(x[i], plain_x[i].flip(-1)) for i in range(4)]
    assert any(flipped) and not all(flipped)
    for i in range(4):
        assert torch.equal(x[i], plain_x[i].flip(-1) if flipped[i] else plain_x[i])
        assert torch.equal(m[i], plain_m[i].flip(-1) if flipped[i] else plain_m[i])


def test_iou_and_mae_against_hand_counts():
    gt = torch.zeros(3, 1, 2, 4)
    gt[0, 0, 0, :3] = 1                      # 3 object pixels
    gt[2, 0, 1, 1] = 1
    sal = torch.zeros(3, 1, 2, 4)
    sal[0, 0, 0, 1:4] = 0.9                  # 2 of 3 hit, 1 false alarm: IoU 2/4
    sal[0, 0, 1, 0] = 0.5                    # at the threshold: counts as object -> IoU 2/5
    # image 1: nothing predicted, nothing there -> IoU 1; image 2: missed -> IoU 0
    sal[1] = 0.2
    c = mask_counts(sal, gt)
    assert c["n"].item() == 3
    assert c["iou"].item() == pytest.approx(2 / 5 + 1 + 0)
    mae0 = (0.1 + 0.1 + 1 + 0.9 + 0.5) / 8   # |0.9-1| x2, |0-1|, |0.9-0|, |0.5-0|
    assert c["mae"].item() == pytest.approx(mae0 + 0.2 + 1 / 8)


def test_bad_splits_are_one_line_errors(world, tmp_path, capsys):
    train, test = world
    images, masks = ellipses(4, 16, 3)
    cases = {
        "no masks": (write_split(tmp_path / "nomask.npz", images, None), "holds no 'masks' array"),
        "size": (write_split(tmp_path / "size.npz", images, masks[:, :8, :8]),
                 r"masks are uint8 \(4, 8, 8\) but the images \(4, 16, 16, 3\)"),
    }
    for name, (path, message) in cases.items():
        rc = main(["imagenet", "pretrain", "u2net", "--preset", "u2net-tiny", "--data", str(path),
                   "--test", str(test), "--out", str(tmp_path / name)])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and len(err.splitlines()) == 1, err
        assert err.startswith("cgn: error: ") and re.search(message, err), err
        assert not (tmp_path / name).exists()
    assert main(["imagenet", "pretrain", "u2net", "--test", str(test), "--out",
                 str(tmp_path / "x")]) == 2
    assert "--data is required" in capsys.readouterr().err
