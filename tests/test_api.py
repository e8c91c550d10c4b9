"""The Python API (``import cgn``): its docs' snippets run, the example script runs, and each
function gives what the matching command gives."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import cgn
from cgn.cli import main
from cgn.core.checkpoint import save_checkpoint
from cgn.core.sampling import to_uint8
from cgn.io import file_digest
from cgn.mnist.variants import to_tensor

from conftest import REPO, require_mnist

SRC = str(REPO / "src")
DOCS = REPO / "docs" / "api.md"
EXAMPLE = REPO / "examples" / "counterfactuals.py"
DOCS_CGN = Path("runs/double-colored/checkpoints/final.pt")  # where docs/api.md finds its CGN


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def test_import_cgn_loads_no_torch():
    code = ("import sys, cgn; assert 'torch' not in sys.modules, 'torch imported'; "
            "assert {'load_cgn', 'sample', 'MnistVariant', 'CounterfactualSet'} <= set(dir(cgn)); "
            "cgn.CGNError; assert 'torch' not in sys.modules, 'CGNError imported torch'; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
    with pytest.raises(AttributeError):
        cgn.no_such_name  # noqa: B018


def test_docs_snippets_run(tiny_cgn_file, tmp_path, monkeypatch, capsys):
    require_mnist()
    blocks = python_blocks(DOCS.read_text())
    assert len(blocks) >= 6
    (tmp_path / DOCS_CGN).parent.mkdir(parents=True)
    shutil.copy(tiny_cgn_file, tmp_path / DOCS_CGN)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "docs_api"}
    for k, block in enumerate(blocks):
        try:
            exec(compile(block, f"docs/api.md python block {k + 1}", "exec"), namespace)
        except Exception as e:
            pytest.fail(f"docs/api.md python block {k + 1} fails: {type(e).__name__}: {e}\n{block}")
    printed = capsys.readouterr().out
    assert "unknown dataset 'colored'" in printed           # the errors snippet
    assert (tmp_path / "digits.png").stat().st_size > 0
    results = json.loads((tmp_path / "runs/clf-tiny/results.json").read_text())
    assert results["n_test"] == 1000 and results["n_train"] == 640 and results["train_set"] == "cf"
    # the run's own test score and evaluate_classifier score the same 1,000 images
    run, test = namespace["run"], namespace["test"]
    acc = cgn.evaluate_classifier(run, torch.utils.data.Subset(test, range(1000)))
    assert abs(acc - results["test_acc"]) <= 0.2


def test_example_script_runs_tiny(tiny_cgn_file, tmp_path):
    require_mnist()
    out = tmp_path / "ex"
    proc = subprocess.run([sys.executable, str(EXAMPLE), str(tiny_cgn_file), "--out", str(out),
                           "--counterfactuals", "200", "--epochs", "1", "--limit-real", "256",
                           "--limit-test", "200"], env=_env(), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dataset"] == "double-colored-mnist" and summary["counterfactuals"] == 200
    assert summary["n_test"] == 200 and set(summary["ood_accuracy"]) == {"real", "real+cf"}
    assert all(0 <= a <= 100 for a in summary["ood_accuracy"].values())
    assert "OOD test accuracy" in proc.stdout
    from PIL import Image
    assert Image.open(out / "grid.png").size[0] > 10 * 32
    for name in ("real", "real+cf"):
        res = json.loads((out / f"classifier-{name}" / "results.json").read_text())
        assert res["train_set"] == name and res["n_test"] == 200
        # the run scored the same 200 test images the example scores afterwards
        assert abs(res["test_acc"] - summary["ood_accuracy"][name]) <= 1.0


def test_load_cgn_ours_run_dir_and_errors(tiny_cgn_file, tmp_path):
    model = cgn.load_cgn(tiny_cgn_file)
    assert isinstance(model, cgn.MnistCGN) and not model.training
    assert model.load_info["format"] == "cgn" and model.load_info["dataset"] == "double-colored-mnist"
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copy(tiny_cgn_file, run / "checkpoints" / "final.pt")
    from_dir = cgn.load_cgn(run)
    for k, v in model.state_dict().items():
        assert torch.equal(v, from_dir.state_dict()[k])
    with pytest.raises(cgn.CGNError, match="does not exist"):
        cgn.load_cgn(tmp_path / "missing.pt")
    with pytest.raises(cgn.CGNError, match="final.pt"):
        cgn.load_cgn(tmp_path)
    other = tmp_path / "classifier.pt"
    save_checkpoint(other, kind="mnist-classifier", step=0, config={},
                    model=cgn.MnistClassifier().state_dict())
    with pytest.raises(cgn.CGNError, match="mnist-cgn"):
        cgn.load_cgn(other)
    not_torch = tmp_path / "notes.pth"
    not_torch.write_text("not a checkpoint")
    with pytest.raises(cgn.CGNError, match="not a readable PyTorch file"):
        cgn.load_cgn(not_torch)


def test_load_cgn_recognises_the_authors_files(shared_data, tmp_path):
    from cgn.mnist.model import load_generator
    ref = shared_data / "cgn_reference" / "checkpoints" / "double_colored_mnist.pth"
    want, _ = load_generator(ref, reference_format=True)
    renamed = tmp_path / "mine.pth"  # by digest, not by name
    shutil.copy(ref, renamed)
    for path in (ref, renamed):
        got = cgn.load_cgn(path)
        assert got.load_info["format"] == "reference"
        assert got.load_info["dataset"] == "double-colored-mnist"
        for k, v in want.state_dict().items():
            assert torch.equal(v, got.state_dict()[k])
    # an unknown file in the authors' layout is recognised by its content (and warned about)
    state = torch.load(ref, map_location="cpu", weights_only=True)
    state["label_emb.weight"] = state["label_emb.weight"] + 1
    edited = tmp_path / "edited.pth"
    torch.save(state, edited)
    info = cgn.load_cgn(edited).load_info
    assert info["format"] == "reference" and info["dataset"] == "unknown"


def test_sample_gives_the_images_of_cgn_sample(tiny_cgn_file, tmp_path):
    model = cgn.load_cgn(tiny_cgn_file)
    s = cgn.sample(model, shape=3, texture=None, background=list(range(10)), seed=4)
    assert len(s) == 10 and s.composite.shape == (10, 3, 32, 32) and s.mask.shape == (10, 1, 32, 32)
    assert s.labels["shape"].tolist() == [3] * 10 and s.labels["background"].tolist() == list(range(10))
    assert torch.allclose(s.composite, s.mask * s.foreground + (1 - s.mask) * s.background, atol=1e-6)
    out = tmp_path / "s.npz"
    assert main(["sample", "--checkpoint", str(tiny_cgn_file), "--shape", "3", "--texture", "random",
                 "--background", "0,1,2,3,4,5,6,7,8,9", "--n", "10", "--seed", "4", "--out", str(out)]) == 0
    with np.load(out, allow_pickle=False) as z:
        assert np.array_equal(z["texture_labels"], s.labels["texture"].numpy())
        assert np.array_equal(z["images"], to_uint8(s.composite))
        assert np.array_equal(z["masks"], s.mask[:, 0].numpy())
    again = cgn.sample(model, shape=torch.tensor([3] * 10), background=range(10), seed=4)
    assert torch.equal(again.composite, s.composite)
    assert len(cgn.sample(model, seed=0)) == 1 and len(cgn.sample(model, texture=5, n=3)) == 3
    for bad, match in [(dict(shape=[1, 2], texture=[1, 2, 3]), "different lengths"),
                       (dict(shape=12), r"0\.\.9"), (dict(shape=[1, 2], n=5), "2 labels for n=5"),
                       (dict(texture="red"), "texture label 'red'"), (dict(shape=2.5), "shape label"),
                       (dict(n=0), "n must be")]:
        with pytest.raises(cgn.CGNError, match=match):
            cgn.sample(model, **bad)
    grid = cgn.save_sample_grid(s, tmp_path / "g.png")
    from PIL import Image
    assert Image.open(grid).size[0] > 10 * 32


def test_mnist_variant_dataset():
    require_mnist()
    from cgn.mnist.variants import load_split
    test = cgn.MnistVariant("double-colored-mnist", split="test")
    raw = load_split("double-colored-mnist", "test")
    assert len(test) == 10_000 and test.meta["seed"] == 0
    image, label = test[5]
    assert image.dtype == torch.float32 and image.shape == (3, 32, 32)
    assert torch.equal(image, to_tensor(raw["images"][5:6])[0]) and label == raw["labels"][5]
    assert -1 <= image.min() and image.max() <= 1
    assert torch.equal(test[-1][0], test[len(test) - 1][0])
    with pytest.raises(IndexError):
        test[len(test)]
    assert np.array_equal(test.fg_class, raw["fg_class"]) and np.array_equal(test.bg_class, raw["bg_class"])
    with pytest.raises(ValueError):  # read-only: the cached split cannot be changed through it
        test.images[0, 0, 0, 0] = 1
    x, y = next(iter(torch.utils.data.DataLoader(test, batch_size=32)))
    assert x.shape == (32, 3, 32, 32) and torch.equal(y, torch.from_numpy(raw["labels"][:32]))
    with pytest.raises(cgn.CGNError, match="unknown dataset"):
        cgn.MnistVariant("colored", split="test")
    with pytest.raises(cgn.CGNError, match="unknown split"):
        cgn.MnistVariant("colored-mnist", split="val")


def test_counterfactual_set_generation_and_dataset(tiny_cgn_file, tmp_path):
    model = cgn.load_cgn(tiny_cgn_file)
    a = cgn.generate_counterfactuals(model, tmp_path / "a", n=30, cf_ratio=5, shard_size=16, seed=2)
    b = cgn.generate_counterfactuals(tiny_cgn_file, tmp_path / "b", n=30, cf_ratio=5, shard_size=16, seed=2)
    assert b.manifest["generator"]["sha256"] == file_digest(tiny_cgn_file, "sha256")  # as cgn generate
    assert a.manifest["generator"]["dataset"] == "double-colored-mnist"
    assert np.array_equal(a.images(np.arange(30)), b.images(np.arange(30)))
    assert len(a) == 30 and len(a.shards) == 2
    image, label = a[17]
    assert torch.equal(image, to_tensor(a.images([17]))[0]) and label == a.labels["shape"][17]
    x, y = next(iter(torch.utils.data.DataLoader(a, batch_size=30)))
    assert x.shape == (30, 3, 32, 32) and y.tolist() == a.labels["shape"].tolist()
    with pytest.raises(IndexError):
        a[30]
    again = cgn.generate_counterfactuals(model, tmp_path / "a", n=30, cf_ratio=5, shard_size=16, seed=2)
    assert np.array_equal(again.images(np.arange(30)), a.images(np.arange(30)))  # reopened as it was
    with pytest.raises(cgn.CGNError, match="unknown field"):
        cgn.generate_counterfactuals(model, tmp_path / "c", n=10, ratio=5)
    with pytest.raises(cgn.CGNError, match="cf_ratio"):
        cgn.generate_counterfactuals(model, tmp_path / "c", n=10, cf_ratio=0)


def test_evaluate_classifier_module_run_and_file(tmp_path):
    torch.manual_seed(0)
    clf = cgn.MnistClassifier()
    for p in clf.parameters():
        p.data.normal_(0, 0.3)
    x = torch.rand(100, 3, 32, 32) * 2 - 1
    y = torch.randint(0, 10, (100,))
    data = torch.utils.data.TensorDataset(x, y)
    clf.train()
    acc = cgn.evaluate_classifier(clf, data, batch_size=32)
    assert clf.training  # its mode is restored
    clf.eval()
    with torch.no_grad():
        want = 100.0 * (clf(x).argmax(1) == y).float().mean().item()
    assert acc == pytest.approx(want)
    run = tmp_path / "run"
    save_checkpoint(run / "checkpoints" / "last.pt", kind="mnist-classifier", step=0, config={},
                    model=clf.state_dict())
    assert cgn.evaluate_classifier(run, data) == pytest.approx(want)
    assert cgn.evaluate_classifier(cgn.ClassifierRun(run, {}), data) == pytest.approx(want)
    assert cgn.evaluate_classifier(run / "checkpoints" / "last.pt", data) == pytest.approx(want)
    with pytest.raises(cgn.CGNError, match="does not exist"):
        cgn.evaluate_classifier(tmp_path / "nothing", data)


def test_train_classifier_rejects_bad_settings(tmp_path):
    with pytest.raises(cgn.CGNError, match="unknown field"):
        cgn.train_classifier(tmp_path / "a", dataset="colored-mnist", epoch=1)
    with pytest.raises(cgn.CGNError, match="epochs"):
        cgn.train_classifier(tmp_path / "a", dataset="colored-mnist", epochs=0)
    with pytest.raises(cgn.CGNError, match="needs generated images"):
        cgn.train_classifier(tmp_path / "a", dataset="colored-mnist", train_set="real+cf")
    with pytest.raises(cgn.CGNError, match="limit_test"):
        cgn.train_classifier(tmp_path / "a", dataset="colored-mnist", limit_test=0)
    assert not (tmp_path / "a").exists()
