"""The metrics registry: dispatch by name, needs read off the signature, one-line errors, and every
MNIST and ImageNet metric registered and reachable through it."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from cgn.core import metrics
from cgn.core.metrics import (METRIC_MODULES, available_metrics, calc_metric, check_metric_names,
                              get_metric, metric, metric_needs, register_metric)
from cgn.errors import CGNError
from cgn.io import save_npz_atomic

MNIST_METRICS = {"shape_accuracy", "timeline_shape_accuracy", "mask_statistics", "colour_fidelity"}
IMAGENET_METRICS = {"inception_score", "mu_mask", "imagenet_topk", "cf_head_accuracy", "shape_bias",
                    "in9_bg_gap", "mask_iou", "fid",
                    # the world's (cgn.imagenet.world_metrics, cgn.imagenet.world_eval)
                    "mechanism_shape_accuracy", "mechanism_texture_accuracy",
                    "mechanism_background_accuracy", "background_saliency", "gan_class_accuracy",
                    "gan_shape_accuracy",
                    "world_top1", "world_shape_bias", "world_in9"}


class DigitByMass:
    """A stand-in shape judge: the 'digit' of a mask is its number of pixels > 0.5, modulo 10."""

    def predict(self, masks: torch.Tensor) -> torch.Tensor:
        return (masks.reshape(masks.shape[0], -1) > 0.5).sum(1) % 10


def _masks_of(digits: list[int]) -> torch.Tensor:
    m = torch.zeros(len(digits), 1, 32, 32)
    for i, d in enumerate(digits):
        m[i].view(-1)[:d] = 1.0
    return m


def test_needs_and_options_come_from_the_signature(monkeypatch):
    available_metrics()                                         # load all before the copy
    monkeypatch.setattr(metrics, "_METRICS", dict(metrics._METRICS))

    @register_metric("toy_sum", help="a + b (+ c)")
    def toy_sum(a, b, *, c=0):
        return a + b + c

    m = metric("toy_sum")
    assert (m.needs, m.options, m.help) == (("a", "b"), ("c",), "a + b (+ c)")
    assert metric_needs("toy_sum") == ("a", "b") and get_metric("toy_sum") is toy_sum
    # one context serves every metric: entries a metric does not take are ignored
    assert calc_metric("toy_sum", a=1, b=2, model=object(), splits=3) == 3
    assert calc_metric("toy_sum", a=1, b=2, c=4) == 7
    with pytest.raises(CGNError, match=r"metric 'toy_sum' needs b; give it") as e:
        calc_metric("toy_sum", a=1, b=None)
    assert "\n" not in str(e.value)
    with pytest.raises(CGNError, match="needs a, b; give them"):
        calc_metric("toy_sum")
    with pytest.raises(ValueError, match="registered twice"):
        register_metric("toy_sum")(lambda a: a)


def test_unknown_name_is_one_line_listing_the_available_ones():
    with pytest.raises(CGNError) as e:
        calc_metric("fid50k", model=None)
    msg = str(e.value)
    assert msg.startswith("unknown metric 'fid50k'; available: ") and "\n" not in msg
    listed = set(msg.split("available: ")[1].split(", "))
    assert listed == set(available_metrics()) and MNIST_METRICS | IMAGENET_METRICS <= listed
    with pytest.raises(CGNError, match="unknown metric 'fid50k'"):
        get_metric("fid50k")
    with pytest.raises(CGNError, match=r"folder quality: unknown metric\(s\) 'fid'; choose from a, b"):
        check_metric_names(["a", "fid"], ("a", "b"), "folder quality")
    assert check_metric_names(("b",), ("a", "b"), "x") == ["b"]


def test_every_metric_is_registered_in_a_fresh_interpreter():
    # nothing imported but the registry: the first lookup loads METRIC_MODULES
    code = ("import json; from cgn.core.metrics import available_metrics, get_metric; "
            "names = available_metrics(); "
            "print(json.dumps({n: get_metric(n).__module__ for n in names}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    where = json.loads(out.stdout)
    assert set(where) == MNIST_METRICS | IMAGENET_METRICS
    assert set(where.values()) == set(METRIC_MODULES)
    assert {n for n, mod in where.items() if mod.startswith("cgn.mnist.")} == MNIST_METRICS
    assert all(available_metrics()[n] for n in where)          # every metric has a help line


def test_imagenet_evaluation_registers_its_metrics_without_mnist():
    code = ("import sys; import cgn.imagenet.evaluate as ev; from cgn.core.metrics import metric_needs; "
            "[metric_needs(n) for n in ev.ALL_EVALUATIONS]; "
            "print(sorted(m for m in sys.modules if m.startswith('cgn.mnist')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_each_evaluation_can_feed_its_metrics():
    from cgn.imagenet import evaluate
    from cgn.imagenet.quality import FOLDER_METRICS
    from cgn.mnist.quality import GENERATOR_METRICS
    assert set(evaluate.ALL_EVALUATIONS) | set(FOLDER_METRICS) | set(GENERATOR_METRICS) \
        <= set(available_metrics())
    for name in evaluate.ALL_EVALUATIONS:
        assert set(metric_needs(name)) <= {"model"} | set(evaluate.DATA), name
    assert {n for name in FOLDER_METRICS for n in metric_needs(name)} == {"probs", "masks"}
    for name in GENERATOR_METRICS:
        assert set(metric_needs(name)) <= {"model", "dataset", "n", "seed"}, name


def test_imagenet_quality_metrics_by_name():
    probs = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [0.5, 0.5]])
    assert calc_metric("inception_score", probs=probs, splits=2, masks=None) == \
        (pytest.approx(1.5), pytest.approx(0.5))
    assert calc_metric("mu_mask", masks=torch.tensor([0.0, 1.0, 0.5, 0.5]), splits=2) == 0.5
    from cgn.imagenet.quality import needs_classifier
    assert needs_classifier(["mu_mask", "inception_score"]) and not needs_classifier(["mu_mask"])


def test_folder_evaluation_rejects_other_metrics(tmp_path):
    from cgn.imagenet.quality import evaluate_folder
    with pytest.raises(CGNError, match="folder quality: unknown metric.*'shape_bias'.*choose from "
                                       "inception_score, mu_mask"):
        evaluate_folder(tmp_path, metrics=["mu_mask", "shape_bias"])


def test_classifier_evaluation_dispatch_and_its_errors():
    from cgn.imagenet.classifier_config import ClassifierTrainConfig
    from cgn.imagenet.evaluate import ALL_EVALUATIONS, evaluate_all
    model, cfg = nn.Linear(1, 1), ClassifierTrainConfig()     # no data configured
    assert evaluate_all(model, cfg) == {}                      # everything skipped
    with pytest.raises(CGNError, match="evaluation shape_bias needs --cue-conflict"):
        evaluate_all(model, cfg, which=["shape_bias"], strict=True)
    with pytest.raises(CGNError, match="evaluation imagenet_topk needs --val-dir"):
        evaluate_all(model, cfg, strict=True)
    with pytest.raises(CGNError, match=r"classifier evaluation: unknown metric\(s\) 'mu_mask'; "
                                       "choose from " + ", ".join(ALL_EVALUATIONS)):
        evaluate_all(model, cfg, which=["mu_mask"])


def test_mnist_metrics_by_name(tmp_path):
    judge = DigitByMass()
    digits = [0, 1, 2, 3, 7]
    assert calc_metric("shape_accuracy", masks=_masks_of(digits), labels=torch.tensor(digits),
                       judge=judge) == 1.0
    assert calc_metric("shape_accuracy", masks=_masks_of(digits), labels=torch.tensor([0, 1, 2, 3, 8]),
                       judge=judge) == pytest.approx(0.8)
    # a timeline whose masks become the right digits from step 200
    labels = np.array([4, 5])
    steps = np.arange(0, 400, 100)
    masks = np.stack([(_masks_of([0, 0]) if s < 200 else _masks_of([4, 5]))[:, 0].numpy() for s in steps])
    save_npz_atomic(tmp_path / "mask_timeline.npz", steps=steps, masks=masks, labels=labels)
    rows = calc_metric("timeline_shape_accuracy", timeline=tmp_path / "mask_timeline.npz", judge=judge,
                       window=200)
    assert rows == [{"from": 0, "to": 100, "frames": 2, "shape_accuracy": 0.0},
                    {"from": 200, "to": 300, "frames": 2, "shape_accuracy": 1.0}]


def test_generator_evaluation_loops_over_the_registry():
    from cgn.presets import preset as preset_config
    from cgn.mnist.model import MnistCGN
    from cgn.mnist.quality import colour_fidelity, evaluate_generator, mask_statistics
    cfg = preset_config("double-colored-mnist")
    torch.manual_seed(0)
    model = MnistCGN(cfg.model)
    stats = evaluate_generator(model, "double-colored-mnist", n=20, seed=5, shape_judge=False)
    # metric i of GENERATOR_METRICS draws its samples from seed + i
    assert stats == {**mask_statistics(model, 20, 5), **colour_fidelity(model, "double-colored-mnist", 20, 6)}
    assert {"mask_mean", "fg_colour_accuracy", "bg_colour_accuracy"} <= set(stats)
    assert "shape_accuracy" not in stats
    with_judge = calc_metric("mask_statistics", model=model, n=20, seed=5, judge=DigitByMass())
    assert 0.0 <= with_judge["shape_accuracy"] <= 1.0
    assert calc_metric("colour_fidelity", model=model, dataset="wildlife-mnist", n=20, seed=1) == {}
