"""ImageNet CGN with tiny random models: losses and weights, one training step, resume, sheets,
datasets, interpolations, the authors' checkpoint layout, and the CLI."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cgn.cli import main
from cgn.config import override, to_dict
from cgn.core.checkpoint import load_checkpoint
from cgn.core.losses import StyleLoss
from cgn.errors import CGNError
from cgn.imagenet.biggan import BigGAN, BigGANConfig
from cgn.imagenet.config import FIXED_CLASSES, ModelConfig
from cgn.presets import preset
from cgn.imagenet.generate import (DatasetSpec, generate_dataset, interpolate, interpolation_frames,
                                   load_generator, regenerate, render, save_gif, to_unit)
from cgn.imagenet.losses import ImageNetCGNLosses, patch_grid
from cgn.imagenet.model import ImageNetCGN, build_cgn, truncated_noise
from cgn.imagenet.train import Trainer, sample_sheet, train
from cgn.imagenet.u2net import U2Net, U2NetConfig

DATA = Path(__file__).resolve().parent / "data"


pytestmark = pytest.mark.usefixtures("one_thread_no_onednn")


def tiny(**sets):
    """The tiny preset at 8 px (fast on two CPU cores)."""
    base = {"model.tiny_resolution": 8, "loss.text_work_size": 8, "loss.text_patch": 3,
            "loss.text_top": 10, "loss.text_grid": 3, "train.episodes": 1, "train.batch_acc": 1}
    base.update(sets)
    return override(preset("tiny"), base)


@pytest.fixture(scope="module")
def tiny_model() -> ImageNetCGN:
    return build_cgn(tiny().model)


def test_config_holds_the_spec_weights():
    cfg = preset("imagenet-256")
    assert (cfg.loss.l1, cfg.loss.binary, cfg.loss.mask, cfg.loss.bg) == (100, 300, 500, 2000)
    assert cfg.loss.perc == [4, 4, 4, 4] and cfg.loss.text == [0, 5, 5, 0]
    assert cfg.loss.mask_interval == [0.1, 0.9]
    assert (cfg.loss.text_patch, cfg.loss.text_work_size, cfg.loss.text_grid) == (15, 128, 6)
    assert (cfg.optim.lr_shape, cfg.optim.lr_texture, cfg.optim.lr_background) == (8e-6, 3e-5, 1e-5)
    assert (cfg.train.batch_size, cfg.train.batch_acc, cfg.train.episodes) == (1, 4000, 300)
    assert cfg.train.truncation == 1.0 and cfg.train.sample_classes == FIXED_CLASSES
    assert cfg.model.biggan_arch == "deep-256" and cfg.model.u2net_arch == "full"
    with pytest.raises(CGNError, match="mask_interval"):
        override(cfg, {"loss.mask_interval": [0.9, 0.1]})
    with pytest.raises(CGNError, match="unknown ImageNet CGN preset"):
        preset("imagenet-512")


def test_truncated_noise_is_truncated_and_seeded():
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    u = truncated_noise(2000, 16, 0.5, g1)
    assert torch.equal(u, truncated_noise(2000, 16, 0.5, g2))
    assert u.abs().max() <= 1.0 and u.abs().max() > 0.95
    # the std of N(0,1) truncated to [-2, 2] is 0.8796
    assert (u / 0.5).std().item() == pytest.approx(0.8796, abs=0.01)


def test_all_losses_finite_with_their_weights(tiny_model):
    cfg = tiny()
    losses = ImageNetCGNLosses(cfg.loss)
    m = tiny_model.train()
    g = torch.Generator().manual_seed(0)
    u = truncated_noise(2, m.z_dim, 1.0, g)
    y = m.class_vector([1, 2])
    out = m(u, y, y, m.class_vector([3, 4]), 1.0)      # other background: x_gen != x_gt
    x_gen = out.composite()
    terms = losses(x_gen, out.x_gt, out.mask, out.foreground, out.background_mask,
                   generator=torch.Generator().manual_seed(1))
    assert list(terms.weighted) == ["l1", "perc", "binary", "mask", "text", "bg"]
    assert all(torch.isfinite(v) for v in terms.weighted.values())
    for k, lam in (("l1", 100), ("binary", 300), ("mask", 500), ("bg", 2000)):
        assert torch.allclose(terms.weighted[k], lam * terms.raw[k])
    assert terms.weighted["l1"] > 0 and terms.weighted["bg"] > 0
    ref_perc, _ = StyleLoss(losses.perc.extractor, [4, 4, 4, 4])(x_gen, out.x_gt)
    assert torch.allclose(terms.weighted["perc"], ref_perc)
    target = patch_grid(out.x_gt, out.mask, patch=3, work_size=8, top=10, grid=3,
                        generator=torch.Generator().manual_seed(1))
    ref_text, parts = StyleLoss(losses.perc.extractor, [0, 5, 5, 0])(out.foreground, target)
    assert torch.allclose(terms.weighted["text"], ref_text)
    assert set(parts) == {"relu2_2", "relu3_3"}
    assert torch.allclose(terms.total(), sum(terms.weighted.values()))


def test_patch_grid_tiles_the_most_confident_window():
    torch.manual_seed(0)
    x = torch.rand(1, 3, 8, 8) * 2 - 1
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 2:6, 3:7] = 1.0                 # exactly one 4x4 window has mean 1
    grid = patch_grid(x, mask, patch=4, work_size=8, top=1, grid=2)
    crop = x[..., 2:6, 3:7]
    assert torch.allclose(grid, crop.repeat(1, 1, 2, 2), atol=1e-6)
    # with more candidates every tile still lies in the mask's top windows
    g = torch.Generator().manual_seed(0)
    a = patch_grid(x, mask, patch=4, work_size=8, top=3, grid=2, generator=g)
    b = patch_grid(x, mask, patch=4, work_size=8, top=3, grid=2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.shape == x.shape


def test_one_step_updates_only_the_three_mechanisms(tmp_path):
    tr = Trainer(tiny(), tmp_path / "run", quiet=True)
    before = {k: v.clone() for k, v in tr.model.state_dict().items()}
    rec = tr.train_episode()
    after = tr.model.state_dict()
    for k in before:
        same = torch.equal(before[k], after[k])
        if k.startswith(("biggan_GT.", "u2net.")):
            assert same, f"frozen {k} changed"
    for name in ("f_shape", "f_text", "f_bg"):
        changed = [k for k in before if k.startswith(name + ".") and not torch.equal(before[k], after[k])]
        assert any(k.endswith("weight_orig") for k in changed), f"{name} did not train"
    assert all(not p.requires_grad for p in tr.model.biggan_GT.parameters())
    assert all(not p.requires_grad for p in tr.model.u2net.parameters())
    assert not tr.model.biggan_GT.training and not tr.model.u2net.training
    assert all(np.isfinite(v) for k, v in rec.items() if k.startswith("loss/"))
    assert set(tr.opts) == {"shape", "texture", "background"}
    assert [o.param_groups[0]["lr"] for o in tr.opts.values()] == [8e-6, 3e-5, 1e-5]


def test_resume_is_exact_and_sheets_regenerate(tmp_path):
    cfg = tiny(**{"train.episodes": 2, "train.batch_acc": 2})
    train(cfg, tmp_path / "a", quiet=True)
    train(override(cfg, {"train.episodes": 1}), tmp_path / "b", quiet=True)
    train(cfg, tmp_path / "b", resume=True, quiet=True)
    ca = load_checkpoint(tmp_path / "a/checkpoints/last.pt", kind="imagenet-cgn")
    cb = load_checkpoint(tmp_path / "b/checkpoints/last.pt", kind="imagenet-cgn")
    assert ca["step"] == cb["step"] == 2
    assert ca["config"] == cb["config"] == to_dict(cfg)
    for k, v in ca["model"].items():
        assert torch.equal(v, cb["model"][k]), k
    for name in ("shape", "texture", "background"):
        sa, sb = ca["optim"][name]["state"], cb["optim"][name]["state"]
        assert all(torch.equal(sa[i]["exp_avg_sq"], sb[i]["exp_avg_sq"]) for i in sa)
    la = (tmp_path / "a/metrics.jsonl").read_text().splitlines()
    lb = (tmp_path / "b/metrics.jsonl").read_text().splitlines()
    strip = [lambda s: {k: v for k, v in __import__("json").loads(s).items() if k != "seconds"}]
    assert [strip[0](s) for s in la] == [strip[0](s) for s in lb]
    sheet = "samples/sheet_ep0000002.png"
    assert (tmp_path / "a" / sheet).read_bytes() == (tmp_path / "b" / sheet).read_bytes()
    im = Image.open(tmp_path / "a" / sheet)
    # 3 classes x 6 panels of 8 px with 2 px padding
    assert im.size == (6 * 10 + 2, 3 * 10 + 2)
    # the sheet is a pure function of the weights, classes and noise
    model = load_generator(tmp_path / "a/checkpoints/last.pt")
    u = truncated_noise(1, model.z_dim, 0.5, torch.Generator().manual_seed(0))
    s1 = sample_sheet(model, [15, 251, 999], u, 0.5)
    assert torch.equal(s1, sample_sheet(model, [15, 251, 999], u, 0.5))
    assert ca["extra"]["feature_extractor"]["kind"] == "random"


def test_dataset_is_written_and_regenerates_bit_identically(tmp_path, tiny_model):
    model = tiny_model.eval()
    spec = DatasetSpec(mode="random", seed=7, truncation=0.5, classes=None, source="tiny", save_masks=True)
    assert generate_dataset(model, tmp_path, "train", 4, spec) == 4
    d = tmp_path / "train"
    rows = list(csv.DictReader(open(d / "labels.csv")))
    assert [r["image"] for r in rows] == [f"{i:07d}.png" for i in range(4)]
    assert len({r["seed"] for r in rows}) == 4
    for r in rows:
        x = regenerate(model, int(r["seed"]), int(r["shape_class"]), int(r["texture_class"]),
                       int(r["background_class"]), 0.5)
        png = np.asarray(Image.open(d / r["image"]).convert("RGB"))
        assert np.array_equal((x * 255).round().to(torch.uint8).permute(1, 2, 0).numpy(), png)
        assert (d / "masks" / r["image"]).is_file()
    # resume: a lost last row (and its image) is rebuilt exactly
    first = (d / "0000003.png").read_bytes()
    lines = (d / "labels.csv").read_text().splitlines(keepends=True)
    (d / "labels.csv").write_text("".join(lines[:-1]))
    assert generate_dataset(model, tmp_path, "train", 4, spec) == 1
    assert (d / "0000003.png").read_bytes() == first
    assert generate_dataset(model, tmp_path, "train", 4, spec) == 0
    with pytest.raises(CGNError, match="other settings"):
        generate_dataset(model, tmp_path, "train", 5, DatasetSpec("random", 8, 0.5, None, "tiny", True))
    fixed = DatasetSpec(mode="fixed", seed=7, truncation=0.5, classes=[1, 2, 3], source="tiny", save_masks=False)
    generate_dataset(model, tmp_path, "val", 2, fixed)
    rows = list(csv.DictReader(open(tmp_path / "val" / "labels.csv")))
    assert [(r["shape_class"], r["texture_class"], r["background_class"]) for r in rows] == [("1", "2", "3")] * 2
    with pytest.raises(CGNError, match="fixed mode"):
        generate_dataset(model, tmp_path, "val", 2, DatasetSpec("fixed", 7, 0.5, None, "tiny", False))


def test_sampling_skips_only_what_the_losses_need(tiny_model):
    """Generation leaves out x_gt and the background's saliency; the images are the training
    forward's."""
    model = tiny_model.eval()
    u = truncated_noise(3, model.z_dim, 0.5, torch.Generator().manual_seed(0))
    classes = [[1, 2, 3], [4, 5, 6], [0, 7, 8]]
    fast = render(model, u, classes, 0.5)
    with torch.no_grad():
        full = model(u, *(model.class_vector([c[i] for c in classes]) for i in range(3)), 0.5)
    assert fast.background_mask is None and fast.x_gt is None and full.background_mask is not None
    for f in ("mask", "premask", "foreground", "background"):
        assert torch.equal(getattr(fast, f), getattr(full, f)), f
    assert torch.equal(fast.composite(), full.composite())


def test_interpolations_and_gif(tmp_path, tiny_model):
    model = tiny_model.eval()
    u = truncated_noise(1, model.z_dim, 0.5, torch.Generator().manual_seed(0))
    res = interpolate(model, u, [1, 2, 3], 500, "texture", midpoints=2, truncation=0.5)
    assert res.mask.shape[0] == 4
    start = render(model, u, [[1, 2, 3]], 0.5)
    end = render(model, u, [[1, 500, 3]], 0.5)
    assert torch.allclose(res.foreground[0], start.foreground[0], atol=1e-6)
    assert torch.allclose(res.foreground[-1], end.foreground[0], atol=1e-6)
    assert torch.allclose(res.mask, start.mask.expand_as(res.mask), atol=1e-6)   # shape untouched
    frames = interpolation_frames(model, u, [1, 2, 3], [("texture", 5), ("all", 1)], 1, 0.5)
    assert len(frames) == 3 + 2
    save_gif(tmp_path / "a.gif", frames)
    im = Image.open(tmp_path / "a.gif")
    assert im.n_frames == 5
    assert torch.allclose(frames[0], to_unit(start.composite())[0], atol=1e-6)


def test_full_size_cgn_has_the_authors_key_layout():
    with torch.device("meta"):
        cgn = ImageNetCGN(BigGANConfig(), U2NetConfig("full"))
    keys = {k: tuple(v.shape) for k, v in cgn.state_dict().items() if not k.endswith("num_batches_tracked")}
    g = {line.split()[0]: tuple(int(s) for s in line.split()[1].split(",")) for line in
         (DATA / "biggan_deep_256_keys.txt").read_text().splitlines() if not line.startswith("#")}
    u = {line.split()[0]: tuple(int(s) for s in line.split()[1].split(",")) for line in
         (DATA / "u2net_keys.txt").read_text().splitlines() if not line.startswith("#")}
    expected = {f"{p}.{k}": s for p in ("biggan_GT", "f_shape", "f_text", "f_bg") for k, s in g.items()}
    expected.update({f"u2net.{k}": s for k, s in u.items()})
    assert keys == expected


def test_authors_style_state_dict_loads(tmp_path, tiny_model):
    state = {"module." + k: v for k, v in tiny_model.state_dict().items()
             if not (k.startswith("u2net.") and k.endswith("num_batches_tracked"))}
    torch.save(state, tmp_path / "cgn.pth")
    cfg = tiny().model
    loaded = build_cgn(ModelConfig(**{**to_dict(cfg), "cgn": str(tmp_path / "cgn.pth")}))
    got = loaded.state_dict()
    for k, v in tiny_model.state_dict().items():
        assert torch.equal(v, got[k]), k
    assert not loaded.u2net.training and all(not p.requires_grad for p in loaded.u2net.parameters())
    torch.save({"f_shape.embeddings.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(CGNError, match="does not fit"):
        build_cgn(ModelConfig(**{**to_dict(cfg), "cgn": str(tmp_path / "bad.pth")}))


def test_build_from_release_files(tmp_path):
    cfg = tiny().model
    torch.manual_seed(1)
    g = BigGAN(build_cgn(cfg).biggan_config)
    g.save_pretrained(tmp_path / "biggan")
    torch.save(U2Net(U2NetConfig("tiny")).state_dict(), tmp_path / "u2.pth")
    model = build_cgn(ModelConfig(**{**to_dict(cfg), "biggan": str(tmp_path / "biggan"),
                                     "u2net": str(tmp_path / "u2.pth")}))
    ref = g.state_dict()
    for part in ("biggan_GT", "f_shape", "f_text", "f_bg"):
        got = getattr(model, part).state_dict()
        assert all(torch.equal(got[k], v) for k, v in ref.items())


def test_core_counterfactual_sampler_accepts_the_model(tiny_model):
    from cgn.core.sampling import sample
    s = sample(tiny_model, 3, 1, 2, [3, 4, 5], seed=0, shared_noise=True)
    assert s.composite.shape == (3, 3, 8, 8) and s.mask.shape == (3, 1, 8, 8)
    assert "shape.premask" in s.extras and s.labels["background"].tolist() == [3, 4, 5]


def test_cli_train_generate_metrics(tmp_path, capsys):
    out = tmp_path / "run"
    sets = ["--set", "model.tiny_resolution=8", "--set", "loss.text_work_size=8",
            "--set", "loss.text_top=10"]
    assert main(["imagenet", "train", "--preset", "tiny", "--out", str(out), "--episodes", "1",
                 "--batch-acc", "1", "--quiet", *sets]) == 0
    ck = str(out / "checkpoints/last.pt")
    assert main(["imagenet", "generate", "--cgn", ck, "--out", str(tmp_path / "gen"), "--mode",
                 "random", "--n", "3", "--save-masks"]) == 0
    assert main(["imagenet", "generate", "--cgn", ck, "--out", str(tmp_path / "gen"), "--mode",
                 "interp", "--classes", "1", "2", "3", "--to", "9", "--interp", "shape",
                 "--midpoints", "1", "--gif"]) == 0
    assert (tmp_path / "gen/interp_shape_1-2-3_to_9.gif").is_file()
    capsys.readouterr()
    assert main(["imagenet", "metrics", "--folder", str(tmp_path / "gen/train"), "--metrics", "mu_mask",
                 "--json", str(tmp_path / "m.json")]) == 0
    import json
    res = json.loads((tmp_path / "m.json").read_text())
    assert res["n_masks"] == 3 and 0 < res["mu_mask"] < 1
    # the paper preset refuses to start without pretrained weights, with a one-line reason
    assert main(["imagenet", "train", "--out", str(tmp_path / "x")]) == 2
    assert "cgn download biggan-deep-256" in capsys.readouterr().err


def test_cli_resume_keeps_the_runs_config(tmp_path, capsys):
    out = tmp_path / "run"
    sets = ["--set", "model.tiny_resolution=8", "--set", "loss.text_work_size=8",
            "--set", "loss.text_top=10"]
    assert main(["imagenet", "train", "--preset", "tiny", "--out", str(out), "--episodes", "1",
                 "--batch-acc", "1", "--quiet", *sets]) == 0
    # no --preset, no --set: the stored tiny config is used, only the length changes
    assert main(["imagenet", "train", "--out", str(out), "--resume", "--episodes", "2", "--quiet"]) == 0
    ck = load_checkpoint(out / "checkpoints/last.pt", kind="imagenet-cgn")
    assert ck["step"] == 2 and ck["config"]["model"]["tiny_resolution"] == 8
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    assert main(["imagenet", "train", "--preset", "tiny", "--out", str(out), "--quiet"]) == 2
    assert "--resume" in capsys.readouterr().err


def test_sheet_noise_default_comes_from_the_download_root(shared_data, tmp_path, monkeypatch):
    """The authors' sheet noise is looked up where `cgn download imagenet-sheet-noise` puts it
    (digest-pinned; never beside the source tree); without it, or when it does not fit, the
    noise is a seeded draw."""
    from dataclasses import replace

    from cgn.download import download, get_asset
    from cgn.imagenet.config import ImageNetCGNConfig
    from cgn.imagenet.train import fixed_noise
    home = tmp_path / "home"
    monkeypatch.setenv("CGN_HOME", str(home))
    cfg = ImageNetCGNConfig()
    u, source = fixed_noise(cfg, 128)
    assert source.startswith("seeded") and u.shape == (1, 128)
    theirs = shared_data / "cgn_reference" / "imagenet_u_fixed.pth"
    asset = get_asset("imagenet-sheet-noise")
    assert all("1cba9d4" in url for f in asset.files for url in f.urls)
    mirror = replace(asset, files=tuple(replace(f, urls=(theirs.as_uri(),)) for f in asset.files))
    download("imagenet-sheet-noise", home, assets=[mirror], log=lambda m: None)  # checks the sha256
    u, source = fixed_noise(cfg, 128)
    assert source == "authors' imagenet_u_fixed.pth"
    assert torch.equal(u, torch.load(theirs, map_location="cpu", weights_only=True).float())
    assert fixed_noise(cfg, 64)[1].startswith("seeded")
    own = tmp_path / "u.pt"
    torch.save(torch.ones(1, 128), own)
    u, source = fixed_noise(override(cfg, {"train.fixed_noise": str(own)}), 128)
    assert source == str(own) and torch.equal(u, torch.ones(1, 128))
