"""``cgn imagenet pretrain biggan``: the BigGAN-deep stand-in trained as a GAN (tiny runs through
the real CLI), its discriminator, hinge loss, EMA with standing statistics, and the export that
``cgn imagenet train --biggan`` loads."""

from __future__ import annotations

import json
import re
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from cgn.cli import main
from cgn.core.checkpoint import load_checkpoint, torch_load
from cgn.core.losses import hinge_discriminator_loss, hinge_discriminator_terms, hinge_generator_loss
from cgn.imagenet.biggan import BigGAN, tiny_config
from cgn.imagenet.biggan_disc import Discriminator
from cgn.imagenet.biggan_layers import use_batch_statistics
from cgn.core.ema import ema_update
from cgn.imagenet.biggan_standing import prepared_copy, standing_statistics, stats_inputs

from faults import SIGNALS, stop_at_random

DATA = Path(__file__).resolve().parent / "data"
STEPS = 6
TINY = ["imagenet", "pretrain", "biggan", "--preset", "biggan-tiny", "--steps", str(STEPS), "--threads", "1",
        "--quiet", "--set", "train.sample_every=3", "--set", "train.log_every=2",
        "--set", "train.checkpoint_every=2"]


@pytest.fixture(autouse=True)
def _single_thread():
    """One thread, as the interrupted processes use (--threads 1): the same float results."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _world(path, n=48, res=16, classes=2, seed=0):
    """A tiny labelled set: class 0 a red square, class 1 a blue bar, on dark noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    images = rng.integers(0, 60, (n, res, res, 3)).astype(np.uint8)
    for img, c in zip(images, labels):
        if c == 0:
            img[res // 4:3 * res // 4, res // 4:3 * res // 4, 0] = 220
        else:
            img[:, res // 2 - 2:res // 2 + 2, 2] = 220
    np.savez(path, images=images, labels=labels.astype(np.int64))
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return _world(tmp_path_factory.mktemp("world") / "train.npz")


@pytest.fixture(scope="module")
def reference_run(data, tmp_path_factory):
    """An uninterrupted tiny run (48 images, batch 8: crosses an epoch boundary)."""
    out = tmp_path_factory.mktemp("runs") / "full"
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main([*TINY, "--data", str(data), "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(n)
    return out


def _rows(run):
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "sec_per_step"} for r in rows]


def _same(a, b, where=""):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert set(a) == set(b), where
        for k in a:
            _same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


# --- pieces --------------------------------------------------------------------------------------

def test_hinge_losses_on_known_logits():
    d_real, d_fake = torch.tensor([2.0, 0.5, -1.0]), torch.tensor([-2.0, 0.0, 1.0])
    real, fake = hinge_discriminator_terms(d_real, d_fake)
    assert torch.isclose(real, torch.tensor((0 + 0.5 + 2) / 3))   # relu(1 - d) = 0, 0.5, 2
    assert torch.isclose(fake, torch.tensor((0 + 1 + 2) / 3))     # relu(1 + d) = 0, 1, 2
    assert torch.isclose(hinge_discriminator_loss(d_real, d_fake), real + fake)
    assert torch.isclose(hinge_generator_loss(d_fake), torch.tensor(1 / 3))  # -mean(-2, 0, 1)
    # a D sure of both sides (margins beyond 1) has zero loss
    assert hinge_discriminator_loss(torch.full((4,), 1.5), torch.full((4,), -3.0)) == 0


def test_discriminator_projection_term():
    torch.manual_seed(0)
    d = Discriminator(16, 4, num_classes=3).eval()  # eval: fixed spectral-norm vectors
    x = torch.randn(5, 3, 16, 16)
    with torch.no_grad():
        h = d.features(x)
        emb = d.class_embedding(torch.arange(3))                       # [3, C]
        out = {c: d(x, torch.full((5,), c)) for c in range(3)}
        # D(x, y) - D(x, y') = <e_y - e_y', h(x)>; and the unconditional part is the linear head
        assert torch.allclose(out[2] - out[0], h @ (emb[2] - emb[0]), atol=1e-4)
        assert torch.allclose(out[1] - h @ emb[1], d.linear(h)[:, 0], atol=1e-4)
        d.embed.weight_orig[:, 0] = d.embed.weight_orig[:, 2]          # classes 0 and 2 share an embedding:
        assert torch.allclose(d(x, torch.zeros(5, dtype=torch.long)), d(x, torch.full((5,), 2)), atol=1e-6)
        assert not torch.allclose(d(x, torch.ones(5, dtype=torch.long)), d(x, torch.full((5,), 2)), atol=1e-3)
        # soft class vectors mix the embeddings linearly
        y = torch.tensor([[0.5, 0.0, 0.5]]).expand(5, 3)
        assert d(x, y).shape == (5,)
    assert h.shape == (5, d.out_channels) and d.out_channels == 4 * 4     # 16 px: two stages, x4


def test_ema_update_and_standing_statistics():
    torch.manual_seed(0)
    g = BigGAN(tiny_config(16, channel_width=4, z_dim=8, num_classes=3))
    ema = BigGAN(g.config)
    before = [p.clone() for p in ema.parameters()]
    ema_update(ema, g, 0.9)
    for pe, p0, p in zip(ema.parameters(), before, g.parameters()):
        assert torch.allclose(pe, 0.9 * p0 + 0.1 * p, atol=1e-6)
    ema_update(ema, g, 0.0)
    assert all(torch.equal(a, b) for a, b in zip(ema.state_dict().values(), g.state_dict().values()))

    # one batch per row: the stored row is exactly that batch's statistics at every BatchNorm,
    # so sampling with standing statistics reproduces batch-statistics mode on that batch
    last = g.config.n_stats - 1
    ready = prepared_copy(g, batch_size=6, batches=1, seed=3, truncations=[1.0])
    u, classes = stats_inputs(ready, last, 0, 6, 3)
    with torch.no_grad():
        standing = ready(u, ready.class_vector(classes), 1.0)
        use_batch_statistics(ready, True)
        batch = ready(u, ready.class_vector(classes), 1.0)
    assert torch.allclose(standing, batch, atol=1e-5)
    assert not torch.equal(ready.generator.bn.running_means[last], g.generator.bn.running_means[last])
    assert torch.equal(ready.generator.bn.running_means[0], g.generator.bn.running_means[0])  # untouched
    # truncation 0 has zero noise, so its statistics differ from truncation 1's
    standing_statistics(ready, batch_size=6, batches=2, seed=3, rows=[0, last])
    bn = ready.generator.layers[0].bn_0
    assert not torch.allclose(bn.running_vars[0], bn.running_vars[last])


# --- the command ---------------------------------------------------------------------------------

def test_run_directory_and_export(reference_run, tmp_path):
    run = reference_run
    cfg = json.loads((run / "config.json").read_text())["config"]
    assert cfg["model"]["num_classes"] == 2 and cfg["train"]["steps"] == STEPS  # fixed from the data
    assert len(cfg["resolved"]["data_sha256"]) == 64
    assert [r["step"] for r in _rows(run)] == [2, 4, 6]
    assert {"d_loss", "d_real", "d_fake", "g_loss", "logit_real", "logit_fake", "epoch"} <= set(_rows(run)[0])
    assert {p.name for p in (run / "samples").iterdir()} == {
        "sheet_0000000.png", "sheet_0000003.png", "final.png"}
    results = json.loads((run / "results.json").read_text())
    assert results["steps"] == STEPS and results["epochs"] == 1.0
    # the export: the public layout at the small config, loaded by the ImageNet CGN's builder
    export = run / "biggan"
    assert sorted(p.name for p in export.iterdir()) == ["config.json", "pytorch_model.bin"]
    from cgn.config import to_dict
    from cgn.imagenet.config import ModelConfig
    from cgn.imagenet.model import build_cgn
    from cgn.presets import preset
    model = build_cgn(ModelConfig(**{**to_dict(preset("tiny", "imagenet train").model),
                                     "biggan": str(export)}))
    assert model.n_classes == 2 and model.biggan_config.output_dim == 16
    state = torch_load(export / "pytorch_model.bin")
    ema = load_checkpoint(run / "checkpoints" / "final.pt")["extra"]["generator_ema"]
    assert set(state) == set(ema)
    # the public biggan-deep-256 keys, fewer blocks: the same names up to the block index
    public = [line.split()[0] for line in (DATA / "biggan_deep_256_keys.txt").read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    block = lambda k: re.sub(r"layers\.\d+\.", "layers.N.", k)  # noqa: E731
    assert {block(k) for k in state} == {block(k) for k in public}
    for part in ("biggan_GT", "f_shape", "f_text", "f_bg"):
        got = getattr(model, part).state_dict()
        assert all(torch.equal(got[k], v) for k, v in state.items()), part
    for k, v in state.items():  # the EMA weights; fresh standing statistics
        if "running_" not in k and not k.endswith(("weight_u", "weight_v")):
            assert torch.equal(v, ema[k]), k
    assert not torch.equal(state["generator.bn.running_means"], ema["generator.bn.running_means"])
    # biggan-export from the run writes the same files
    assert main(["imagenet", "pretrain", "biggan-export", "--from", str(run), "--out", str(tmp_path / "e")]) == 0
    again = torch_load(tmp_path / "e" / "pytorch_model.bin")
    assert all(torch.equal(again[k], v) for k, v in state.items())
    assert (tmp_path / "e" / "config.json").read_text() == (export / "config.json").read_text()


@pytest.mark.parametrize("how,seed", [("ctrl-c", 5), ("sigterm", 2), ("hard-kill", 6)])
def test_interrupt_and_resume_is_exact(reference_run, data, tmp_path, how, seed):
    """A real signal at a random moment of a real process; the resumed run ends bit-identical."""
    args = [*TINY, "--data", str(data)]
    max_delay = 1.0
    for attempt in range(4):  # a fast machine may finish before the signal: sooner, then
        out = tmp_path / f"resumed{attempt}"
        rc, err, delay = stop_at_random([*args, "--out", str(out)], seed=seed, sig=SIGNALS[how],
                                        ready=lambda: (out / "samples" / "sheet_0000000.png").exists(),
                                        max_delay=max_delay)
        if rc != 0:
            break
        max_delay /= 4
    where = f"{how} after {delay:.3f} s: {err[-400:]}"
    assert rc != 0, f"never interrupted: {where}"
    if how == "hard-kill":
        assert rc == -signal.SIGKILL, where
    else:
        assert rc == 130, where
        last = out / "checkpoints" / "last.pt"
        if last.exists() and "stopping after the current step" in err:
            step = load_checkpoint(last)["step"]
            assert f"after step {step};" in (out / "log.txt").read_text(), where
    if (out / "config.json").exists():
        assert main([*args, "--out", str(out)]) == 2  # it exists: needs --resume
    assert main([*args, "--out", str(out), "--resume"]) == 0
    a = load_checkpoint(reference_run / "checkpoints" / "final.pt")
    b = load_checkpoint(out / "checkpoints" / "final.pt")
    for key in ("model", "optim", "step", "rng"):
        _same(a[key], b[key], key)
    for key in ("discriminator", "generator_ema", "window", "window_steps"):
        _same(a["extra"][key], b["extra"][key], key)
    assert _rows(reference_run) == _rows(out), where
    ref, got = (torch_load(r / "biggan" / "pytorch_model.bin") for r in (reference_run, out))
    _same(ref, got, "export")


def test_resume_keeps_the_settings(reference_run, data, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(reference_run, run)
    assert main(["imagenet", "pretrain", "biggan", "--out", str(run), "--resume", "--lr-d", "1e-3"]) == 2
    assert "may not change optim.lr_d" in capsys.readouterr().err
    assert main(["imagenet", "pretrain", "biggan", "--out", str(run), "--resume", "--preset", "world-32"]) == 2
    assert "uses preset biggan-tiny" in capsys.readouterr().err
    other = _world(tmp_path / "other.npz", seed=1)
    assert main(["imagenet", "pretrain", "biggan", "--out", str(run), "--resume", "--data", str(other)]) == 2
    assert "not the data the run" in capsys.readouterr().err
    # only the length (and how it runs) may change; the run records the change
    assert main(["imagenet", "pretrain", "biggan", "--out", str(run), "--resume", "--steps", "7",
                 "--threads", "1", "--quiet"]) == 0
    assert load_checkpoint(run / "checkpoints" / "final.pt")["step"] == 7
    record = json.loads((run / "config.json").read_text())
    assert record["config"]["train"]["steps"] == 7 and record["resume_changes"][-1]["train.steps"] == 7


def test_bad_data_is_a_one_line_error(data, tmp_path, capsys):
    def run(path, *extra):
        out = tmp_path / "out"
        rc = main(["imagenet", "pretrain", "biggan", "--preset", "biggan-tiny", "--data", str(path),
                   "--out", str(out), *extra])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and len(err.splitlines()) == 1, err
        assert not out.exists()  # a failed start leaves nothing behind
        return err

    (tmp_path / "junk.npz").write_text("not an archive")
    assert "not a readable .npz" in run(tmp_path / "junk.npz")
    assert "does not exist" in run(tmp_path / "missing.npz")
    np.savez(tmp_path / "nolabels.npz", images=np.zeros((8, 16, 16, 3), np.uint8))
    assert "no `labels` array" in run(tmp_path / "nolabels.npz")
    np.savez(tmp_path / "float.npz", images=np.zeros((8, 16, 16, 3)), labels=np.zeros(8, np.int64))
    assert "must be uint8" in run(tmp_path / "float.npz")
    assert "label 1 is out of range for 1 classes; pass --num-classes 2" in run(data, "--num-classes", "1")
    assert "pass --resolution 16" in run(data, "--resolution", "32")
    assert "--data FILE.npz is required" in run("", "--steps", "1")
