"""The backgrounds challenge (IN-9, Xiao et al. 2020), registered in :mod:`cgn.core.metrics`.

The arg-max of the 1000-way prediction is mapped to the 9 IN-9 classes (table
:data:`IN9_INDICES`; a class outside IN-9 counts as wrong); accuracy (%) per variant and
prediction, and BG-gap = acc(mixed_same) - acc(mixed_rand) of the ``shape_texture`` prediction
(the ensemble without its background head). Hits are divided by the number of images (the
original divides by ``batch_size * n_batches``, which miscounts a partial last batch).

The table is written out below (a fact of the benchmark); tests/test_in9.py checks it against the
authors' reference files.
"""

from __future__ import annotations

import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Mapping, Sequence

import torch
from torch import nn
from torch.utils.data import Dataset
from torchvision.datasets import ImageFolder

from cgn.core.classifier_eval import eval_loader, evaluate_counts
from cgn.core.distributed import DistInfo
from cgn.core.metrics import register_metric
from cgn.errors import CGNError
from cgn.imagenet.ensemble import PREDICTIONS
from cgn.imagenet.imagefolder import expand_indices, read_image

# IN-9 classes (index order) and the ImageNet-1k indices that map to each.
IN9_CLASSES = ("dog", "bird", "vehicle", "reptile", "carnivore", "insect", "instrument",
               "primate", "fish")
_IN9_TABLE = {
    0: "151-170 173-268",
    1: "7-24 87-100 127-146",
    2: "407-408 428 436 444 468 511 547 555 561 565 569 573 586 603 609 612 627 656 661 665 "
       "670-671 675 690 705 717 734 751 757 791 802-803 817 820 829 847 864 866-867 870 880",
    3: "33-68",
    4: "269-280 286-299 356-362 387-388",
    5: "300-326",
    6: "401-402 420 432 486 494 513 541 546 558 566 577 579 593-594 641-642 683-684 687 699 776 "
       "822 875 881 889",
    7: "365-384",
    8: "0-6 389-397",
}
# The backgrounds challenge's input statistics (the original evaluates IN-9 with these).
IN9_MEAN = (0.4717, 0.4499, 0.3837)
IN9_STD = (0.2600, 0.2516, 0.2575)

IN9_INDICES: dict[int, list[int]] = {k: expand_indices(v) for k, v in _IN9_TABLE.items()}


@lru_cache(maxsize=1)
def in_to_in9() -> torch.Tensor:
    """[1000] long: the IN-9 class of each ImageNet-1k class, -1 if none."""
    t = torch.full((1000,), -1, dtype=torch.long)
    for k, idx in IN9_INDICES.items():
        t[idx] = k
    return t


class IN9Folder(ImageFolder):
    """One IN-9 variant: ``<dir>/<NN_class>/<image>`` with exactly nine class folders, labels
    0..8 in folder order (the challenge names them ``00_dog`` ... ``08_fish``)."""

    def __init__(self, root, transform=None):
        super().__init__(str(root), transform=transform, loader=read_image)

    def find_classes(self, directory):
        classes, mapping = super().find_classes(directory)
        if len(classes) != len(IN9_CLASSES):
            raise CGNError(f"{directory} has {len(classes)} class folders; an IN-9 variant has 9 "
                           "(00_dog ... 08_fish)")
        for i, c in enumerate(classes):
            m = re.match(r"^(\d+)_", c)
            if m and int(m.group(1)) != i:
                raise CGNError(f"{directory}: folder {c!r} is class {i} in sorted order; the "
                               "IN-9 folders must be numbered 00..08")
        return classes, mapping


def in9_variant_dir(root: str | os.PathLike, variant: str) -> Path:
    """``root/<variant>/val`` (the release layout) or else ``root/<variant>``; ``root`` may also
    be the folder the release unpacks into (holding ``bg_challenge/``)."""
    base = Path(root) / variant
    if not base.is_dir() and (Path(root) / "bg_challenge" / variant).is_dir():
        base = Path(root) / "bg_challenge" / variant
    if (base / "val").is_dir():
        return base / "val"
    if base.is_dir():
        return base
    raise CGNError(f"IN-9 variant folder {base} (or {base}/val) not found; get the challenge "
                   "data with `cgn download in9` or point --in9 at the folder holding "
                   f"{variant}/val")


@register_metric("in9_bg_gap", help="IN-9 accuracy (%) per variant and prediction, and the "
                                    "BG-gap mixed_same - mixed_rand of the shape+texture prediction")
def in9_bg_gap(model: nn.Module, in9_sets: Mapping[str, Dataset], *, batch_size: int = 64,
               dist: DistInfo | None = None, workers: int = 0,
               predictions: Sequence[str] = PREDICTIONS) -> dict[str, float]:
    """``in9_sets``: variant name -> dataset of (image, IN-9 label). Returns
    ``{"in9/<variant>/<pred>": %, "in9/<variant>/n": N, "in9/bg_gap": points}`` (the gap only
    when both mixed_same and mixed_rand are given)."""
    dist = dist or DistInfo(device=next(model.parameters()).device)
    table = in_to_in9()

    def count(m: nn.Module, batch) -> dict[str, torch.Tensor]:
        logits = m(batch[0])
        y = batch[1]
        out = {"n": torch.tensor(len(y))}
        for pred in predictions:
            mapped = table.to(y.device)[logits[pred].argmax(dim=1)]       # [B] in -1..8
            out[pred] = (mapped == y).sum()
        return out

    res: dict[str, float] = {}
    for variant, ds in in9_sets.items():
        sums = evaluate_counts(model, eval_loader(ds, batch_size, dist, workers), count,
                               dist=dist, desc=f"IN-9 {variant}")
        n = sums.get("n", 0.0)
        if n == 0:
            raise CGNError(f"IN-9 variant {variant} has no images")
        for pred in predictions:
            res[f"in9/{variant}/{pred}"] = 100.0 * sums[pred] / n
        res[f"in9/{variant}/n"] = int(n)
    if "mixed_same" in in9_sets and "mixed_rand" in in9_sets and "shape_texture" in predictions:
        res["in9/bg_gap"] = res["in9/mixed_same/shape_texture"] - res["in9/mixed_rand/shape_texture"]
    return res
