"""The world's judges (cgn imagenet pretrain judges): exact training material, learning above
chance on a tiny world, resume, the judge file, the world classifier as the IS network of
`cgn imagenet metrics`, and one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cgn.cli import main
from cgn.errors import CGNError
from cgn.imagenet.world import WorldSpec, build_world
from cgn.imagenet.world_data import load_split_arrays
from conftest import require_mnist

JUDGES = ("world_classifier", "shape_judge", "texture_judge", "background_judge")
TINY = ["--preset", "judges-tiny", "--width", "8", "--epochs", "2", "--epoch-images", "512",
        "--lr", "0.003", "--threads", "1"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    require_mnist()
    out = tmp_path_factory.mktemp("judges_world")
    build_world(WorldSpec(n_train=1000, n_test=200), out)
    return out


@pytest.fixture(scope="module")
def run(world, tmp_path_factory):
    out = tmp_path_factory.mktemp("judges_run") / "run"
    assert main(["imagenet", "pretrain", "judges", "--world", str(world), "--out", str(out), *TINY]) == 0
    return out


def test_training_material_is_the_worlds_factors(world):
    from cgn.imagenet.world_judges_data import judge_set
    d = load_split_arrays(world, "test")[0]
    obj, bg = d["masks"] == 255, d["masks"] == 0
    tex, back = judge_set(world, "test", "texture_judge"), judge_set(world, "test", "background_judge")
    hwc = lambda s: s.x.permute(0, 2, 3, 1).numpy()  # noqa: E731
    # the texture image is what the digit's alpha shows, the background what lies around it
    assert np.array_equal(hwc(tex)[obj], d["images"][obj]) and np.array_equal(tex.y.numpy(), d["fg_class"])
    assert np.array_equal(hwc(back)[bg], d["images"][bg]) and np.array_equal(back.y.numpy(), d["bg_class"])
    assert not np.array_equal(hwc(tex)[bg], d["images"][bg])          # full-frame: no digit in it
    shape = judge_set(world, "test", "shape_judge")
    assert shape.x.shape == (200, 1, 32, 32) and np.array_equal(shape.x[:, 0].numpy(), d["masks"])
    x, y = shape.__getitems__([0, 1])
    assert x.min() >= 0 and x.max() == 1 and torch.equal(y, torch.from_numpy(d["labels"][:2]))
    x, _ = tex.__getitems__([0])
    assert x.min() >= -1 and x.max() <= 1
    # renders from another texture set are refused: they would not paint the world's images
    from cgn.imagenet.world_judges_data import check_wildlife_renders
    fg, bg = hwc(tex), hwc(back)
    check_wildlife_renders(d, fg, bg, "test")
    with pytest.raises(CGNError, match="not their textures painted again"):
        check_wildlife_renders(d, np.roll(fg, 1, axis=0), bg, "test")


def test_npz_world_material_by_inpainting_and_tiling(tmp_path):
    from cgn.imagenet.world_judges_data import judge_set
    rng = np.random.default_rng(0)
    obj_col, bg_col = rng.integers(0, 256, (4, 3)), rng.integers(0, 256, (4, 3))
    for name, n in (("train", 24), ("test", 16)):
        y = np.arange(n) % 4
        masks = np.zeros((n, 16, 16), np.uint8)
        masks[:, 4:11, 5:12] = 255
        images = np.where(masks[..., None] == 255, obj_col[y][:, None, None], bg_col[y][:, None, None])
        np.savez(tmp_path / f"{name}.npz", images=images.astype(np.uint8), labels=y, masks=masks)
    build_world(WorldSpec(world=str(tmp_path / "train.npz"), test=str(tmp_path / "test.npz")), tmp_path / "w")
    for judge, col, key in (("texture_judge", obj_col, "fg_class"), ("background_judge", bg_col, "bg_class")):
        s = judge_set(tmp_path / "w", "decorrelated", judge)
        d = load_split_arrays(tmp_path / "w", "decorrelated")[0]
        # each decorrelated image's texture / background source is of its fg / bg class
        assert np.array_equal(s.y.numpy(), d[key])
        want = np.broadcast_to(col[d[key]][:, :, None, None], s.x.shape)
        assert np.array_equal(s.x.numpy(), want), judge


def test_judges_learn_above_chance_and_resume(run, world, capsys):
    from cgn.imagenet.world_judges import load_judge
    res = json.loads((run / "results.json").read_text())
    for j in JUDGES:
        acc = res["accuracy"][j]
        assert 0.3 < acc <= 1.0, (j, acc)                            # chance: 0.1
        m = load_judge(run / f"{j}.pt", j)
        assert m.size == 32 and m.num_classes == 10 and m.info["accuracy"] == acc
        assert (run / f"{j}.pt").stat().st_size < 200_000
        assert res["judges"][j]["epochs"] == 2 and res["judges"][j]["n"] == 200
    assert load_judge(run / "shape_judge.pt").arch["in_channels"] == 1
    cues = res["judges"]["world_classifier"]["cue_conflict"]  # the three classes differ
    assert set(cues) == {"shape", "texture", "background"} and sum(cues.values()) <= 1 + 1e-9
    with pytest.raises(CGNError, match="holds the shape_judge, not the world_classifier"):
        load_judge(run / "shape_judge.pt", "world_classifier")
    with pytest.raises(CGNError, match="not a world judge file"):
        load_judge(run / "world_classifier" / "checkpoints" / "last.pt")
    # a rerun needs --resume; --resume with one more epoch continues every judge's run
    assert main(["imagenet", "pretrain", "judges", "--world", str(world), "--out", str(run), *TINY]) == 2
    assert "already holds a judges run; pass --resume" in capsys.readouterr().err
    assert main(["imagenet", "pretrain", "judges", "--world", str(world), "--out", str(run),
                 "--resume", "--epochs", "3"]) == 0
    res3 = json.loads((run / "results.json").read_text())
    assert all(res3["judges"][j]["epochs"] == 3 for j in JUDGES)
    assert all(res3["judges"][j]["steps"] == res["judges"][j]["steps"] * 3 // 2 for j in JUDGES)
    assert main(["imagenet", "pretrain", "judges", "--out", str(run), "--resume", "--width", "4"]) == 2
    assert "a resume may not change" in capsys.readouterr().err


def test_resume_refuses_a_changed_setting_and_takes_a_free_one(run, tmp_path, capsys):
    """--resume starts from the run's stored config: a setting the judges were trained with is
    refused with one line before anything runs; how the run executes may change."""
    import shutil
    out = tmp_path / "run"
    shutil.copytree(run, out)
    stored = json.loads((out / "config.json").read_text())["config"]

    def resume(*extra):
        rc = main(["imagenet", "pretrain", "judges", "--out", str(out), "--resume", *extra])
        return rc, capsys.readouterr()

    for extra, message in [(["--width", "5", "--print-config"], "a resume may not change width (8 -> 5)"),
                           (["--lr", "0.1"], "a resume may not change lr (0.003 -> 0.1)"),
                           (["--preset", "judges-32"], "uses preset judges-tiny, not judges-32"),
                           (["--config", str(out / "config.json")], "drop --config")]:
        rc, cap = resume(*extra)
        err = cap.err.strip()
        assert rc == 2 and len(err.splitlines()) == 1 and message in err, (extra, err)
    assert json.loads((out / "config.json").read_text())["config"] == stored
    rc, cap = resume("--device", "cpu", "--limit-test", "100", "--print-config")
    assert rc == 0 and json.loads(cap.out) == {**stored, "device": "cpu", "limit_test": 100}
    rc, cap = resume("--device", "cpu", "--preset", "judges-tiny")   # the run's own preset is fine
    assert rc == 0 and cap.err.count("skipped") == len(JUDGES), cap.err   # every judge is done
    assert json.loads((out / "results.json").read_text())["device"] == "cpu"


def test_metrics_cli_scores_with_the_world_classifier(run, world, tmp_path, capsys):
    from PIL import Image
    from cgn.imagenet.quality import inception_score
    from cgn.imagenet.world_judges import load_judge
    d = load_split_arrays(world, "test")[0]
    folder = tmp_path / "gen"
    folder.mkdir()
    for i in range(20):
        Image.fromarray(d["images"][i]).save(folder / f"{i:07d}.png")
    clf = ["--inception", "world", "--classifier", str(run / "world_classifier.pt"), "--splits", "2"]
    assert main(["imagenet", "metrics", "--folder", str(folder), *clf]) == 0
    from_folder = json.loads(capsys.readouterr().out)
    assert main(["imagenet", "metrics", "--world-split", f"{world}:test", "--limit", "20", *clf]) == 0
    from_split = json.loads(capsys.readouterr().out)
    # the same 20 images as PNGs and from the split: the same probabilities, the same IS
    m = load_judge(run / "world_classifier.pt")
    x = torch.from_numpy(d["images"][:20]).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        want = inception_score(torch.softmax(m(x).double(), 1), splits=2)
    for got in (from_folder, from_split):
        assert got["inception_score"]["mean"] == pytest.approx(want[0], rel=1e-6)
        assert got["n_images"] == 20 and got["extractor"].startswith("world-classifier sha256:")
    assert from_split["mu_mask"] == pytest.approx(d["masks"][:20].mean() / 255)
    assert main(["imagenet", "metrics", "--world-split", f"{world}:test", *clf, "--metrics", "fid",
                 "--fid-reference", f"{world}:train"]) == 0
    assert json.loads(capsys.readouterr().out)["fid_reference"]["n"] == 1000
    for argv, msg in ((["--folder", str(folder), "--inception", "world"], "needs --classifier RUN/world_classifier.pt"),
                      (["--world-split", f"{world}:nope", *clf], "has no split 'nope'"),
                      (["--world-split", str(folder), *clf], "write it as DIR:SPLIT"),
                      (["--folder", str(folder), "--inception", "world", "--classifier",
                        str(run / "texture_judge.pt")], "holds the texture_judge, not the world_classifier")):
        assert main(["imagenet", "metrics", *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert msg in err and len(err.splitlines()) == 1, err


def test_evaluate_classifier_on_a_world(world, tmp_path, capsys):
    import math
    from cgn.imagenet.ensemble import PREDICTIONS
    base = ["imagenet", "evaluate-classifier", "--plain", "tiny", "--no-pretrained", "--world",
            str(world), "--image-size", "32", "--resize-size", "32", "--workers", "0"]
    assert main([*base, "--out", str(tmp_path / "eval.json")]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["world/top1/n"] == res["world/shape_bias/n"] == res["world/in9/mixed_rand/n"] == 200
    fractions = [v for k, v in res.items() if not k.endswith(("/n", "_hits")) and "bg_gap" not in k]
    assert fractions and all(0 <= v <= 1 or math.isnan(v) for v in fractions)
    # a plain classifier: every prediction is the same; Original is the test split
    assert res["world/top1/avg"] == res["world/top1/shape"] == res["world/in9/original/avg"]
    assert res["world/in9/bg_gap"] == pytest.approx(res["world/in9/mixed_same/avg"] - res["world/in9/mixed_rand/avg"])
    assert json.loads((tmp_path / "eval.json").read_text())["metrics"] == res
    assert main([*base, "--metrics", "world_top1"]) == 0
    assert set(json.loads(capsys.readouterr().out)) == {f"world/top1/{p}" for p in PREDICTIONS} | {"world/top1/n"}
    assert main([*base, "--metrics", "shape_bias"]) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown metric(s) 'shape_bias'; choose from world_top1" in err and "\n" not in err
    assert main([*base, "--in9", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "--world evaluates on the world's own splits; drop --in9" in err and "\n" not in err


def test_bad_input_is_one_line(world, tmp_path, capsys):
    from PIL import Image
    for part in ("object", "background"):  # a texture folder other than the world's set
        (tmp_path / "tex" / part).mkdir(parents=True)
        for c in range(10):
            Image.new("RGB", (8, 8), (25 * c, 0, 0)).save(tmp_path / "tex" / part / f"{c}_a.png")
    cases = [
        (["--out", str(tmp_path / "a")], "--world is required"),
        (["--world", str(tmp_path / "none"), "--out", str(tmp_path / "b")], "does not exist"),
        (["--world", str(world), "--out", str(tmp_path / "c"), "--textures", str(tmp_path / "tex")],
         "--textures gives the texture set folder:"),
        (["--world", str(world), "--out", str(tmp_path / "d"), "--batch-size", "1"], "batch_size must be >= 2"),
    ]
    for argv, msg in cases:
        assert main(["imagenet", "pretrain", "judges", *argv]) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert msg in err[-1], (argv, err)
