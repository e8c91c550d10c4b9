"""The ImageNet pipeline on a world, through the real CLI: tiny BigGAN and U2-Net stand-ins
trained on a tiny world, `imagenet train` with the world preset, generation in every mode, and
the classifier ensemble once as the baseline and once with the counterfactuals; the world
preset's one-line errors; the paper's loss ablation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from cgn.cli import main
from cgn.config import override
from cgn.core.checkpoint import load_checkpoint
from cgn.imagenet.biggan import BigGANConfig
from cgn.imagenet.config import ABLATIONS, ModelConfig, resolve_sample_classes
from cgn.imagenet.losses import LOSS_NAMES, ImageNetCGNLosses
from cgn.imagenet.model import biggan_config, build_cgn
from cgn.presets import preset
from conftest import require_hed, require_mnist

CLASSES = 10


pytestmark = pytest.mark.usefixtures("one_thread_no_onednn")


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """A 32-px wildlife world of 64 training and 32 test images, with its image folders."""
    require_mnist()
    out = tmp_path_factory.mktemp("world")
    assert main(["imagenet", "world", "build", "--n-train", "64", "--n-test", "32",
                 "--n-decorrelated", "8", "--image-folders", "--quiet", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def stand_ins(world, tmp_path_factory) -> tuple[Path, Path]:
    """The two stand-ins, trained by their commands on the world for a few steps at 32 px."""
    root = tmp_path_factory.mktemp("stand_ins")
    torch.set_num_threads(1)
    assert main(["imagenet", "pretrain", "biggan", "--preset", "biggan-tiny", "--data",
                 str(world / "train.npz"), "--set", "model.resolution=32", "--steps", "2",
                 "--threads", "1", "--quiet", "--out", str(root / "biggan")]) == 0
    assert main(["imagenet", "pretrain", "u2net", "--preset", "u2net-tiny", "--data",
                 str(world / "train.npz"), "--test", str(world / "test.npz"), "--set",
                 "data.image_size=32", "--epochs", "1", "--threads", "1", "--out", str(root / "u2net")]) == 0
    return root / "biggan" / "biggan", root / "u2net" / "u2net-tiny.pth"


def _results(capsys) -> dict:
    out = capsys.readouterr().out
    return json.loads(out[out.index("{"):])


def test_world_pipeline_through_the_cli(world, stand_ins, tmp_path, capsys):
    require_hed()  # the world preset's style features
    biggan, u2net = stand_ins
    run, cf = tmp_path / "cgn", tmp_path / "cf"
    assert main(["imagenet", "train", "--preset", "world-32-cgn", "--biggan", str(biggan),
                 "--u2net", str(u2net), "--episodes", "2", "--batch-acc", "1", "--batch-size", "2",
                 "--quiet", "--out", str(run)]) == 0
    cfg = json.loads((run / "config.json").read_text())["config"]
    # the sheet classes come from the 10-class stand-in; the recipe's weights are the paper's
    assert cfg["train"]["sample_classes"] == list(range(CLASSES))
    assert cfg["loss"]["feature_extractor"] == "hed" and cfg["loss"]["text"] == [0, 5, 5, 0]
    sheet = Image.open(run / "samples" / "sheet_ep0000002.png")
    assert sheet.size == (6 * 34 + 2, CLASSES * 34 + 2)             # six 32-px panels per class
    ck = load_checkpoint(run / "checkpoints" / "last.pt", kind="imagenet-cgn")
    stand_in = json.loads((biggan / "config.json").read_text())
    assert ck["extra"]["architecture"]["biggan"]["channel_width"] == stand_in["channel_width"] == 4
    assert ck["extra"]["architecture"]["u2net"]["arch"] == "tiny"    # from the file, not the preset
    # generation (and training from --cgn) rebuild the stand-ins' architecture from the checkpoint
    last = str(run / "checkpoints" / "last.pt")
    assert biggan_config(ModelConfig(cgn=last)) == BigGANConfig.from_json_file(biggan / "config.json")
    for split, n in (("train", 16), ("val", 8)):
        assert main(["imagenet", "generate", "--cgn", last, "--mode", "random", "--n", str(n),
                     "--split", split, "--batch-size", "8", "--save-masks", "--out", str(cf)]) == 0
    rows = (cf / "train" / "labels.csv").read_text().splitlines()[1:]
    assert len(rows) == 16 and all(0 <= int(c) < CLASSES for r in rows for c in r.split(",")[2:])
    assert len(list((cf / "train" / "masks").glob("*.png"))) == 16
    assert main(["imagenet", "generate", "--cgn", last, "--mode", "fixed", "--classes", "3", "5", "7",
                 "--n", "2", "--out", str(tmp_path / "fixed")]) == 0
    assert main(["imagenet", "generate", "--cgn", last, "--mode", "interp", "--classes", "1", "2", "3",
                 "--to", "9", "--interp", "texture", "--midpoints", "1", "--out", str(tmp_path)]) == 0
    assert Image.open(tmp_path / "interp_texture_1-2-3_to_9.png").size[0] == 3 * 34 + 2
    # the classifier ensemble: baseline (real images only), then with the counterfactuals
    capsys.readouterr()
    real = ["--train-dir", str(world / "folders" / "train"), "--val-dir", str(world / "folders" / "test"),
            "--epochs", "1", "--batch-size", "16", "--no-tensorboard"]
    assert main(["imagenet", "train-classifier", "--preset", "world-32-classifier-baseline", *real,
                 "--out", str(tmp_path / "base")]) == 0
    base = _results(capsys)
    assert base["step"] == 4 and base["metrics"]["real/n"] == 32 and "cf/n" not in base["metrics"]
    assert main(["imagenet", "train-classifier", "--preset", "world-32-classifier", *real,
                 "--cf-dir", str(cf), "--out", str(tmp_path / "ens")]) == 0
    ens = _results(capsys)
    assert ens["metrics"]["real/n"] == 32 and ens["metrics"]["cf/n"] == 8
    rows = [json.loads(r) for r in (tmp_path / "ens" / "metrics.jsonl").read_text().splitlines()]
    assert any("train/cf_shape_top1" in r for r in rows)
    # a backbone trained from scratch trains its BatchNorm statistics (frozen: the original's)
    state = load_checkpoint(tmp_path / "ens" / "checkpoints" / "last.pt")["model"]
    assert state["backbone.bn1.num_batches_tracked"].item() == 4
    assert not torch.equal(state["backbone.bn1.running_mean"], torch.zeros(64))


def test_world_preset_errors_are_one_line(stand_ins, tmp_path, capsys):
    biggan, u2net = stand_ins
    out = tmp_path / "run"
    assert main(["imagenet", "train", "--preset", "world-32-cgn", "--out", str(out)]) == 2
    assert "pass --biggan DIR" in capsys.readouterr().err           # never a downloaded ImageNet file
    assert main(["imagenet", "train", "--preset", "world-32-cgn", "--biggan", str(biggan),
                 "--out", str(out)]) == 2
    assert "pass --u2net FILE" in capsys.readouterr().err
    # ImageNet sheet classes with a 10-class BigGAN: named before the run directory exists
    assert main(["imagenet", "train", "--preset", "tiny", "--biggan", str(biggan), "--episodes", "1",
                 "--batch-acc", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "train.sample_classes [15, 251, 999]" in err and "10 classes" in err and not out.exists()
    assert resolve_sample_classes([], 1000)[:2] == [15, 251] and resolve_sample_classes([], 40) == list(range(16))


def test_world_preset_matches_the_biggan_stand_in():
    """With --random-init the world preset builds the stand-in's architecture (world-32)."""
    from cgn.imagenet.biggan_pretrain import generator_config
    ours = biggan_config(preset("world-32-cgn").model)
    theirs = generator_config(preset("world-32", "imagenet pretrain biggan").model)
    assert ours == theirs and ours.num_classes == CLASSES and ours.output_dim == 32


def test_each_ablation_removes_exactly_its_terms(tmp_path):
    base = {"model.tiny_resolution": 8, "loss.text_work_size": 8,
            "loss.text_patch": 3, "loss.text_top": 10, "loss.text_grid": 3}
    cfg = override(preset("tiny"), base)
    model = build_cgn(cfg.model).train()
    g = torch.Generator().manual_seed(0)
    u, y = torch.randn(2, model.z_dim, generator=g), model.class_vector([1, 2])
    out = model(u, y, y, y, 1.0)
    removed = {"shape": {"binary", "mask"}, "text": {"text"}, "bg": {"bg"}, "rec": {"l1", "perc"}}
    full = ImageNetCGNLosses(cfg.loss)(out.composite(), out.x_gt, out.mask, out.foreground,
                                       out.background_mask, generator=torch.Generator().manual_seed(1))
    for name, sets in ABLATIONS.items():
        losses = ImageNetCGNLosses(override(cfg, sets).loss)
        terms = losses(out.composite(), out.x_gt, out.mask, out.foreground, out.background_mask,
                       generator=torch.Generator().manual_seed(1)).weighted
        assert {k for k in LOSS_NAMES if terms[k].item() == 0} >= removed[name], name
        for k in set(LOSS_NAMES) - removed[name]:
            assert torch.equal(terms[k], full.weighted[k]), (name, k)
    # the command records the ablation as zero weights
    assert main(["imagenet", "train", "--preset", "tiny", "--ablate", "rec", "--episodes", "1",
                 "--batch-acc", "1", "--quiet", "--out", str(tmp_path / "r"),
                 *[a for k, v in base.items() for a in ("--set", f"{k}={v}")]]) == 0
    loss = json.loads((tmp_path / "r" / "config.json").read_text())["config"]["loss"]
    assert loss["l1"] == 0 and loss["perc"] == [0, 0, 0, 0] and loss["text"] == [0, 5, 5, 0]
