"""Evaluations of a classifier (ensemble or plain) on a world, registered in :mod:`cgn.core.metrics`.

A world's labels are classes 0..K-1; a classifier's decision is the arg-max of its first K
logits (an ensemble built with 1000 outputs and trained on the world uses those). Every
prediction of the ensemble interface is evaluated (``shape``, ``texture``, ``background``
heads, ``avg``, ``shape_texture``; a plain classifier gives the same numbers under every key).
All accuracies and biases are fractions in [0, 1].

- ``world_top1``: top-1 on the test split: ``{"world/top1/<pred>", "world/top1/n"}``.
- ``world_shape_bias``: on the cue-conflict split (shape a, texture b != a, background c not in
  {a, b}), among the decisions that hit the shape or the texture class, the share of shape hits:
  ``{"world/shape_bias/<pred>", ".../<pred>/shape_hits", ".../<pred>/texture_hits",
  ".../<pred>/background_hits", "world/shape_bias/n"}`` (NaN when no decision hits either).
- ``world_in9``: IN-9 style accuracies on ``original`` (the test split), ``mixed_same`` and
  ``mixed_rand``, and BG-gap = Mixed-Same - Mixed-Rand per prediction:
  ``{"world/in9/<variant>/<pred>", "world/in9/bg_gap/<pred>", "world/in9/bg_gap"}`` (the last:
  the ``shape_texture`` prediction's, as :mod:`cgn.imagenet.in9` reports it).

:func:`evaluate_world` reads the splits of a world folder through
:class:`~cgn.imagenet.world_data.WorldSplit` with the classifier's evaluation transform and runs
the metrics; ``cgn imagenet evaluate-classifier --world DIR`` calls it.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import torch
from torch import nn
from torch.utils.data import Dataset

from cgn.core.classifier_eval import eval_loader, evaluate_counts
from cgn.core.distributed import DistInfo
from cgn.core.metrics import calc_metric, check_metric_names, register_metric
from cgn.errors import CGNError
from cgn.imagenet.ensemble import PREDICTIONS
from cgn.imagenet.shape_bias import shape_bias_counts, shape_bias_from_counts

WORLD_EVALUATIONS = ("world_top1", "world_shape_bias", "world_in9")
IN9_VARIANTS = ("original", "mixed_same", "mixed_rand")


def decisions(logits: torch.Tensor, num_classes: int) -> torch.Tensor:
    """The arg-max over the world's ``num_classes`` first logits."""
    if logits.shape[1] < num_classes:
        raise CGNError(f"the classifier has {logits.shape[1]} outputs, fewer than the world's "
                       f"{num_classes} classes")
    return logits[:, :num_classes].argmax(dim=1)


def _dist(model: nn.Module, dist: DistInfo | None) -> DistInfo:
    return dist or DistInfo(device=next(model.parameters()).device)


def _accuracies(model, data: Dataset, num_classes: int, batch_size, dist, workers, predictions,
                desc: str) -> tuple[dict[str, float], int]:
    def count(m: nn.Module, batch) -> dict[str, torch.Tensor]:
        out = m(batch[0])
        y = batch[1]
        return {"n": torch.tensor(len(y)),
                **{p: (decisions(out[p], num_classes) == y).sum() for p in predictions}}

    sums = evaluate_counts(model, eval_loader(data, batch_size, dist, workers), count, dist=dist,
                           desc=desc)
    n = int(sums.get("n", 0))
    if n == 0:
        raise CGNError(f"{desc}: the world split has no images")
    return {p: sums[p] / n for p in predictions}, n


@register_metric("world_top1", help="top-1 accuracy (fraction) of every prediction on a world's "
                                    "test split")
def world_top1(model: nn.Module, world_test: Dataset, num_classes: int, *, batch_size: int = 64,
               dist: DistInfo | None = None, workers: int = 0,
               predictions: Sequence[str] = PREDICTIONS) -> dict[str, float]:
    """``world_test`` yields (image, class)."""
    acc, n = _accuracies(model, world_test, num_classes, batch_size, _dist(model, dist), workers,
                         predictions, "world top-1")
    return {**{f"world/top1/{p}": v for p, v in acc.items()}, "world/top1/n": n}


@register_metric("world_shape_bias", help="shape bias (fraction) of every prediction on a world's "
                                          "cue-conflict split")
def world_shape_bias(model: nn.Module, world_cue_conflict: Dataset, num_classes: int, *,
                     batch_size: int = 64, dist: DistInfo | None = None, workers: int = 0,
                     predictions: Sequence[str] = PREDICTIONS) -> dict[str, float]:
    """``world_cue_conflict`` yields (image, shape class, texture class, background class)."""
    dist = _dist(model, dist)

    def count(m: nn.Module, batch) -> dict[str, torch.Tensor]:
        out = m(batch[0])
        res = {}
        for p in predictions:
            d = decisions(out[p], num_classes)
            c = shape_bias_counts(d, batch[1], batch[2], exclude_same=True)
            res[f"{p}/shape_hits"], res[f"{p}/texture_hits"] = c["shape_hits"], c["texture_hits"]
            res[f"{p}/background_hits"] = (d == batch[3]).sum()
            res["n"], res["excluded"] = c["n"], c["excluded"]
        return res

    sums = evaluate_counts(model, eval_loader(world_cue_conflict, batch_size, dist, workers), count,
                           dist=dist, desc="world shape bias")
    if not sums.get("n"):
        raise CGNError("world shape bias: the cue-conflict split has no image whose shape and "
                       "texture classes differ")
    res: dict[str, float] = {"world/shape_bias/n": int(sums["n"])}
    for p in predictions:
        s, t = sums[f"{p}/shape_hits"], sums[f"{p}/texture_hits"]
        res[f"world/shape_bias/{p}"] = shape_bias_from_counts(s, t) / 100.0
        for kind in ("shape", "texture", "background"):
            res[f"world/shape_bias/{p}/{kind}_hits"] = int(sums[f"{p}/{kind}_hits"])
    return res


@register_metric("world_in9", help="IN-9 style accuracies (fractions) on a world's original / "
                                   "mixed_same / mixed_rand splits and the BG-gap")
def world_in9(model: nn.Module, world_in9_sets: Mapping[str, Dataset], num_classes: int, *,
              batch_size: int = 64, dist: DistInfo | None = None, workers: int = 0,
              predictions: Sequence[str] = PREDICTIONS) -> dict[str, float]:
    """``world_in9_sets``: variant -> dataset of (image, class)."""
    dist = _dist(model, dist)
    res: dict[str, float] = {}
    for variant, data in world_in9_sets.items():
        acc, n = _accuracies(model, data, num_classes, batch_size, dist, workers, predictions,
                             f"world IN-9 {variant}")
        res.update({f"world/in9/{variant}/{p}": v for p, v in acc.items()})
        res[f"world/in9/{variant}/n"] = n
    if "mixed_same" in world_in9_sets and "mixed_rand" in world_in9_sets:
        for p in predictions:
            res[f"world/in9/bg_gap/{p}"] = res[f"world/in9/mixed_same/{p}"] - res[f"world/in9/mixed_rand/{p}"]
        if "shape_texture" in predictions:
            res["world/in9/bg_gap"] = res["world/in9/bg_gap/shape_texture"]
    return res


def world_datasets(root, transform: Callable | None) -> dict[str, Callable[[], object]]:
    """The data each world metric needs, built on demand from the world folder ``root``."""
    from cgn.imagenet.world_data import WorldSplit

    def split(name: str, returns=("image", "label")):
        return WorldSplit(root, name, returns=returns, transform=transform)
    return {"world_test": lambda: split("test"),
            "world_cue_conflict": lambda: split("cue_conflict", ("image", "shape", "texture", "background")),
            "world_in9_sets": lambda: {v: split(v) for v in IN9_VARIANTS}}


def evaluate_world(model: nn.Module, root, *, transform: Callable | None, which: Sequence[str] | None = None,
                   batch_size: int = 64, workers: int = 0, dist: DistInfo | None = None) -> dict[str, float]:
    """Run the world metrics (``which``: a subset of :data:`WORLD_EVALUATIONS`; default all) on
    the world folder ``root``, its images passed through ``transform`` (the classifier's
    evaluation transform)."""
    from cgn.core.metrics import metric_needs
    from cgn.imagenet.world_data import read_manifest
    which = check_metric_names(which or WORLD_EVALUATIONS, WORLD_EVALUATIONS, "world evaluation")
    k = int(read_manifest(root)["num_classes"])
    data = world_datasets(root, transform)
    context = {"model": model, "num_classes": k, "batch_size": batch_size, "workers": workers,
               "dist": _dist(model, dist)}
    res: dict[str, float] = {}
    for name in which:
        needs = {need: data[need]() for need in metric_needs(name) if need in data}
        res.update(calc_metric(name, **context, **needs))
    return res
