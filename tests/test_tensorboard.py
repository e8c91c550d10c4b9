"""TensorBoard logs of the CGN trainers (tiny runs through the real entry points): the event
files hold every number of metrics.jsonl at its step and the sample grids; a resume from an
earlier checkpoint leaves one value per step; without the tensorboard package training runs on
and says once how to get the logs."""

from __future__ import annotations

import json
import shutil
import sys

import pytest
import torch

from cgn.cli import main
from cgn.config import override
from cgn.core.tensorboard import OFF_MESSAGE
from cgn.imagenet.train import train as train_imagenet
from cgn.presets import preset

from conftest import require_mnist

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

TINY = ["--preset", "double-colored-mnist", "--limit-train", "24", "--batch-size", "8",
        "--feature-extractor", "random", "--set", "train.log_every=1", "--set", "train.sample_every=2",
        "--set", "train.timeline_every=2", "--set", "train.checkpoint_every=2",
        "--set", "train.eval_samples=10", "--set", "train.shape_judge=false", "--set", "model.ndf=16",
        "--threads", "1"]


def _events(run):
    ea = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0, "images": 0})
    ea.Reload()
    scalars = {tag: [(e.step, e.value) for e in ea.Scalars(tag)] for tag in ea.Tags()["scalars"]}
    images = {tag: [(e.step, e.width, e.height) for e in ea.Images(tag)] for tag in ea.Tags()["images"]}
    return scalars, images


def _metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _assert_scalars_are_the_metrics(scalars, rows):
    """One TensorBoard point per metrics line and number, at its step, with its value (float32)."""
    expected: dict[str, list] = {}
    for r in rows:
        for k, v in r.items():
            if k != "step" and isinstance(v, (int, float)):
                expected.setdefault(k, []).append((r["step"], v))
    assert set(scalars) == set(expected)
    for tag, points in expected.items():
        assert [s for s, _ in scalars[tag]] == [s for s, _ in points], tag
        assert [v for _, v in scalars[tag]] == pytest.approx([v for _, v in points], rel=1e-6), tag


@pytest.fixture(scope="module")
def resumed(tmp_path_factory):
    """A 2-step run; continued to 4 steps; then continued again from its step-2 checkpoint
    (as after a crash that lost the later checkpoints): the last session repeats steps 3-4."""
    require_mnist()
    run = tmp_path_factory.mktemp("tb") / "run"
    assert main(["train-cgn", *TINY, "--steps", "2", "--out", str(run)]) == 0
    first = _events(run), _metrics(run)
    saved = run.parent / "step2.pt"
    shutil.copyfile(run / "checkpoints" / "last.pt", saved)
    assert main(["train-cgn", *TINY, "--steps", "4", "--resume", "--out", str(run)]) == 0
    shutil.copyfile(saved, run / "checkpoints" / "last.pt")
    assert main(["train-cgn", *TINY, "--steps", "4", "--resume", "--out", str(run)]) == 0
    return run, first


def test_train_cgn_writes_the_metrics_and_grids_to_tensorboard(resumed):
    _, ((scalars, images), rows) = resumed
    assert [r["step"] for r in rows] == [1, 2]
    assert {"g_adv", "g_style", "d_loss", "mask_mean", "epoch", "sec_per_step"} <= set(scalars)
    _assert_scalars_are_the_metrics(scalars, rows)
    # the grids of samples/step_000000.png and step_000002.png (the final grid is not repeated)
    assert [s for s, _, _ in images["samples"]] == [0, 2]
    assert all(w > 100 and h > 100 for _, w, h in images["samples"])


def test_a_resume_from_an_earlier_checkpoint_leaves_one_value_per_step(resumed):
    run, _ = resumed
    rows = _metrics(run)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    scalars, images = _events(run)
    _assert_scalars_are_the_metrics(scalars, rows)  # steps 3 and 4 once each, the last session's
    assert [s for s, _, _ in images["samples"]] == [0, 2, 4]
    assert len(list((run / "tb").glob("events.out.tfevents.*"))) == 3  # one file per session


def _tiny_imagenet(**sets):
    base = {"model.tiny_resolution": 8, "loss.text_work_size": 8, "loss.text_patch": 3,
            "loss.text_top": 10, "loss.text_grid": 3, "train.episodes": 2, "train.batch_acc": 1}
    return override(preset("tiny"), {**base, **sets})


@pytest.fixture
def _single_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_imagenet_train_writes_the_metrics_and_sheets_to_tensorboard(tmp_path, _single_thread):
    run = tmp_path / "run"
    train_imagenet(_tiny_imagenet(), run, quiet=True)
    scalars, images = _events(run)
    rows = _metrics(run)
    assert [r["step"] for r in rows] == [1, 2] and "loss/total" in scalars
    _assert_scalars_are_the_metrics(scalars, rows)
    assert [s for s, _, _ in images["samples"]] == [1, 2]  # samples/sheet_ep000000{1,2}.png


def test_without_tensorboard_training_runs_and_says_so_once(tmp_path, monkeypatch, _single_thread, capsys):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # `import` now fails
    run = tmp_path / "run"
    train_imagenet(_tiny_imagenet(), run)
    assert len(_metrics(run)) == 2 and (run / "samples" / "sheet_ep0000002.png").is_file()
    assert not (run / "tb").exists()
    assert (run / "log.txt").read_text().count(OFF_MESSAGE) == 1
    err = capsys.readouterr().err
    assert "pip install tensorboard" in err and "Traceback" not in err
