"""`cgn reproduce mnist` end to end through the real CLI on a tiny setting, then resumed."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from cgn.cli import main
from conftest import require_hed, require_mnist

ROW_KEYS = {"dataset", "cgn", "train_set", "n_counterfactuals", "train_acc", "test_acc", "command"}


def _argv(out, *extra, datasets=("double-colored-mnist",)):
    return ["reproduce", "mnist", *(a for d in datasets for a in ("--dataset", d)), "--size", "60",
            "--cf-ratio", "5", "--epochs", "1", "--limit-real", "256", "--limit-test", "500", "--threads", "1",
            "--out", str(out),
            *extra]


@pytest.mark.slow
def test_reproduce_trained_end_to_end_and_resume(tmp_path, capsys):
    require_mnist()
    require_hed()
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
                "ablation_n_counterfactuals.png", "ood_accuracy_per_epoch.png"):
        assert Image.open(out / png).size[0] > 50
    # per-epoch OOD accuracy: one curve per table row, from the classifier's eval lines (1 epoch)
    curves = json.loads((out / "ood_accuracy_per_epoch.json").read_text())
    assert [(c["train_set"], c["cgn"]) for c in curves] == [(r["train_set"], r["cgn"]) for r in rows]
    for c, r in zip(curves, rows):
        assert c["epochs"] == [1] and round(c["test_acc"][-1], 2) == r["test_acc"]
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


def test_reproduce_jobs_validated_and_not_part_of_the_run_identity(tmp_path):
    from cgn.config import from_dict
    from cgn.errors import CGNError
    from cgn.mnist.reproduce import ReproduceConfig, Reproduction, quick_config
    with pytest.raises(CGNError, match="jobs must be >= 1"):
        from_dict(ReproduceConfig, {"jobs": 0})
    out = tmp_path / "rep"
    Reproduction(quick_config(), out, "cgn reproduce mnist --quick")
    # Execution-only settings may change on resume, and runs stored before --jobs existed resume too.
    Reproduction(quick_config(jobs=3, threads=2), out, "cgn reproduce mnist --quick --jobs 3")
    record = json.loads((out / "config.json").read_text())
    del record["config"]["jobs"]
    (out / "config.json").write_text(json.dumps(record))
    Reproduction(quick_config(jobs=2), out, "cgn reproduce mnist --quick --jobs 2")
    with pytest.raises(CGNError, match="other settings"):
        Reproduction(quick_config(epochs=3), out, "cgn reproduce mnist --quick --epochs 3")
    # Ablation sizes may be added to a run (each size has its own outputs); the run records them.
    Reproduction(quick_config(ablation_sizes=[1000, 20000]), out, "cgn reproduce mnist --quick --ablation-sizes 1e3,2e4")
    assert json.loads((out / "config.json").read_text())["config"]["ablation_sizes"] == [1000, 20000]
    assert "ablation_sizes [] -> [1000, 20000]" in (out / "log.txt").read_text()


@pytest.mark.slow
def test_reproduce_jobs_parallel_equals_serial_and_resumes(tmp_path, capsys):
    """Two datasets in two worker processes: the same rows as one after the other, every worker's
    log lines in the run's log.txt, a rerun with other --jobs/--threads resumes, and a failing
    dataset leaves the other's row written."""
    require_mnist()
    require_hed()
    datasets = ("colored-mnist", "double-colored-mnist")
    opts = ("--cgn", "trained", "--cgn-steps", "2", "--train-set", "real+cf")
    serial, parallel = tmp_path / "serial", tmp_path / "parallel"
    assert main(_argv(serial, *opts, "--jobs", "1", datasets=datasets)) == 0
    assert main(_argv(parallel, *opts, "--jobs", "2", datasets=datasets)) == 0
    capsys.readouterr()

    def rows(out):
        return [{k: v for k, v in r.items() if k != "command"}
                for r in json.loads((out / "table3.json").read_text())]
    assert [r["dataset"] for r in rows(parallel)] == list(datasets)
    assert rows(parallel) == rows(serial)
    log = (parallel / "log.txt").read_text()
    assert "in 2 worker processes, 1 torch thread(s) each" in log
    for d in datasets:
        assert f"[{d}] training a CGN (trained)" in log and f"[{d}] classifier real+cf" in log
        assert (parallel / f"samples_{d}.png").is_file()

    # Another --jobs and --threads resume the same run directory: nothing runs again.
    before = log
    results = {p: p.read_bytes() for p in parallel.rglob("result*.json")}
    assert main(_argv(parallel, *opts, "--jobs", "1", "--threads", "2", datasets=datasets)) == 0
    after = (parallel / "log.txt").read_text()[len(before):]
    assert "training a CGN" not in after and "generated" not in after and "classifier" not in after
    assert {p: p.read_bytes() for p in parallel.rglob("result*.json")} == results
    assert rows(parallel) == rows(serial)

    # One dataset fails in its worker (a CGN run of the wrong dataset): the one-line error, and the
    # other dataset (given the serial run's CGN) still gets its row, equal to the serial one.
    cgn_run = serial / "double-colored-mnist" / "trained" / "cgn"
    fail = tmp_path / "fail"
    capsys.readouterr()
    assert main(_argv(fail, *opts, "--jobs", "2", "--cgn-run", f"colored-mnist={cgn_run}",
                      "--cgn-run", f"double-colored-mnist={cgn_run}", datasets=datasets)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"cgn: error: --cgn-run colored-mnist={cgn_run} holds a double-colored-mnist CGN"
    assert rows(fail) == rows(serial)[1:]
    assert "[colored-mnist] failed: --cgn-run" in (fail / "log.txt").read_text()


def test_quick_takes_the_shipped_cgn_and_train_cgn_trains_one(tmp_path, capsys):
    """The README's main job uses the shipped colored CGN; --train-cgn trains one instead (with
    --quick for QUICK_CGN_STEPS steps unless --cgn-steps says otherwise)."""
    from cgn.cli import build_parser
    from cgn.commands.reproduce import resolve_config
    from cgn.mnist.pretrained import shipped_path
    from cgn.mnist.reproduce import QUICK_CGN_STEPS
    p = build_parser()
    quick = resolve_config(p.parse_args(["reproduce", "mnist", "--quick", "--out", "x"]))
    assert quick.cgn == "pretrained" and quick.datasets == ["colored-mnist"]
    shipped_path("colored-mnist")  # the file it takes is in the package, its digest verified
    trained = resolve_config(p.parse_args(["reproduce", "mnist", "--quick", "--train-cgn", "--out", "x"]))
    assert trained.cgn == "trained" and trained.cgn_steps == QUICK_CGN_STEPS
    assert trained.n_counterfactuals == quick.n_counterfactuals and trained.epochs == quick.epochs
    longer = resolve_config(p.parse_args(["reproduce", "mnist", "--quick", "--train-cgn", "--cgn-steps", "9",
                                          "--out", "x"]))
    assert longer.cgn_steps == 9
    plain = resolve_config(p.parse_args(["reproduce", "mnist", "--train-cgn", "--out", "x"]))
    assert plain.cgn == "trained" and plain.cgn_steps is None  # the recipe's steps
    assert main(["reproduce", "mnist", "--train-cgn", "--cgn", "pretrained", "--out", str(tmp_path / "r")]) == 2
    assert "--train-cgn trains the CGNs; drop --cgn pretrained" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_a_wildlife_cgn_run_is_evaluated_only_on_its_own_textures(tmp_path, capsys):
    """--cgn-run wildlife-mnist=RUN of a CGN trained on a texture folder: the reproduction must
    build Wildlife MNIST from the same folder (else the CGN's counterfactuals and the real and
    OOD images would show different textures); refused in one line before any work."""
    require_mnist()
    require_hed()
    from PIL import Image as PILImage
    for name, red in (("tex", 25), ("other", 20)):
        for part in ("object", "background"):
            (tmp_path / name / part).mkdir(parents=True)
            for c in range(10):
                PILImage.new("RGB", (8, 8), (red * c, 40, 0)).save(tmp_path / name / part / f"{c}_a.png")
    run = tmp_path / "cgn"
    assert main(["train-cgn", "--preset", "wildlife-mnist", "--steps", "2", "--batch-size", "4",
                 "--limit-train", "16", "--threads", "1", "--textures", str(tmp_path / "tex"),
                 "--out", str(run)]) == 0
    assert json.loads((run / "results.json").read_text())["data"]["texture_set"].startswith("folder:tex:")
    capsys.readouterr()
    for extra, msg in (([], "was trained with the texture folder 'tex'; pass the same folder with --textures DIR"),
                       (["--textures", str(tmp_path / "other")], "--textures gives the texture set folder:other:")):
        out = tmp_path / f"rep{len(extra)}"
        assert main(_argv(out, "--cgn", "trained", "--train-set", "real+cf", *extra,
                          "--cgn-run", f"wildlife-mnist={run}", datasets=("wildlife-mnist",))) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert msg in err[-1] and f"--cgn-run wildlife-mnist={run}" in err[-1], err
        assert not out.exists()  # refused before anything was written
    # The folder it was trained on is accepted (the run itself is test_reproduce_trained_...'s).
    from cgn.mnist.reproduce import ReproduceConfig, Reproduction
    cfg = ReproduceConfig(datasets=["wildlife-mnist"], textures=str(tmp_path / "tex"),
                          cgn_runs={"wildlife-mnist": str(run)})
    Reproduction(cfg, tmp_path / "ok", "cgn reproduce mnist")
    assert (tmp_path / "ok" / "config.json").exists()
