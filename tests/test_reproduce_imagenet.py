"""`cgn reproduce imagenet --quick` through the real CLI: every stage tiny (world, stand-ins cached
under $CGN_HOME, GAN and U2-Net checks, CGN and its ablation, counterfactuals, both classifiers,
LIME), summary.json in the issue's schema, the tables and figures; the rerun resumes without
training anything; bad input is one line."""

from __future__ import annotations

import importlib.util
import json
import shlex

import pytest
from PIL import Image

from cgn.cli import main
from conftest import require_hed, require_mnist

SCHEMA = {
    "gan": ["class_accuracy", "inception_score", "real_inception_score"],
    "u2net": ["iou"],
    "cgn": ["mu_mask", "world_mu_mask", "shape_accuracy", "texture_accuracy", "background_accuracy",
            "background_saliency"],
    "classifier": {"baseline": ["top1", "shape_bias", "bg_gap"],
                   "cgn": ["top1", "shape_bias_shape_head", "shape_bias_texture_head",
                           "shape_bias_background_head", "shape_bias", "bg_gap"]},
}
STAGES = ["gan", "u2net", "cgn_full", "eval_full", "eval_full_at_ablation", "cf_set", "classifier_cgn",
          *[f"{k}_no_{a}" for a in ("shape", "text", "bg", "rec") for k in ("cgn", "eval")],
          "classifier_baseline", "lime"]


pytestmark = pytest.mark.usefixtures("one_thread_no_onednn")


def _fraction(x, lo: float = 0.0) -> bool:
    return isinstance(x, float) and lo <= x <= 1.0


def _check_summary(s: dict, argv: list[str]) -> None:
    assert set(s) == {"gan", "u2net", "cgn", "ablation", "classifier", "wall_time_s", "pretrain_time_s",
                      "machine", "command", "claims"}
    for section in ("gan", "u2net", "cgn"):
        assert list(s[section]) == SCHEMA[section]
    for who, keys in SCHEMA["classifier"].items():
        assert list(s["classifier"][who]) == keys
    g = s["gan"]
    assert _fraction(g["class_accuracy"])
    assert all(1.0 <= g[k] <= 10.0 for k in ("inception_score", "real_inception_score"))  # 10 classes
    assert _fraction(s["u2net"]["iou"])
    assert all(_fraction(v) for v in s["cgn"].values())
    assert list(s["ablation"]) == ["no_shape", "no_text", "no_bg", "no_rec"]
    for a in s["ablation"].values():
        assert list(a) == ["inception_score", "mu_mask"]
        assert 1.0 <= a["inception_score"] <= 10.0 and _fraction(a["mu_mask"])
    for who in ("baseline", "cgn"):
        c = s["classifier"][who]
        assert _fraction(c["top1"]) and _fraction(c["bg_gap"], lo=-1.0)
        # shape bias is NaN (null) only when no decision hits the shape or the texture class
        assert all(c[k] is None or _fraction(c[k]) for k in c if k.startswith("shape_bias"))
    assert s["wall_time_s"] > 0 and s["pretrain_time_s"] > 0
    assert "cores" in s["machine"] and "ISA" in s["machine"]
    out = argv.index("--out")
    assert s["command"] == "cgn " + shlex.join([*argv[:out], "--out", "RUN", *argv[out + 2:]])
    assert len(s["claims"]) == 13 and all(set(c) == {"claim", "measured", "holds"} for c in s["claims"])
    assert all(c["holds"] in (True, False, None) for c in s["claims"])


def test_quick_run_writes_everything_then_resumes(tmp_path, monkeypatch, capsys):
    require_mnist()
    require_hed()  # the world CGN preset's style features
    monkeypatch.setenv("CGN_HOME", str(tmp_path / "home"))
    run, results = tmp_path / "run", tmp_path / "results"
    argv = ["reproduce", "imagenet", "--quick", "--threads", "1", "--results", str(results), "--out", str(run)]
    assert main(argv) == 0
    summary = json.loads((run / "summary.json").read_text())
    _check_summary(summary, argv)
    claims = capsys.readouterr().out
    assert "| claim | measured | holds? |" in claims and "A --quick run" in claims

    table2 = (run / "table2_world.md").read_text()
    assert "130.2 / 0.3" in table2 and "156.1 / 0.3" in table2 and "not ImageNet's" in table2
    assert table2.count("| without L_") == 4 and "| CGN, all losses | 1 |" in table2  # the full CGN at 1 episode
    assert (run / "cgn" / "full" / "checkpoints" / "ep0000001.pt").is_file()   # train.keep_every
    assert not (run / "samples").exists() and not (run / "checkpoints").exists()  # its runs hold them
    assert "54.8" in (run / "shape_bias_world.md").read_text()
    assert "| paper (ImageNet) | IN + CGN | 94.2 | 83.4 | 80.1 | 3.3 |" in (run / "in9_world.md").read_text()
    assert "74.0" in (run / "top1_world.md").read_text()
    sheet = Image.open(run / "figures" / "cgn_sheet.png")
    assert sheet.size == (6 * 34 + 2, 10 * 34 + 2)   # mask, pre-mask, foreground, background, x_gen, x_gt per class
    figures = ["cgn_sheet.png", "counterfactual_grid.png", "biggan_samples.png"]
    if importlib.util.find_spec("lime") is not None:  # an optional extra: else the stage says so
        figures.append("lime_test0.png")
    for name in figures:
        assert (run / "figures" / name).is_file() and (results / "figures" / name).is_file()
    assert json.loads((results / "summary.json").read_text()) == summary
    assert len(list((tmp_path / "home" / "stand-ins").glob("*/*"))) == 3   # cached like a download

    # the rerun trains nothing: every stage is skipped, files and numbers stay as they were
    kept = [run / "cgn" / "full" / "checkpoints" / "last.pt", run / "classifier" / "cgn" / "checkpoints" / "last.pt",
            run / "cf" / "train" / "labels.csv", *sorted((run / "stages").glob("*.json"))]
    before = {p: p.stat().st_mtime_ns for p in kept}
    lines = len((run / "log.txt").read_text().splitlines())
    assert main(argv) == 0
    log = (run / "log.txt").read_text().splitlines()[lines:]
    assert not [ln for ln in log if "training" in ln or "running" in ln or "building" in ln]
    for name in STAGES:
        assert any(ln.endswith(f"{name}: done before, skipped") for ln in log), name
    assert sum("cached" in ln for ln in log) == 3
    assert {p: p.stat().st_mtime_ns for p in kept} == before
    again = json.loads((run / "summary.json").read_text())
    timed = ("wall_time_s", "claims")  # the rerun adds its own few seconds
    assert {k: v for k, v in again.items() if k not in timed} == {k: v for k, v in summary.items() if k not in timed}
    assert again["claims"][:-1] == summary["claims"][:-1] and again["wall_time_s"] >= summary["wall_time_s"]
    # a setting that changes what is computed is refused on resume, in one line
    capsys.readouterr()
    assert main([*argv[:-2], "--eval-samples", "30", "--out", str(run)]) == 2
    err = capsys.readouterr().err
    assert "eval_samples" in err and err.count("\n") == 1


def test_bad_inputs_are_one_line(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["reproduce", "imagenet", "--world", "imagenet-1k", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "unknown world 'imagenet-1k'" in err and err.count("\n") == 1
    assert main(["reproduce", "imagenet", "--quick", "--u2net", str(tmp_path / "u2netp.pth"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--u2net" in err and "does not exist" in err and err.count("\n") == 1
    with pytest.raises(SystemExit) as e:   # argparse's one line
        main(["reproduce", "imagenet", "--ablations", "shape,colour", "--out", str(out)])
    assert e.value.code == 2 and "'colour' is not one of" in capsys.readouterr().err
    assert not out.exists()   # nothing written before the error


def test_claims_table_points_to_the_evidence_only_for_failed_claims_of_a_real_run():
    from cgn.imagenet.reproduce_tables import claims_md
    rows = [{"claim": "a", "measured": "1", "holds": True}, {"claim": "b", "measured": "2", "holds": None}]
    assert "docs/world.md" not in claims_md(rows, quick=False)
    failed = rows + [{"claim": "c", "measured": "0.1", "holds": False}]
    text = claims_md(failed, quick=False)
    assert "| c | 0.1 | no |" in text and "| b | 2 | not measured |" in text and "docs/world.md" in text
    assert "docs/world.md" not in claims_md(failed, quick=True)  # a --quick run's numbers mean nothing
