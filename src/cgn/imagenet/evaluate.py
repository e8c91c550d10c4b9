"""Evaluations of ImageNet classifiers: every metric a config has data for.

The metrics are registered in :mod:`cgn.core.metrics` (:mod:`cgn.imagenet.accuracy`,
:mod:`cgn.imagenet.shape_bias`, :mod:`cgn.imagenet.in9`); each names the data it needs
(``val_set``, ``cf_val_set``, ``cue_conflict``, ``in9_sets``). :func:`evaluate_all` builds
those from the config (:data:`DATA`) and calls the registry for each metric name.

Reference: docs/reference.md#evaluations.
"""

from __future__ import annotations

from typing import Callable, Sequence

from torch import nn

from cgn.core.distributed import DistInfo
from cgn.core.metrics import calc_metric, check_metric_names, metric_needs
from cgn.errors import CGNError
from cgn.imagenet import accuracy  # noqa: F401  (registers imagenet_topk, cf_head_accuracy)
from cgn.imagenet.cfdata import CounterfactualDataset, split_dir
from cgn.imagenet.imagefolder import IMAGENET_MEAN, IMAGENET_STD, ImageNetFolder, eval_transform
from cgn.imagenet.in9 import IN9_MEAN, IN9_STD, IN9Folder, in9_variant_dir
from cgn.imagenet.shape_bias import CueConflictDataset

# The classifier metrics, in report order.
ALL_EVALUATIONS = ("imagenet_topk", "cf_head_accuracy", "shape_bias", "in9_bg_gap")


def _val_set(cfg, tf):
    d = cfg.data
    return ImageNetFolder(d.val_dir, tf, d.class_index or None) if d.val_dir else None


def _cf_val_set(cfg, tf):
    d = cfg.data
    if not d.cf_dir or not (split_dir(d.cf_dir, "val") / "labels.csv").is_file():
        return None
    return CounterfactualDataset(d.cf_dir, "val", tf)


def _cue_conflict(cfg, tf):
    return CueConflictDataset(cfg.eval.cue_conflict_dir, tf) if cfg.eval.cue_conflict_dir else None


def _in9_sets(cfg, tf):
    e = cfg.eval
    if not e.in9_dir:
        return None
    mean, std = (IN9_MEAN, IN9_STD) if e.in9_normalization == "in9" else (IMAGENET_MEAN, IMAGENET_STD)
    # IN-9 images are 224 px: resize to the crop size only (identity at 224), as the original
    # feeds them unresized
    tf9 = eval_transform(cfg.data.image_size, cfg.data.image_size, mean, std)
    return {v: IN9Folder(str(in9_variant_dir(e.in9_dir, v)), transform=tf9) for v in e.in9_variants}


# What each need is built from: (builder(cfg, eval transform) -> data or None when the config
# names none, the option that names it).
DATA: dict[str, tuple[Callable, str]] = {
    "val_set": (_val_set, "--val-dir (a real validation ImageFolder)"),
    "cf_val_set": (_cf_val_set, "--cf-dir with a val split (DIR/val/labels.csv)"),
    "cue_conflict": (_cue_conflict, "--cue-conflict (the cue-conflict stimuli folder)"),
    "in9_sets": (_in9_sets, "--in9 (the backgrounds challenge folder)"),
}


def evaluate_all(model: nn.Module, cfg, dist: DistInfo | None = None,
                 which: Sequence[str] | None = None, strict: bool = False) -> dict[str, float]:
    """Run the metrics whose data ``cfg`` (a ClassifierTrainConfig) names.

    ``which``: a subset of :data:`ALL_EVALUATIONS` (default: all). Metrics whose data is not
    configured are skipped, or an error with ``strict=True`` (an explicit request).
    """
    dist = dist or DistInfo(device=next(model.parameters()).device)
    which = check_metric_names(which or ALL_EVALUATIONS, ALL_EVALUATIONS, "classifier evaluation")
    d, e = cfg.data, cfg.eval
    tf = eval_transform(d.image_size, d.resize_size)
    context = {"model": model, "batch_size": e.batch_size, "dist": dist, "workers": d.workers,
               "exclude_same": e.exclude_same_category}
    res: dict[str, float] = {}
    for name in which:
        data = {need: DATA[need][0](cfg, tf) for need in metric_needs(name) if need not in context}
        missing = [need for need, value in data.items() if value is None]
        if missing:
            if strict:
                raise CGNError(f"evaluation {name} needs {DATA[missing[0]][1]}")
            continue
        res.update(calc_metric(name, **context, **data))
    return res
