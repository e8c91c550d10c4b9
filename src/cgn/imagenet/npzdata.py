"""A labelled image set in the ``cgn data build`` contract, read into memory.

The contract: an ``.npz`` with ``images`` (uint8 ``[N, H, W, 3]``) and ``labels`` (integer
``[N]``, class indices from 0); other arrays (``fg_class``, ``bg_class``, masks, ``meta``) may be
there and are ignored. ``cgn data build VARIANT --split train`` writes one, and so does a world
folder's ``train.npz``. Every problem is a one-line :class:`CGNError`.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cgn.errors import CGNError

FIX = "write one with `cgn data build VARIANT --split train --out FILE.npz`"


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
    """Read and check ``images`` and ``labels`` (the first ``limit`` of them when given)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise CGNError(f"training data {p} does not exist; {FIX}")
    try:
        with np.load(p, allow_pickle=False) as z:
            missing = [k for k in ("images", "labels") if k not in z.files]
            if missing:
                held = ", ".join(z.files) or "nothing"
                raise CGNError(f"{p} has no `{missing[0]}` array (it holds {held}); {FIX}")
            images, labels = z["images"], z["labels"]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise CGNError(f"{p} is not a readable .npz ({type(e).__name__}; truncated or not an "
                       f"archive); {FIX}") from None
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3 \
            or images.shape[1] != images.shape[2]:
        raise CGNError(f"{p}: images must be uint8 [N, H, H, 3] (square RGB), got {images.dtype} "
                       f"{list(images.shape)}; {FIX}")
    if labels.ndim != 1 or len(labels) != len(images) or not np.issubdtype(labels.dtype, np.integer):
        raise CGNError(f"{p}: labels must be integer class indices, one per image ([{len(images)}]), "
                       f"got {labels.dtype} {list(labels.shape)}; {FIX}")
    if len(labels) == 0:
        raise CGNError(f"{p} holds no images; {FIX}")
    if labels.min() < 0:
        raise CGNError(f"{p}: label {int(labels.min())} is negative; class indices start at 0")
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()
    return LabelledImages(x, torch.from_numpy(labels.astype(np.int64)), str(p))
