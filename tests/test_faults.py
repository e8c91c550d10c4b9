"""Stops at random moments, for every long command: a real process gets SIGTERM or SIGINT (or
SIGKILL) at a random point, is resumed with the same command plus ``--resume`` where the command
has one, and must end bit-identical to an uninterrupted run. (train-cgn has its own, finer cases
in test_mnist_cgn_train.py.) The random delays are seeded; a failure message names the delay."""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path

import pytest
import torch

from cgn.cli import main
from cgn.core.checkpoint import load_checkpoint
from cgn.core.lock import release_all
from conftest import require_mnist
from faults import stop_at_random

pytestmark = pytest.mark.slow


def _interrupt(args, ready, sig, seed, max_delay):
    """Interrupt ``cgn *args`` at a random moment after ``ready()``; sooner if it finished first
    (then its output folder is removed, so the next try starts from nothing again)."""
    out = Path(args[args.index("--out") + 1])
    for _ in range(4):
        rc, err, delay = stop_at_random(args, ready=ready, sig=sig, seed=seed, max_delay=max_delay)
        if rc != 0:
            return rc, err, delay
        shutil.rmtree(out)
        max_delay /= 4
    pytest.fail(f"the command finished before every signal: {args}")


def _stop_twice(args: list[str], resume: list[str], ready, sigs, seed: int, max_delay: float) -> str:
    """Stop ``cgn *args`` at a random moment (``sigs[0]``), then its resumed run at another one
    (``sigs[1]``, anywhere from start-up on), then let the resume finish in this process."""
    rc, err, delay = _interrupt(args, ready=ready, sig=sigs[0], seed=seed, max_delay=max_delay)
    where = f"{sigs[0].name} after {delay:.3f} s"
    assert rc == 130 and "cgn: interrupted" in err, f"{where}: {err[-300:]}"
    rc, err, delay = stop_at_random(resume, ready=lambda: True, sig=sigs[1], seed=seed + 1,
                                    max_delay=max_delay + 5.0)
    where += f", then {sigs[1].name} {delay:.3f} s into the resumed run (exit {rc})"
    # 130: stopped by cgn; 0: it finished first; -signal: it came during Python's start-up,
    # before cgn installed its handlers (nothing of the run had started)
    assert rc in (0, 130, -sigs[1]) or "KeyboardInterrupt" in err, f"{where}: {err[-300:]}"
    assert main(resume) == 0, where
    release_all()
    return where


def _result(run: Path) -> dict:
    for name in ("results.json", "result.json"):
        if (run / name).exists():
            return json.loads((run / name).read_text())
    raise AssertionError(f"no result file in {run}")


def _same_tensors(a: dict, b: dict, where: str) -> None:
    assert set(a) == set(b), where
    for k in a:
        assert torch.equal(a[k], b[k]), f"{where}: {k}"


def _metric_rows(run: Path, drop=("sec_per_step", "seconds")) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line]
    return [{k: v for k, v in r.items() if k not in drop} for r in rows]


@pytest.mark.parametrize("how,seed", [("sigterm", 11), ("ctrl-c", 12)])
def test_generate_resumes_bit_identically(tiny_cgn_file, tmp_path, how, seed):
    args = ["generate", "--checkpoint", str(tiny_cgn_file), "--n", "3000", "--shard-size", "750"]
    assert main([*args, "--out", str(tmp_path / "ref")]) == 0
    out = tmp_path / "cut"
    first = {"sigterm": signal.SIGTERM, "ctrl-c": signal.SIGINT}[how]
    second = signal.SIGINT if first == signal.SIGTERM else signal.SIGTERM
    where = _stop_twice([*args, "--out", str(out)], [*args, "--out", str(out)],  # the same command resumes
                        ready=lambda: (out / "shard-00000.sha256.json").exists(), sigs=(first, second),
                        seed=seed, max_delay=1.0)
    ref = sorted(p.name for p in (tmp_path / "ref").glob("shard-*"))
    assert ref == sorted(p.name for p in out.glob("shard-*"))
    for name in ref:
        assert (tmp_path / "ref" / name).read_bytes() == (out / name).read_bytes(), f"{name}: {where}"
    assert not list(out.glob(".*.tmp"))


def test_train_classifier_resumes_bit_identically(tmp_path):
    require_mnist()
    args = ["train-classifier", "--dataset", "double-colored-mnist", "--train-set", "real",
            "--limit-real", "768", "--epochs", "2", "--threads", "1"]
    assert main([*args, "--out", str(tmp_path / "ref")]) == 0
    out = tmp_path / "cut"
    where = _stop_twice([*args, "--out", str(out)], [*args, "--out", str(out), "--resume"],
                        ready=lambda: (out / "log.txt").exists() and "training" in (out / "log.txt").read_text(),
                        sigs=(signal.SIGTERM, signal.SIGINT), seed=21, max_delay=1.5)
    a = load_checkpoint(tmp_path / "ref" / "checkpoints" / "last.pt")
    b = load_checkpoint(out / "checkpoints" / "last.pt")
    _same_tensors(a["model"], b["model"], where)
    assert a["step"] == b["step"]
    ra, rb = _result(tmp_path / "ref"), _result(out)
    assert (ra["train_acc"], ra["test_acc"]) == (rb["train_acc"], rb["test_acc"])
    assert _metric_rows(tmp_path / "ref") == _metric_rows(out)


def test_imagenet_train_resumes_bit_identically(tmp_path):
    sets = ["--set", "model.tiny_resolution=8", "--set", "loss.text_work_size=8", "--set", "loss.text_top=10"]
    args = ["imagenet", "train", "--preset", "tiny", "--episodes", "6", "--batch-acc", "2", "--quiet", *sets]
    assert main([*args, "--out", str(tmp_path / "ref")]) == 0
    out = tmp_path / "cut"
    where = _stop_twice([*args, "--out", str(out)], [*args, "--out", str(out), "--resume"],
                        ready=lambda: (out / "metrics.jsonl").exists(),
                        sigs=(signal.SIGINT, signal.SIGTERM), seed=31, max_delay=1.0)
    a = load_checkpoint(tmp_path / "ref" / "checkpoints" / "last.pt", kind="imagenet-cgn")
    b = load_checkpoint(out / "checkpoints" / "last.pt", kind="imagenet-cgn")
    assert a["step"] == b["step"] == 6, where
    _same_tensors(a["model"], b["model"], where)
    assert _metric_rows(tmp_path / "ref") == _metric_rows(out)


def test_reproduce_resumes_bit_identically(shared_data, tmp_path):
    """With the authors' CGN (no CGN training: the stop lands in generation or a classifier)."""
    require_mnist()
    ref_dir = shared_data / "cgn_reference" / "checkpoints"
    args = ["reproduce", "mnist", "--dataset", "double-colored-mnist", "--cgn", "reference", str(ref_dir),
            "--train-set", "real", "--train-set", "real+cf", "--size", "600", "--cf-ratio", "5",
            "--epochs", "1", "--limit-real", "512", "--threads", "1"]
    assert main([*args, "--out", str(tmp_path / "ref")]) == 0
    out = tmp_path / "cut"
    where = _stop_twice([*args, "--out", str(out)], [*args, "--out", str(out)],  # the same command resumes
                        ready=lambda: (out / "log.txt").exists(),
                        sigs=(signal.SIGTERM, signal.SIGINT), seed=41, max_delay=3.0)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "command"} for r in rows]  # noqa: E731
    ta = json.loads((tmp_path / "ref" / "table3.json").read_text())
    tb = json.loads((out / "table3.json").read_text())
    assert strip(ta) == strip(tb) and len(ta) == 2, where
    for clf in sorted((tmp_path / "ref").rglob("clf-*/checkpoints/last.pt")):
        mine = out / clf.relative_to(tmp_path / "ref")
        _same_tensors(load_checkpoint(clf)["model"], load_checkpoint(mine)["model"], str(mine))
