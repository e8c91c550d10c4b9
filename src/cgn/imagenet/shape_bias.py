"""Shape bias (Geirhos et al. 2019) on the cue-conflict stimuli, registered in :mod:`cgn.core.metrics`.

The softmax over 1000 classes is mapped to the 16 cue-conflict categories by *averaging* the
probabilities of each category's ImageNet indices (table :data:`CATEGORY_INDICES`), the decision
is the arg-max category; among the images whose decision equals their shape or their texture
category, shape bias = shape hits / (shape hits + texture hits), in %. Images whose shape and
texture categories coincide (e.g. ``airplane10-airplane1.png``; 80 of the 1,280) are *excluded*
by default, as in the original and in Geirhos et al.; with ``exclude_same=False`` they count as a
shape hit *and* a texture hit.

The table is written out below (a fact of the benchmark); tests/test_shape_bias.py checks it
against the authors' reference files.
"""

from __future__ import annotations

import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn
from torch.utils.data import Dataset

from cgn.core.classifier_eval import eval_loader, evaluate_counts
from cgn.core.distributed import DistInfo
from cgn.core.metrics import register_metric
from cgn.errors import CGNError
from cgn.imagenet.ensemble import PREDICTIONS
from cgn.imagenet.imagefolder import expand_indices, read_image

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

CATEGORIES: tuple[str, ...] = tuple(sorted(_CATEGORY_TABLE))
CATEGORY_INDICES: dict[str, list[int]] = {c: expand_indices(_CATEGORY_TABLE[c]) for c in CATEGORIES}


@lru_cache(maxsize=1)
def _category_matrix() -> torch.Tensor:
    """[1000, 16]: column c averages the probabilities of category c's ImageNet indices."""
    m = torch.zeros(1000, len(CATEGORIES), dtype=torch.float64)
    for c, name in enumerate(CATEGORIES):
        idx = CATEGORY_INDICES[name]
        m[idx, c] = 1.0 / len(idx)
    return m


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


# --- the stimuli -------------------------------------------------------------------------------

_STIMULUS = re.compile(r"^([a-z]+)(\d+)-([a-z]+)(\d+)\.png$")


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
        img = read_image(path)
        return (self.transform(img) if self.transform else img), s, t


# --- the metric --------------------------------------------------------------------------------

@register_metric("shape_bias", help="shape bias (%) of every prediction on the cue-conflict "
                                    "stimuli (Geirhos et al. 2019)")
def shape_bias(model: nn.Module, cue_conflict: Dataset, *, batch_size: int = 64,
               dist: DistInfo | None = None, workers: int = 0, exclude_same: bool = True,
               predictions: Sequence[str] = PREDICTIONS) -> dict[str, float]:
    """``cue_conflict`` yields (image, shape_index, texture_index) (:class:`CueConflictDataset`).
    Returns ``{"shape_bias/<pred>": %, "shape_bias/<pred>/shape_hits": .., ".../texture_hits":
    .., "shape_bias/n": images counted, "shape_bias/excluded": same-category images left out}``.
    """
    dist = dist or DistInfo(device=next(model.parameters()).device)

    def count(m: nn.Module, batch) -> dict[str, torch.Tensor]:
        out = {}
        logits = m(batch[0])
        for pred in predictions:
            d = decide_16(torch.softmax(logits[pred].float(), dim=1))
            c = shape_bias_counts(d, batch[1], batch[2], exclude_same)
            out[f"{pred}/shape_hits"], out[f"{pred}/texture_hits"] = c["shape_hits"], c["texture_hits"]
            out["n"], out["excluded"] = c["n"], c["excluded"]
        return out

    sums = evaluate_counts(model, eval_loader(cue_conflict, batch_size, dist, workers), count,
                           dist=dist, desc="shape bias")
    res: dict[str, float] = {"shape_bias/n": int(sums.get("n", 0)),
                             "shape_bias/excluded": int(sums.get("excluded", 0))}
    for pred in predictions:
        s, t = sums.get(f"{pred}/shape_hits", 0.0), sums.get(f"{pred}/texture_hits", 0.0)
        res[f"shape_bias/{pred}"] = shape_bias_from_counts(s, t)
        res[f"shape_bias/{pred}/shape_hits"], res[f"shape_bias/{pred}/texture_hits"] = int(s), int(t)
    return res
