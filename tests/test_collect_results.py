"""scripts/collect_results.py merges reproduce run directories: later runs win, SSIM rows merge."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "collect_results.py"


def _row(dataset, cgn, train_set, acc, command):
    return {"dataset": dataset, "cgn": cgn, "train_set": train_set,
            "n_counterfactuals": 0 if train_set == "real" else 100, "train_acc": 99.0,
            "test_acc": acc, "command": command}


def _run(path: Path, config: dict, table3: list[dict], table4: list[dict] | None = None) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"config": config}))
    (path / "table3.json").write_text(json.dumps(table3))
    if table4 is not None:
        (path / "table4.json").write_text(json.dumps(table4))
    return path


def test_collect_merges_rows_later_run_wins_and_ssim_tables(tmp_path):
    ssim_c = _run(tmp_path / "t4c", {"cgn": "trained", "ssim_weight": 1.0},
                  [_row("colored-mnist", "trained", "real+cf", 70.0, "cgn ssim-c")],
                  [_row("colored-mnist", "trained", "real+cf", 70.0, "cgn ssim-c"),
                   _row("colored-mnist", "trained+ssim", "real+cf", 75.5, "cgn ssim-c")])
    ssim_w = _run(tmp_path / "t4w", {"cgn": "trained", "ssim_weight": 1.0}, [],
                  [_row("wildlife-mnist", "trained", "real+cf", 30.0, "cgn ssim-w"),
                   _row("wildlife-mnist", "trained+ssim", "real+cf", 33.25, "cgn ssim-w")])
    main = _run(tmp_path / "main", {"cgn": "trained"},
                [_row("colored-mnist", None, "real", 42.0, "cgn main"),
                 _row("colored-mnist", "trained", "real+cf", 80.0, "cgn main")])
    out = tmp_path / "results"
    subprocess.run([sys.executable, str(SCRIPT), str(ssim_c), str(ssim_w), str(main), "--out", str(out)],
                   check=True, capture_output=True, text=True)

    rows = json.loads((out / "table3.json").read_text())
    assert [(r["train_set"], r["test_acc"], r["command"]) for r in rows] == [
        ("real", 42.0, "cgn main"), ("real+cf", 80.0, "cgn main")]  # the later run won
    md3 = (out / "table3.md").read_text()
    assert "`cgn main`" in md3 and "cgn ssim-c" not in md3

    t4 = json.loads((out / "table4.json").read_text())
    assert [(r["dataset"], r["cgn"], r["test_acc"]) for r in t4] == [
        ("colored-mnist", "trained", 70.0), ("colored-mnist", "trained+ssim", 75.5),
        ("wildlife-mnist", "trained", 30.0), ("wildlife-mnist", "trained+ssim", 33.25)]
    md4 = (out / "table4.md").read_text()
    assert "SSIM weight 1.0" in md4 and "**75.5**" in md4 and "**33.25**" in md4
    assert "61.12" in md4 and "`cgn ssim-w`" in md4  # the study's row and the commands


def test_collect_refuses_mixed_ssim_weights(tmp_path):
    a = _run(tmp_path / "a", {"cgn": "trained", "ssim_weight": 1.0}, [],
             [_row("colored-mnist", "trained+ssim", "real+cf", 70.0, "a")])
    b = _run(tmp_path / "b", {"cgn": "trained", "ssim_weight": 0.5}, [],
             [_row("wildlife-mnist", "trained+ssim", "real+cf", 30.0, "b")])
    proc = subprocess.run([sys.executable, str(SCRIPT), str(a), str(b), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True)
    assert proc.returncode != 0 and "different weights" in proc.stderr
