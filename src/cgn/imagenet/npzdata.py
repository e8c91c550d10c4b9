"""The ``cgn data build`` npz contract: one reader for every split in it, and a labelled set in memory.

The contract (docs/data.md, docs/world.md): an ``.npz`` with ``images`` (uint8 ``[N, H, W, 3]``)
and ``labels`` (integer ``[N]``, class indices from 0); ``fg_class`` and ``bg_class`` (integer
``[N]``; -1 = the label's) and ``masks`` (uint8 ``[N, H, W]``, 255 = object) may be there, and a
world split adds its index arrays. ``cgn data build VARIANT --split train`` writes one, a world
folder holds one per split. :func:`read_npz` reads and checks one (the BigGAN stand-in's data,
the splits of a world folder, the files a world is built from); every problem is a one-line
:class:`CGNError` naming the file and the fix.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from cgn.errors import CGNError

FIX = "write one with `cgn data build VARIANT --split train --out FILE.npz`"
CLASS_ARRAYS = {"labels": 0, "fg_class": -1, "bg_class": -1}  # and the smallest class each holds


def read_npz(path: str | os.PathLike, need: Iterable[str] = ("images", "labels"),
             keep: Iterable[str] = (), *, what: str = "", fix: str = FIX, square: bool = False,
             limit: int | None = None) -> dict[str, np.ndarray]:
    """The arrays ``need`` (each must be there) and ``keep`` (read when there) of an npz in the
    contract, checked: ``images`` uint8 [N, H, W, 3] with H, W >= 8 (H == W with ``square``),
    ``masks`` uint8 [N, H, W] of the images' size and 255 = object, the class arrays integer
    [N] (``labels`` >= 0, ``fg_class`` / ``bg_class`` >= -1), every array one row per image,
    N >= 1. ``limit``: the first N rows only. ``what`` names the file in messages, ``fix`` ends them."""
    p = Path(path).expanduser()
    name = f"{what} {p}" if what else str(p)
    need, keep = tuple(need), tuple(keep)
    if not p.is_file():
        raise CGNError(f"{name} does not exist; {fix}")
    try:
        with np.load(p, allow_pickle=False) as z:
            missing = [k for k in need if k not in z.files]
            if missing:
                held = ", ".join(z.files) or "nothing"
                raise CGNError(f"{name} has no `{missing[0]}` array (it holds {held}); {fix}")
            arrays = {k: z[k] for k in need + keep if k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise CGNError(f"{name} is not a readable .npz ({type(e).__name__}; truncated or not an "
                       f"archive); {fix}") from None
    _check(arrays, name, fix, square)
    if limit:
        arrays = {k: v[:limit] for k, v in arrays.items()}
    return arrays


def _check(arrays: dict[str, np.ndarray], name: str, fix: str, square: bool) -> None:
    im = arrays.get("images")
    if im is not None:
        if im.dtype != np.uint8 or im.ndim != 4 or im.shape[3] != 3 or min(im.shape[1:3]) < 8 \
                or (square and im.shape[1] != im.shape[2]):
            form = "[N, H, H, 3] (square RGB)" if square else "[N, H, W, 3]"
            raise CGNError(f"{name}: images must be uint8 {form} with H, W >= 8, got {im.dtype} "
                           f"{list(im.shape)}; {fix}")
    m = arrays.get("masks")
    if m is not None:
        want = list(im.shape[:3]) if im is not None else "[N, H, W]"
        if m.dtype != np.uint8 or m.ndim != 3 or (im is not None and m.shape != im.shape[:3]):
            raise CGNError(f"{name}: masks must be uint8 [N, H, W] matching the images {want}, "
                           f"got {m.dtype} {list(m.shape)}; {fix}")
        if len(m) and m.max() <= 1:
            raise CGNError(f"{name}: masks hold only 0 and 1; the contract is 255 = object "
                           "(multiply them by 255)")
    first = im if im is not None else next(iter(arrays.values()), np.zeros(0))
    n = len(first) if first.ndim else 0
    if n == 0:
        raise CGNError(f"{name} holds no images; {fix}")
    for key, lowest in CLASS_ARRAYS.items():
        a = arrays.get(key)
        if a is None:
            continue
        if a.shape != (n,) or not np.issubdtype(a.dtype, np.integer):
            raise CGNError(f"{name}: `{key}` must be integer class indices, one per image ([{n}]), "
                           f"got {a.dtype} {list(a.shape)}; {fix}")
        if a.min() < lowest:
            raise CGNError(f"{name}: `{key}` holds {int(a.min())}; classes are 0..K-1"
                           + (" (-1 = none, for fg_class / bg_class)" if lowest < 0 else ""))
    rows = {k: v.shape[0] if v.ndim else 0 for k, v in arrays.items()}
    bad = [f"`{k}` has {r}" for k, r in rows.items() if r != n]
    if bad:
        raise CGNError(f"{name}: every array needs one row per image ({n}), but "
                       f"{', '.join(bad)}; {fix}")


@dataclass
class LabelledImages:
    images: torch.Tensor   # uint8 [N, 3, H, W]
    labels: torch.Tensor   # int64 [N]
    source: str

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def resolution(self) -> int:
        return int(self.images.shape[-1])

    def batch(self, idx: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Images in [-1, 1] (float32 [B, 3, H, W]) and labels [B] of the given indices."""
        x = self.images[idx].to(device=device, dtype=torch.float32).div_(127.5).sub_(1.0)
        return x, self.labels[idx].to(device)

    def check_labels(self, num_classes: int, option: str = "--num-classes") -> None:
        top = int(self.labels.max())
        if top >= num_classes:
            raise CGNError(f"{self.source}: label {top} is out of range for {num_classes} classes; "
                           f"pass {option} {top + 1} (or 0: from the data) or fix the labels")


def load_labelled_npz(path: str | Path, limit: int | None = None) -> LabelledImages:
    """Read and check square ``images`` and ``labels`` (the first ``limit`` of them when given)."""
    arrays = read_npz(path, what="training data", square=True, limit=limit)
    images, labels = arrays["images"], arrays["labels"]
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()
    return LabelledImages(x, torch.from_numpy(labels.astype(np.int64)), str(Path(path).expanduser()))
