"""Evaluations of ImageNet classifiers (SPEC §8), registered in :mod:`cgn.core.metrics`.

Every metric takes a model with the ensemble's dict interface (``model(x)[pred]`` = logits
``[B, 1000]`` for ``pred`` in ``PREDICTIONS``; :class:`~cgn.imagenet.ensemble.PlainClassifier`
adapts a plain network) and datasets, shards them over DDP ranks without padding and sums the
counts over ranks, so every image is counted exactly once (the original divides IN-9 hits by
``batch_size * n_batches``, which miscounts a partial last batch; we divide by the number of
images).

- ``imagenet_topk``: top-1 / top-5 (%) of every prediction on a real validation ImageFolder.
- ``cf_head_accuracy``: top-1 / top-5 (%) of the shape, texture and background heads on
  counterfactual validation images against the shape, texture and background labels.
- ``shape_bias`` (Geirhos et al. 2019): the softmax over 1000 classes is mapped to the 16
  cue-conflict categories by *averaging* the probabilities of each category's ImageNet indices
  (table :data:`CATEGORY_INDICES`), the decision is the arg-max category; among the images whose
  decision equals their shape or their texture category, shape bias = shape hits / (shape hits +
  texture hits), in %. Images whose shape and texture categories coincide (e.g.
  ``airplane10-airplane1.png``; 80 of the 1,280) are *excluded* by default, as in the original
  and in Geirhos et al.; with ``exclude_same=False`` they count as a shape hit *and* a texture
  hit.
- ``in9_bg_gap`` (Xiao et al. 2020): the arg-max of the 1000-way prediction is mapped to the 9
  IN-9 classes (table :data:`IN9_INDICES`; a class outside IN-9 counts as wrong); accuracy (%)
  per variant and prediction, and BG-gap = acc(mixed_same) - acc(mixed_rand) of the
  ``shape_texture`` prediction (the ensemble without its background head).

The two tables are written out below (they are facts of the benchmarks); the tests check them
against the reference files in ``../shared/data/cgn_reference``.
"""

from __future__ import annotations

import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Callable, Mapping, Sequence

import torch
from PIL import Image
from torch import nn
from torch.utils.data import Dataset
from torchvision.datasets import ImageFolder

from cgn.core.classifier_eval import eval_loader, evaluate_accuracy, evaluate_counts
from cgn.core.distributed import DistInfo
from cgn.core.metrics import register_metric
from cgn.errors import CGNError
from cgn.imagenet.ensemble import HEADS, PREDICTIONS

# --------------------------------------------------------------------------------------------
# Reference tables
# --------------------------------------------------------------------------------------------

# The 16 entry-level categories of the cue-conflict stimuli (alphabetical = decision index) and
# the ImageNet-1k indices whose probabilities are averaged for each ("a-b" = a..b inclusive).
_CATEGORY_TABLE = {
    "airplane": "404",
    "bear": "294-297",
    "bicycle": "444 671",
    "bird": "8 10-16 18-20 22-24 80-83 87-96 98-100 127-133 135-145",
    "boat": "472 554 625 814 914",
    "bottle": "440 720 737 898-899 901 907",
    "car": "436 511 817",
    "cat": "281-286",
    "chair": "423 559 765 857",
    "clock": "409 530 892",
    "dog": "152-191 193-203 205-226 228-241 243-250 252-257 259 261-263 265-268",
    "elephant": "385-386",
    "keyboard": "508 878",
    "knife": "499",
    "oven": "766",
    "truck": "555 569 656 675 717 734 864 867",
}

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


def _expand(spec: str) -> list[int]:
    out: list[int] = []
    for part in spec.split():
        a, _, b = part.partition("-")
        out.extend(range(int(a), int(b or a) + 1))
    return out


CATEGORIES: tuple[str, ...] = tuple(sorted(_CATEGORY_TABLE))
CATEGORY_INDICES: dict[str, list[int]] = {c: _expand(_CATEGORY_TABLE[c]) for c in CATEGORIES}
IN9_INDICES: dict[int, list[int]] = {k: _expand(v) for k, v in _IN9_TABLE.items()}


@lru_cache(maxsize=1)
def _category_matrix() -> torch.Tensor:
    """[1000, 16]: column c averages the probabilities of category c's ImageNet indices."""
    m = torch.zeros(1000, len(CATEGORIES), dtype=torch.float64)
    for c, name in enumerate(CATEGORIES):
        idx = CATEGORY_INDICES[name]
        m[idx, c] = 1.0 / len(idx)
    return m


@lru_cache(maxsize=1)
def in_to_in9() -> torch.Tensor:
    """[1000] long: the IN-9 class of each ImageNet-1k class, -1 if none."""
    t = torch.full((1000,), -1, dtype=torch.long)
    for k, idx in IN9_INDICES.items():
        t[idx] = k
    return t


# --------------------------------------------------------------------------------------------
# Shape bias: decisions and counting
# --------------------------------------------------------------------------------------------


def category_probabilities(probs: torch.Tensor) -> torch.Tensor:
    """Softmax probabilities [N, 1000] -> mean probability of each category [N, 16]."""
    return probs.to(torch.float64) @ _category_matrix().to(probs.device)


def decide_16(probs: torch.Tensor) -> torch.Tensor:
    """Softmax probabilities [N, 1000] -> the decided category index [N] (into CATEGORIES)."""
    return category_probabilities(probs).argmax(dim=1)


def shape_bias_counts(decisions: torch.Tensor, shape: torch.Tensor, texture: torch.Tensor,
                      exclude_same: bool = True) -> dict[str, torch.Tensor]:
    """Count shape hits and texture hits of 16-way decisions [N] (see the module docstring)."""
    same = shape == texture
    keep = ~same if exclude_same else torch.ones_like(same)
    return {"shape_hits": ((decisions == shape) & keep).sum(),
            "texture_hits": ((decisions == texture) & keep).sum(),
            "n": keep.sum(), "excluded": (~keep).sum()}


def shape_bias_from_counts(shape_hits: float, texture_hits: float) -> float:
    """Shape bias in %; NaN when no decision hit either cue."""
    total = shape_hits + texture_hits
    return 100.0 * shape_hits / total if total else float("nan")


# --------------------------------------------------------------------------------------------
# Datasets
# --------------------------------------------------------------------------------------------

_STIMULUS = re.compile(r"^([a-z]+)(\d+)-([a-z]+)(\d+)\.png$")
_IMG_EXT = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def parse_stimulus_name(name: str) -> tuple[str, str]:
    """``bear10-oven1.png`` -> ("bear", "oven"): (shape category, texture category)."""
    m = _STIMULUS.match(name)
    if not m or m.group(1) not in _CATEGORY_TABLE or m.group(3) not in _CATEGORY_TABLE:
        raise CGNError(f"{name!r} is not a cue-conflict file name '<shape><k>-<texture><j>.png' "
                       f"with categories among {', '.join(CATEGORIES)}")
    return m.group(1), m.group(3)


STIMULI_SUBDIR = "stimuli/style-transfer-preprocessed-512"


def cue_conflict_root(root: str | os.PathLike) -> Path:
    """The folder holding the stimuli: ``root`` itself when it has category folders or PNGs,
    else the texture-vs-shape repository's ``stimuli/style-transfer-preprocessed-512`` below it
    (as ``cgn download cue-conflict`` unpacks it)."""
    root = Path(root)
    if not root.is_dir():
        raise CGNError(f"cue-conflict folder {root} does not exist; get it with "
                       "`cgn download cue-conflict` or point --cue-conflict at it")
    if any((root / c).is_dir() for c in CATEGORIES) or any(root.glob("*.png")):
        return root
    found = sorted(p for p in root.glob(f"*/{STIMULI_SUBDIR}") if p.is_dir())
    found += sorted(p for p in [root / STIMULI_SUBDIR] if p.is_dir())
    if not found:
        raise CGNError(f"{root} holds no cue-conflict stimuli (<category>/<shape><k>-<texture><j>"
                       f".png, or {STIMULI_SUBDIR} of the texture-vs-shape repository)")
    return found[0]


class CueConflictDataset(Dataset):
    """The cue-conflict stimuli as ``(image, shape_index, texture_index)`` (indices into
    :data:`CATEGORIES`). ``root`` is the public folder ``<root>/<shape category>/<file>.png``
    (a flat folder of stimuli, or the downloaded repository, work too: :func:`cue_conflict_root`).
    All images are kept; the same-category ones are excluded when counting
    (:func:`shape_bias_counts`)."""

    def __init__(self, root: str | os.PathLike, transform: Callable | None = None):
        self.root = cue_conflict_root(root)
        self.transform = transform
        self.samples: list[tuple[Path, int, int]] = []
        for p in sorted(self.root.rglob("*.png")):
            if p.name.startswith("."):
                continue
            shape, texture = parse_stimulus_name(p.name)
            if p.parent != self.root and p.parent.name in _CATEGORY_TABLE and p.parent.name != shape:
                raise CGNError(f"{p}: file names the shape '{shape}' but lies in folder "
                               f"'{p.parent.name}'; the folder is mixed up: re-download it")
            self.samples.append((p, CATEGORIES.index(shape), CATEGORIES.index(texture)))
        if not self.samples:
            raise CGNError(f"{self.root} holds no cue-conflict .png stimuli")

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        path, s, t = self.samples[i]
        with Image.open(path) as im:
            img = im.convert("RGB")
        return (self.transform(img) if self.transform else img), s, t


class IN9Folder(ImageFolder):
    """One IN-9 variant: ``<dir>/<NN_class>/<image>`` with exactly nine class folders, labels
    0..8 in folder order (the challenge names them ``00_dog`` ... ``08_fish``)."""

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


# --------------------------------------------------------------------------------------------
# Registered metrics
# --------------------------------------------------------------------------------------------


def _predict(model: nn.Module, batch) -> Mapping[str, torch.Tensor]:
    return model(batch[0])


@register_metric("imagenet_topk", help="top-1/top-5 accuracy (%) of every prediction on a real "
                                       "validation ImageFolder with ImageNet-1k labels")
def imagenet_topk(model: nn.Module, dataset: Dataset, *, batch_size: int = 64,
                  dist: DistInfo | None = None, workers: int = 0,
                  predictions: Sequence[str] = PREDICTIONS) -> dict[str, float]:
    """``{"real/<pred>/top1": %, "real/<pred>/top5": %, "real/n": N}``."""
    dist = dist or DistInfo(device=next(model.parameters()).device)
    res = evaluate_accuracy(model, eval_loader(dataset, batch_size, dist, workers), (1, 5),
                            predict=lambda m, b: {k: v for k, v in _predict(m, b).items()
                                                  if k in predictions},
                            dist=dist, desc="top-k")
    out: dict[str, float] = {}
    for pred, r in res.items():
        out[f"real/{pred}/top1"], out[f"real/{pred}/top5"] = r["top1"], r["top5"]
        out["real/n"] = r["n"]
    return out


@register_metric("cf_head_accuracy", help="top-1/top-5 accuracy (%) of the shape, texture and "
                                          "background heads on counterfactual validation images")
def cf_head_accuracy(model: nn.Module, dataset: Dataset, *, batch_size: int = 64,
                     dist: DistInfo | None = None, workers: int = 0) -> dict[str, float]:
    """``dataset`` yields (image, shape, texture, background) (the counterfactual format).
    Returns ``{"cf/<head>/top1": %, "cf/<head>/top5": %, "cf/n": N}``."""
    dist = dist or DistInfo(device=next(model.parameters()).device)
    res = evaluate_accuracy(
        model, eval_loader(dataset, batch_size, dist, workers), (1, 5),
        predict=lambda m, b: {h: v for h, v in _predict(m, b).items() if h in HEADS},
        target=lambda b: {"shape": b[1], "texture": b[2], "background": b[3]},
        dist=dist, desc="counterfactual heads")
    out: dict[str, float] = {}
    for head, r in res.items():
        out[f"cf/{head}/top1"], out[f"cf/{head}/top5"] = r["top1"], r["top5"]
        out["cf/n"] = r["n"]
    return out


@register_metric("shape_bias", help="shape bias (%) of every prediction on the cue-conflict "
                                    "stimuli (Geirhos et al. 2019)")
def shape_bias(model: nn.Module, dataset: Dataset, *, batch_size: int = 64,
               dist: DistInfo | None = None, workers: int = 0, exclude_same: bool = True,
               predictions: Sequence[str] = PREDICTIONS) -> dict[str, float]:
    """``dataset`` yields (image, shape_index, texture_index) (:class:`CueConflictDataset`).
    Returns ``{"shape_bias/<pred>": %, "shape_bias/<pred>/shape_hits": .., ".../texture_hits":
    .., "shape_bias/n": images counted, "shape_bias/excluded": same-category images left out}``.
    """
    dist = dist or DistInfo(device=next(model.parameters()).device)

    def count(m: nn.Module, batch) -> dict[str, torch.Tensor]:
        out = {}
        logits = _predict(m, batch)
        for pred in predictions:
            d = decide_16(torch.softmax(logits[pred].float(), dim=1))
            c = shape_bias_counts(d, batch[1], batch[2], exclude_same)
            out[f"{pred}/shape_hits"], out[f"{pred}/texture_hits"] = c["shape_hits"], c["texture_hits"]
            out["n"], out["excluded"] = c["n"], c["excluded"]
        return out

    sums = evaluate_counts(model, eval_loader(dataset, batch_size, dist, workers), count,
                           dist=dist, desc="shape bias")
    res: dict[str, float] = {"shape_bias/n": int(sums.get("n", 0)),
                             "shape_bias/excluded": int(sums.get("excluded", 0))}
    for pred in predictions:
        s, t = sums.get(f"{pred}/shape_hits", 0.0), sums.get(f"{pred}/texture_hits", 0.0)
        res[f"shape_bias/{pred}"] = shape_bias_from_counts(s, t)
        res[f"shape_bias/{pred}/shape_hits"], res[f"shape_bias/{pred}/texture_hits"] = int(s), int(t)
    return res


@register_metric("in9_bg_gap", help="IN-9 accuracy (%) per variant and prediction, and the "
                                    "BG-gap mixed_same - mixed_rand of the shape+texture prediction")
def in9_bg_gap(model: nn.Module, datasets: Mapping[str, Dataset], *, batch_size: int = 64,
               dist: DistInfo | None = None, workers: int = 0,
               predictions: Sequence[str] = PREDICTIONS) -> dict[str, float]:
    """``datasets``: variant name -> dataset of (image, IN-9 label). Returns
    ``{"in9/<variant>/<pred>": %, "in9/<variant>/n": N, "in9/bg_gap": points}`` (the gap only
    when both mixed_same and mixed_rand are given)."""
    dist = dist or DistInfo(device=next(model.parameters()).device)
    table = in_to_in9()

    def count(m: nn.Module, batch) -> dict[str, torch.Tensor]:
        logits = _predict(m, batch)
        y = batch[1]
        out = {"n": torch.tensor(len(y))}
        for pred in predictions:
            mapped = table.to(y.device)[logits[pred].argmax(dim=1)]       # [B] in -1..8
            out[pred] = (mapped == y).sum()
        return out

    res: dict[str, float] = {}
    for variant, ds in datasets.items():
        sums = evaluate_counts(model, eval_loader(ds, batch_size, dist, workers), count,
                               dist=dist, desc=f"IN-9 {variant}")
        n = sums.get("n", 0.0)
        if n == 0:
            raise CGNError(f"IN-9 variant {variant} has no images")
        for pred in predictions:
            res[f"in9/{variant}/{pred}"] = 100.0 * sums[pred] / n
        res[f"in9/{variant}/n"] = int(n)
    if "mixed_same" in datasets and "mixed_rand" in datasets and "shape_texture" in predictions:
        res["in9/bg_gap"] = res["in9/mixed_same/shape_texture"] - res["in9/mixed_rand/shape_texture"]
    return res


# --------------------------------------------------------------------------------------------
# Everything a config asks for
# --------------------------------------------------------------------------------------------

ALL_EVALUATIONS = ("imagenet_topk", "cf_head_accuracy", "shape_bias", "in9_bg_gap")


def evaluate_all(model: nn.Module, cfg, dist: DistInfo | None = None,
                 which: Sequence[str] | None = None, strict: bool = False) -> dict[str, float]:
    """Run the evaluations whose data ``cfg`` (a ClassifierTrainConfig) names.

    ``which``: a subset of :data:`ALL_EVALUATIONS` (default: all). Evaluations whose data is not
    configured are skipped, or an error with ``strict=True`` (an explicit request).
    """
    from cgn.imagenet.cfdata import CounterfactualDataset, split_dir
    from cgn.imagenet.imagefolder import IMAGENET_MEAN, IMAGENET_STD, ImageNetFolder, eval_transform

    dist = dist or DistInfo(device=next(model.parameters()).device)
    which = list(which or ALL_EVALUATIONS)
    unknown = [w for w in which if w not in ALL_EVALUATIONS]
    if unknown:
        raise CGNError(f"unknown evaluation(s) {unknown}; choose from {', '.join(ALL_EVALUATIONS)}")
    d, e = cfg.data, cfg.eval
    tf = eval_transform(d.image_size, d.resize_size)
    kw = {"batch_size": e.batch_size, "dist": dist, "workers": d.workers}
    res: dict[str, float] = {}

    def missing(name: str, what: str) -> None:
        if strict:
            raise CGNError(f"evaluation {name} needs {what}")

    for name in which:
        if name == "imagenet_topk":
            if not d.val_dir:
                missing(name, "--val-dir (a real validation ImageFolder)")
                continue
            ds = ImageNetFolder(d.val_dir, tf, d.class_index or None)
            res.update(imagenet_topk(model, ds, **kw))
        elif name == "cf_head_accuracy":
            if not d.cf_dir or not (split_dir(d.cf_dir, "val") / "labels.csv").is_file():
                missing(name, "--cf-dir with a val split (DIR/val/labels.csv)")
                continue
            res.update(cf_head_accuracy(model, CounterfactualDataset(d.cf_dir, "val", tf), **kw))
        elif name == "shape_bias":
            if not e.cue_conflict_dir:
                missing(name, "--cue-conflict (the cue-conflict stimuli folder)")
                continue
            res.update(shape_bias(model, CueConflictDataset(e.cue_conflict_dir, tf),
                                  exclude_same=e.exclude_same_category, **kw))
        elif name == "in9_bg_gap":
            if not e.in9_dir:
                missing(name, "--in9 (the backgrounds challenge folder)")
                continue
            mean, std = ((IN9_MEAN, IN9_STD) if e.in9_normalization == "in9"
                         else (IMAGENET_MEAN, IMAGENET_STD))
            # IN-9 images are 224 px: resize to the crop size only (identity at 224), as the
            # original feeds them unresized
            tf9 = eval_transform(d.image_size, d.image_size, mean, std)
            sets = {v: IN9Folder(str(in9_variant_dir(e.in9_dir, v)), transform=tf9)
                    for v in e.in9_variants}
            res.update(in9_bg_gap(model, sets, **kw))
    return res
