"""Top-k accuracy of ImageNet classifiers, registered in :mod:`cgn.core.metrics`.

- ``imagenet_topk``: top-1 / top-5 (%) of every prediction on a real validation ImageFolder.
- ``cf_head_accuracy``: top-1 / top-5 (%) of the shape, texture and background heads on
  counterfactual validation images against the shape, texture and background labels.

Like every classifier metric they take a model with the ensemble's dict interface (``model(x)
[pred]`` = logits ``[B, 1000]`` for ``pred`` in ``PREDICTIONS``;
:class:`~cgn.imagenet.ensemble.PlainClassifier` adapts a plain network), shard the data over DDP
ranks without padding and sum the counts over ranks, so every image is counted exactly once.
"""

from __future__ import annotations

from typing import Sequence

from torch import nn
from torch.utils.data import Dataset

from cgn.core.classifier_eval import eval_loader, evaluate_accuracy
from cgn.core.distributed import DistInfo
from cgn.core.metrics import register_metric
from cgn.imagenet.ensemble import HEADS, PREDICTIONS


def _flat(res: dict[str, dict], prefix: str) -> dict[str, float]:
    """``{name: {"top1", "top5", "n"}}`` -> ``{"<prefix>/<name>/top1": %, ..., "<prefix>/n": N}``."""
    out: dict[str, float] = {}
    for name, r in res.items():
        out[f"{prefix}/{name}/top1"], out[f"{prefix}/{name}/top5"] = r["top1"], r["top5"]
        out[f"{prefix}/n"] = r["n"]
    return out


@register_metric("imagenet_topk", help="top-1/top-5 accuracy (%) of every prediction on a real "
                                       "validation ImageFolder with ImageNet-1k labels")
def imagenet_topk(model: nn.Module, val_set: Dataset, *, batch_size: int = 64,
                  dist: DistInfo | None = None, workers: int = 0,
                  predictions: Sequence[str] = PREDICTIONS) -> dict[str, float]:
    """``{"real/<pred>/top1": %, "real/<pred>/top5": %, "real/n": N}``."""
    dist = dist or DistInfo(device=next(model.parameters()).device)
    res = evaluate_accuracy(model, eval_loader(val_set, batch_size, dist, workers), (1, 5),
                            predict=lambda m, b: {k: v for k, v in m(b[0]).items()
                                                  if k in predictions},
                            dist=dist, desc="top-k")
    return _flat(res, "real")


@register_metric("cf_head_accuracy", help="top-1/top-5 accuracy (%) of the shape, texture and "
                                          "background heads on counterfactual validation images")
def cf_head_accuracy(model: nn.Module, cf_val_set: Dataset, *, batch_size: int = 64,
                     dist: DistInfo | None = None, workers: int = 0) -> dict[str, float]:
    """``cf_val_set`` yields (image, shape, texture, background) (the counterfactual format).
    Returns ``{"cf/<head>/top1": %, "cf/<head>/top5": %, "cf/n": N}``."""
    dist = dist or DistInfo(device=next(model.parameters()).device)
    res = evaluate_accuracy(
        model, eval_loader(cf_val_set, batch_size, dist, workers), (1, 5),
        predict=lambda m, b: {h: v for h, v in m(b[0]).items() if h in HEADS},
        target=lambda b: {"shape": b[1], "texture": b[2], "background": b[3]},
        dist=dist, desc="counterfactual heads")
    return _flat(res, "cf")
