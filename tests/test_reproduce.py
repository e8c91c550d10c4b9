"""`cgn reproduce mnist` end to end through the real CLI on a tiny setting, then resumed."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from cgn.cli import main
from conftest import require_mnist

ROW_KEYS = {"dataset", "cgn", "train_set", "n_counterfactuals", "train_acc", "test_acc", "command"}


def _argv(out, *extra):
    return ["reproduce", "mnist", "--dataset", "double-colored-mnist", "--size", "60", "--cf-ratio", "5",
            "--epochs", "1", "--limit-real", "256", "--threads", "1", "--out", str(out), *extra]


@pytest.mark.slow
def test_reproduce_trained_end_to_end_and_resume(tmp_path, capsys):
    require_mnist()
    out = tmp_path / "rep"
    argv = _argv(out, "--cgn", "trained", "--cgn-steps", "3", "--ablation-sizes", "30",
                 "--ssim-weight", "1.0")
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "Original + CGN" in printed and "paper" in printed

    rows = json.loads((out / "table3.json").read_text())
    assert {(r["train_set"], r["cgn"]) for r in rows} == {
        ("real", None), ("real+gan", "trained"), ("real+cf", "trained"), ("cf", "trained")}
    for r in rows:
        assert set(r) == ROW_KEYS and r["dataset"] == "double-colored-mnist"
        assert 0 <= r["train_acc"] <= 100 and 0 <= r["test_acc"] <= 100
        assert r["command"].startswith("cgn reproduce mnist")
        assert r["n_counterfactuals"] == (0 if r["train_set"] == "real" else 60)
    md = (out / "table3.md").read_text()
    assert "97.4 / 89 " in md and "**" in md  # published rows beside ours
    for png in ("samples_double-colored-mnist.png", "mask_timeline_double-colored-mnist.png",
                "ablation_n_counterfactuals.png"):
        assert Image.open(out / png).size[0] > 50
    abl = json.loads((out / "ablation_n_counterfactuals.json").read_text())
    assert [r["n_counterfactuals"] for r in abl] == [30]
    t4 = json.loads((out / "table4.json").read_text())
    assert {r["cgn"] for r in t4} == {"trained", "trained+ssim"}
    assert "86.19" in (out / "table4.md").read_text()
    log = (out / "log.txt").read_text()
    assert "training a CGN (trained)" in log and "training a CGN (trained+ssim)" in log
    cfg = json.loads((out / "config.json").read_text())["config"]
    assert cfg["cgn"] == "trained" and cfg["n_counterfactuals"] == 60

    # Rerunning the same command resumes: nothing is trained or generated again.
    before = (out / "log.txt").read_text()
    assert main(argv) == 0
    after = (out / "log.txt").read_text()[len(before):]
    assert "training a CGN" not in after and "generated" not in after and "classifier" not in after
    assert json.loads((out / "table3.json").read_text()) == rows

    # A finished CGN run can be reused instead of training a new one.
    reuse = tmp_path / "reuse"
    cgn_run = out / "double-colored-mnist" / "trained" / "cgn"
    assert main(_argv(reuse, "--cgn", "trained", "--train-set", "real+cf",
                      "--cgn-run", f"double-colored-mnist={cgn_run}")) == 0
    assert "using the CGN of" in (reuse / "log.txt").read_text()
    assert not (reuse / "double-colored-mnist" / "trained" / "cgn").exists()
    capsys.readouterr()

    # Other settings into the same run directory are refused with a one-line error.
    assert main(_argv(out, "--cgn", "trained", "--cgn-steps", "4")) == 2
    assert "other settings" in capsys.readouterr().err


def test_reproduce_reference_real_plus_cf(shared_data, tmp_path, capsys):
    require_mnist()
    out = tmp_path / "ref"
    ref = shared_data / "cgn_reference" / "checkpoints"
    assert main(_argv(out, "--cgn", "reference", str(ref), "--train-set", "real+cf")) == 0
    rows = json.loads((out / "table3.json").read_text())
    assert [(r["train_set"], r["cgn"]) for r in rows] == [("real+cf", "reference")]
    gen = json.loads((out / "double-colored-mnist" / "reference" / "cf-60" / "manifest.json").read_text())
    assert gen["generator"]["format"] == "reference"
    capsys.readouterr()
    assert main(_argv(tmp_path / "bad", "--cgn", "reference")) == 2
    assert "reference DIR" in capsys.readouterr().err
    assert main(_argv(tmp_path / "bad2", "--cgn", "reference", str(tmp_path))) == 2
    assert "double_colored_mnist.pth" in capsys.readouterr().err and not (tmp_path / "bad2").exists()
