"""``cgn train-cgn`` end to end (tiny runs through the real CLI): run directory contents, and
exact resume after an interruption compared with an uninterrupted run."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cgn.cli import main
from cgn.core.checkpoint import load_checkpoint, save_checkpoint
from cgn.mnist import train as train_mod

from conftest import require_mnist
from faults import SIGNALS, stop_at_random

STEPS = 7
TINY = ["--preset", "double-colored-mnist", "--steps", str(STEPS), "--limit-train", "48",
        "--feature-extractor", "random", "--set", "train.log_every=2", "--set", "train.sample_every=4",
        "--set", "train.timeline_every=2", "--set", "train.checkpoint_every=3",
        "--set", "train.eval_samples=20", "--set", "train.shape_judge=false", "--set", "model.ndf=32",
        "--threads", "2"]


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """An uninterrupted tiny run (3 steps per epoch: crosses two epoch boundaries)."""
    require_mnist()
    out = tmp_path_factory.mktemp("runs") / "full"
    assert main(["train-cgn", *TINY, "--out", str(out)]) == 0
    return out


def _states(run):
    ck = load_checkpoint(run / "checkpoints" / "final.pt", kind="mnist-cgn")
    return ck


def _assert_same(a, b, where=""):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert set(a) == set(b), where
        for k in a:
            _assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def _losses(run):
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "sec_per_step"} for r in rows]


def test_run_directory_contents(reference_run):
    run = reference_run
    record = json.loads((run / "config.json").read_text())
    cfg = record["config"]
    assert cfg["loss"]["feature_extractor"] == "random"
    assert record["config"]["resolved"]["feature_extractor"]["kind"] == "random"
    assert cfg["loss"]["style_weights"] == [0.0, 0.05, 0.0, 0.05] and cfg["train"]["max_steps"] == STEPS
    rows = _losses(run)
    assert [r["step"] for r in rows] == [2, 4, 6, 7]
    assert {"g_adv", "g_mask", "g_style", "d_loss", "mask_mean", "style_relu2_2", "style_relu4_3"} <= set(rows[0])
    samples = {p.name for p in (run / "samples").iterdir()}
    assert {"step_000000.png", "step_000004.png", "final.png", "mask_timeline.png", "mask_timeline.npz"} <= samples
    with __import__("numpy").load(run / "samples" / "mask_timeline.npz") as z:
        assert z["steps"].tolist() == [0, 2, 4, 6, 7] and z["masks"].shape == (5, 20, 32, 32)
    results = json.loads((run / "results.json").read_text())
    assert results["steps"] == STEPS and results["feature_extractor"]["kind"] == "random"
    assert 0 < results["mask_mean"] < 1 and len(results["mask_mean_per_class"]) == 10
    assert "shape_accuracy" not in results  # the judge is off here (tested in test_sample_cli)
    ck = _states(run)
    assert ck["step"] == STEPS and ck["config"]["train"]["dataset"] == "double-colored-mnist"
    assert ck["extra"]["feature_extractor"]["kind"] == "random"


@pytest.mark.parametrize("how,seed", [("ctrl-c", 1), ("sigterm", 2), ("hard-kill", 4)])
def test_interrupt_and_resume_is_exact(reference_run, tmp_path, how, seed):
    """A real signal at a random moment of a real process (mid-step, most likely); the resumed run
    ends bit-identical to the uninterrupted one."""
    max_delay = 1.5
    for attempt in range(4):  # a slow machine may finish before the signal: sooner, then
        out = tmp_path / f"resumed{attempt}"
        rc, err, delay = stop_at_random(["train-cgn", *TINY, "--out", str(out)], seed=seed,
                                        ready=lambda: (out / "samples" / "step_000000.png").exists(),
                                        sig=SIGNALS[how], max_delay=max_delay)
        if rc != 0:
            break
        max_delay /= 4
    where = f"{how} after {delay:.3f} s: {err[-400:]}"
    assert rc != 0, f"never interrupted: {where}"
    last = out / "checkpoints" / "last.pt"
    if how == "hard-kill":
        assert rc == -signal.SIGKILL, where
    else:
        assert rc == 130, where
        assert "stopping after the current step" in err or "interrupted" in err, where
        if last.exists():  # stopped inside the loop: the checkpoint is of the step it ended
            step = load_checkpoint(last)["step"]
            assert f"after step {step};" in (out / "log.txt").read_text(), where
    if (out / "config.json").exists():
        assert main(["train-cgn", *TINY, "--out", str(out)]) == 2  # exists: needs --resume
    assert main(["train-cgn", *TINY, "--out", str(out), "--resume"]) == 0
    a, b = _states(reference_run), _states(out)
    for key in ("model", "optim", "step"):
        _assert_same(a[key], b[key], key)
    for key in ("discriminator", "data_generator", "timeline_steps", "timeline_masks"):
        _assert_same(a["extra"][key], b["extra"][key], key)
    _assert_same(a["rng"], b["rng"], "rng")
    assert _losses(reference_run) == _losses(out), where


def test_resume_refuses_a_different_config(reference_run, tmp_path, capsys):
    out = tmp_path / "r"
    args = [a if a != str(STEPS) else "2" for a in TINY]
    assert main(["train-cgn", *args, "--out", str(out)]) == 0
    # more steps is a legal change; another loss weight is not
    assert main(["train-cgn", *TINY, "--out", str(out), "--resume", "--ssim-weight", "1"]) == 2
    assert "different config" in capsys.readouterr().err
    assert main(["train-cgn", *TINY, "--out", str(out), "--resume"]) == 0
    assert load_checkpoint(out / "checkpoints" / "final.pt")["step"] == STEPS
    rec = json.loads((out / "config.json").read_text())
    assert rec["config"]["train"]["max_steps"] == STEPS and rec["resume_changes"]


def test_bad_options_are_one_line_errors(tmp_path, capsys):
    assert main(["train-cgn", "--preset", "double-colored-mnist", "--feature-extractor", "vgg19",
                 "--out", str(tmp_path / "x")]) == 2
    assert "unknown feature extractor" in capsys.readouterr().err
    assert main(["train-cgn", "--preset", "double-colored-mnist", "--set", "loss.nope=1",
                 "--out", str(tmp_path / "y")]) == 2


def test_print_config_and_recipe(capsys):
    assert main(["train-cgn", "--preset", "wildlife-mnist", "--recipe", "--ssim-weight", "0.5",
                 "--feature-scale", "2", "--textures", "tex/", "--print-config"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["model"]["disc"] == "conv" and cfg["loss"]["ssim_weight"] == 0.5
    assert cfg["loss"]["feature_scale"] == 2 and cfg["train"]["textures"] == "tex/"
    assert cfg["train"]["max_steps"] is not None
    assert main(["train-cgn", "--preset", "colored-mnist", "--recipe", "--print-config"]) == 0
    assert json.loads(capsys.readouterr().out)["model"]["background_bias"] == "data"
    assert main(["train-cgn", "--preset", "colored-mnist", "--print-config"]) == 0
    assert json.loads(capsys.readouterr().out)["model"]["background_bias"] == "zero"  # the original


def test_conv_discriminator_ssim_and_border_losses(tmp_path):
    require_mnist()
    out = tmp_path / "conv"
    args = ["train-cgn", "--preset", "double-colored-mnist", "--steps", "2", "--limit-train", "32",
            "--feature-extractor", "random", "--ssim-weight", "1", "--border-weight", "1",
            "--set", "model.disc=conv", "--set", "model.ndf=8", "--set", "train.log_every=1",
            "--set", "train.eval_samples=20", "--set", "train.shape_judge=false", "--out", str(out)]
    assert main(args) == 0
    rows = _losses(out)
    assert len(rows) == 2 and rows[0]["g_ssim"] > 0 and rows[0]["g_border"] > 0
    results = json.loads((out / "results.json").read_text())
    assert {"fg_colour_accuracy", "bg_colour_accuracy"} <= set(results)


def test_background_bias_from_data_is_the_median_colour():
    # a fifth of the pixels are "digit" (bright red), the rest a dark grey background
    imgs = torch.full((10, 3, 8, 8), 25, dtype=torch.uint8)
    imgs[:, 0, :2, :8] = 250
    bias = train_mod.background_bias_from_data(imgs)
    assert torch.allclose(torch.tanh(bias), torch.full((3,), 25 / 127.5 - 1), atol=1e-6)
    black = torch.zeros(4, 3, 8, 8, dtype=torch.uint8)  # saturated: clipped, not -inf
    assert torch.allclose(train_mod.background_bias_from_data(black), torch.full((3,), -2.9945), atol=1e-3)


def test_data_background_bias_and_resume_of_an_older_config(tmp_path):
    """--set model.background_bias=data starts the background's output bias at the data's median
    colour; a run whose config.json predates a field resumes (the field takes its default)."""
    require_mnist()
    out = tmp_path / "bg"
    args = ["train-cgn", "--preset", "colored-mnist", "--limit-train", "32", "--feature-extractor", "random",
            "--set", "model.ndf=8", "--set", "train.eval_samples=20", "--set", "train.shape_judge=false",
            "--set", "train.checkpoint_every=1", "--out", str(out)]
    assert main([*args, "--steps", "2", "--set", "model.background_bias=data"]) == 0
    bias = _states(out)["model"]["background.layers.11.bias"]
    assert torch.all((bias + 2.9945).abs() < 2 * 2e-4 + 1e-4)  # colored MNIST: black, moved <= 2 Adam steps
    assert "background output bias initialised from the data" in (out / "log.txt").read_text()

    plain = tmp_path / "plain"
    assert main([*args[:-1], str(plain), "--steps", "1"]) == 0
    assert _states(plain)["model"]["background.layers.11.bias"].abs().max() < 1e-3
    record = json.loads((plain / "config.json").read_text())
    del record["config"]["model"]["background_bias"]  # as written before the field existed
    (plain / "config.json").write_text(json.dumps(record))
    assert main([*args[:-1], str(plain), "--steps", "2", "--resume"]) == 0
    assert _states(plain)["step"] == 2


def test_a_checkpoint_with_the_old_texture_key_names_resumes_exactly(tmp_path):
    """Runs written before the texture mechanism was renamed hold its weights as ``foreground.*``:
    such a run resumes, and ends bit-identical to the same run with the current key names."""
    require_mnist()
    import shutil
    new, old = tmp_path / "new", tmp_path / "old"
    args = [a if a != str(STEPS) else "3" for a in TINY]
    assert main(["train-cgn", *args, "--out", str(new)]) == 0
    shutil.copytree(new, old)
    last = old / "checkpoints" / "last.pt"
    ck = load_checkpoint(last)
    ck["model"] = {("foreground." + k[len("texture."):] if k.startswith("texture.") else k): v
                   for k, v in ck["model"].items()}
    assert any(k.startswith("foreground.layers.") for k in ck["model"])
    save_checkpoint(last, **{k: ck[k] for k in ("kind", "step", "config", "model", "optim", "rng", "extra")})
    for run in (new, old):
        assert main(["train-cgn", *TINY, "--out", str(run), "--resume"]) == 0
    a, b = _states(new), _states(old)
    assert list(b["model"]) == list(a["model"])
    for key in ("model", "optim", "step"):
        _assert_same(a[key], b[key], key)
    assert _losses(new) == _losses(old)


def test_ema_of_the_generator_is_sampled_and_saved_and_resumes_exactly(reference_run, tmp_path):
    """train.ema_decay > 0: the checkpoint's model is the average, the trained generator rides in
    extra (bit-identical to a run without the average: it does not touch training), BatchNorm
    statistics are G's, and a stopped run continues to the same state."""
    ema = ["--ema-decay", "0.5", "--set", "train.ema_start=2"]
    full = tmp_path / "ema"
    assert main(["train-cgn", *TINY, *ema, "--out", str(full)]) == 0
    ck, ref = _states(full), _states(reference_run)
    _assert_same(ck["extra"]["generator"], ref["model"], "generator")
    _assert_same(ck["optim"], ref["optim"], "optim")
    g, avg = ck["extra"]["generator"], ck["model"]
    assert set(g) == set(avg)
    floats = [k for k in g if g[k].is_floating_point() and "running" not in k]
    assert any(not torch.equal(g[k], avg[k]) for k in floats)  # the average is not G
    for k in g:
        if "running" in k or "num_batches" in k:
            assert torch.equal(g[k], avg[k]), k
    assert json.loads((full / "results.json").read_text())["generator"] == "ema (decay 0.5 from step 2)"

    part = tmp_path / "ema-part"
    short = [a if a != str(STEPS) else "4" for a in TINY]
    assert main(["train-cgn", *short, *ema, "--out", str(part)]) == 0
    assert main(["train-cgn", *TINY, *ema, "--out", str(part), "--resume"]) == 0
    _assert_same(_states(part)["model"], avg, "model")
    _assert_same(_states(part)["extra"]["generator"], g, "generator")
    assert main(["train-cgn", *TINY, "--out", str(part), "--resume"]) == 2  # ema_decay may not change

    # scripts/checkpoint_as_run.py: the run's trained generator, or an interim checkpoint, as a run
    script = Path(__file__).resolve().parents[1] / "scripts" / "checkpoint_as_run.py"
    final = full / "checkpoints" / "final.pt"
    done = subprocess.run([sys.executable, str(script), str(final), str(tmp_path / "raw"), "--weights",
                           "trained"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    raw = load_checkpoint(tmp_path / "raw" / "checkpoints" / "final.pt", kind="mnist-cgn")
    _assert_same(raw["model"], g, "model")
    assert "generator" not in raw["extra"] and raw["config"]["train"]["ema_decay"] == 0
    res = json.loads((tmp_path / "raw" / "results.json").read_text())
    assert res["checkpoint"] == str((tmp_path / "raw" / "checkpoints" / "final.pt").resolve())
    assert res["dataset"] == "double-colored-mnist" and res["steps"] == STEPS and res["generator"] == "trained"
    assert subprocess.run([sys.executable, str(script), str(final), str(tmp_path / "avg")]).returncode == 0
    _assert_same(load_checkpoint(tmp_path / "avg" / "checkpoints" / "final.pt")["model"], avg, "avg")
    again = subprocess.run([sys.executable, str(script), str(reference_run / "checkpoints" / "final.pt"),
                            str(tmp_path / "x"), "--weights", "trained"], capture_output=True, text=True)
    assert again.returncode == 2 and "holds no EMA" in again.stderr and len(again.stderr.splitlines()) == 1


def test_bf16_generator_and_discriminator_train_and_resume_exactly(reference_run, tmp_path):
    """train.gan_precision=bf16: G's and D's passes under bf16 autocast, parameters and optimiser
    states fp32; the run records it, trains to nearby (not equal) weights, and resumes exactly."""
    bf16 = ["--set", "train.gan_precision=bf16"]
    full = tmp_path / "bf16"
    assert main(["train-cgn", *TINY, *bf16, "--out", str(full)]) == 0
    ck, ref = _states(full), _states(reference_run)
    assert json.loads((full / "results.json").read_text())["gan_precision"] == "bf16"
    assert "generator and discriminator in bf16" in (full / "log.txt").read_text()
    assert all(v.dtype == ref["model"][k].dtype for k, v in ck["model"].items())  # weights stay fp32
    floats = [k for k in ref["model"] if ref["model"][k].is_floating_point() and "running" not in k]
    assert any(not torch.equal(ck["model"][k], ref["model"][k]) for k in floats)  # bf16 rounding shows
    for k in floats:  # ... but 7 steps of Adam at lr 2e-4 move no weight far from the fp32 run's
        assert (ck["model"][k] - ref["model"][k]).abs().max() < 1e-2, k
    assert all(abs(a - b) < 0.1 * abs(b) + 1e-3 for a, b in zip(
        (r["g_style"] for r in _losses(full)), (r["g_style"] for r in _losses(reference_run))))

    part = tmp_path / "bf16-part"
    short = [a if a != str(STEPS) else "4" for a in TINY]
    assert main(["train-cgn", *short, *bf16, "--out", str(part)]) == 0
    assert main(["train-cgn", *TINY, *bf16, "--out", str(part), "--resume"]) == 0
    _assert_same(_states(part)["model"], ck["model"], "model")
    _assert_same(_states(part)["optim"], ck["optim"], "optim")
