"""Images with ground-truth object masks, and how well a saliency network finds the masks.

Data: a split in the ``cgn data build`` contract (an ``.npz`` with uint8 ``images`` [N, H, W, 3]
and int64 ``labels``; ``fg_class``, ``bg_class`` and ``meta`` may be there) plus ``masks``: uint8
[N, H, W], 255 = object, 0 = background (values between are a soft edge). :func:`load_masked_split`
reads and checks one; :class:`MaskedImages` serves it the way the ImageNet CGN feeds U²-Net: images
scaled to [-1, 1] (no mean/std normalisation) at one resolution, masks as targets in [0, 1].

Metric ``mask_iou`` (registered in :mod:`cgn.core.metrics`): per image, the prediction
``saliency >= threshold`` (0.5) against the ground truth ``mask >= 0.5``; IoU = |P ∩ G| / |P ∪ G|
(1 when both are empty), MAE = mean |saliency − mask| over the pixels. Both are averaged over the
images (the mean IoU and the MAE of salient-object detection). Counts are summed over DDP ranks
(every image counted once) before anything is divided.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from cgn.core.classifier_eval import eval_loader, evaluate_counts
from cgn.core.distributed import DistInfo
from cgn.core.metrics import register_metric
from cgn.errors import CGNError

Flip = Literal["none", "horizontal", "vertical"]


def load_masked_split(path: str | os.PathLike, limit: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images [N, H, W, 3] and masks [N, H, W] of an npz split (the first ``limit``
    when > 0); a file that breaks the contract is a one-line CGNError."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise CGNError(f"data set {p} does not exist; build it with `cgn data build` (with masks) "
                       "or check the path")
    try:
        with np.load(p, allow_pickle=False) as z:
            names = set(z.files)
            if "images" not in names:
                raise CGNError(f"{p} holds no 'images' array; it is not a split in the `cgn data "
                               "build` contract (uint8 images N x H x W x 3)")
            if "masks" not in names:
                raise CGNError(f"{p} holds no 'masks' array; a U2-Net needs ground-truth masks: add "
                               "uint8 masks N x H x W (255 = object) to the npz")
            images, masks = z["images"], z["masks"]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise CGNError(f"{p} is not a readable .npz file ({str(e).strip()[:120]}); rebuild it") from None
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
        raise CGNError(f"{p}: images are {images.dtype} {tuple(images.shape)}; the contract is uint8 "
                       "N x H x W x 3")
    if masks.dtype == np.bool_:
        masks = masks.astype(np.uint8) * 255
    if masks.dtype != np.uint8 or tuple(masks.shape) != tuple(images.shape[:3]):
        raise CGNError(f"{p}: masks are {masks.dtype} {tuple(masks.shape)} but the images "
                       f"{tuple(images.shape)}; masks must be uint8 N x H x W of the images' size")
    if len(images) == 0:
        raise CGNError(f"{p} holds no images")
    if limit > 0:
        images, masks = images[:limit], masks[:limit]
    return images, masks


class MaskedImages(Dataset):
    """(image [3, S, S] in [-1, 1], mask [1, S, S] in [0, 1]) pairs, a whole batch at a time.

    ``size``: the side the network sees (0 = as stored; otherwise both are resized bilinearly,
    with antialiasing). ``flip``: each image and its mask are mirrored together with probability
    1/2, drawn from torch's global RNG (which the trainer's data order seeds per batch).
    """

    def __init__(self, images: np.ndarray, masks: np.ndarray, size: int = 0, flip: Flip = "none"):
        self.images = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()
        self.masks = torch.from_numpy(np.ascontiguousarray(masks)).unsqueeze(1)
        self.size = int(size) or int(self.images.shape[-1])
        self.flip = flip

    def __len__(self) -> int:
        return self.images.shape[0]

    def head(self, n: int) -> "MaskedImages":
        """The first ``n`` pairs (a view, no flips)."""
        out = MaskedImages.__new__(MaskedImages)
        out.images, out.masks, out.size, out.flip = self.images[:n], self.masks[:n], self.size, "none"
        return out

    @property
    def stored_size(self) -> tuple[int, int]:
        return int(self.images.shape[2]), int(self.images.shape[3])

    def __getitems__(self, indices) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        x = self.images[idx].float().div_(127.5).sub_(1.0)            # [B, 3, H, W] in [-1, 1]
        m = self.masks[idx].float().div_(255.0)                       # [B, 1, H, W] in [0, 1]
        if self.stored_size != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=True,
                              align_corners=False).clamp_(-1, 1)
            m = F.interpolate(m, size=(self.size, self.size), mode="bilinear", antialias=True,
                              align_corners=False).clamp_(0, 1)
        if self.flip != "none":
            dim = -1 if self.flip == "horizontal" else -2
            sel = torch.rand(len(idx)) < 0.5
            x[sel], m[sel] = x[sel].flip(dim), m[sel].flip(dim)
        return x, m

    def __getitem__(self, i: int):
        x, m = self.__getitems__([i])
        return x[0], m[0]


def stacked(batch):
    """Collate for batches that :meth:`MaskedImages.__getitems__` already stacked."""
    return batch


def mask_counts(saliency: torch.Tensor, target: torch.Tensor, threshold: float = 0.5) -> dict:
    """Per-batch sums: ``iou`` and ``mae`` summed over the images, and ``n``.

    saliency, target: [B, 1, H, W] in [0, 1] (the target is binarised at 0.5 for the IoU)."""
    pred = saliency >= threshold
    gt = target >= 0.5
    inter = (pred & gt).flatten(1).sum(1).double()
    union = (pred | gt).flatten(1).sum(1).double()
    iou = torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))
    mae = (saliency.double() - target.double()).abs().flatten(1).mean(1)
    return {"iou": iou.sum(), "mae": mae.sum(), "n": torch.tensor(float(len(iou)))}


@register_metric("mask_iou", help="mean IoU (saliency >= 0.5 vs the ground-truth mask) and MAE of "
                                  "a saliency network on images with masks")
def mask_iou(model: nn.Module, mask_set: Dataset, *, batch_size: int = 256, threshold: float = 0.5,
             dist: DistInfo | None = None) -> dict[str, float]:
    """``model(x)``: saliency [B, 1, H, W] in [0, 1]; ``mask_set`` yields (image, mask) batches
    (:class:`MaskedImages`). Returns ``{"iou", "mae", "n"}``."""
    dist = dist or DistInfo(device=next(model.parameters()).device)
    was = model.training
    model.eval()
    try:
        sums = evaluate_counts(model, eval_loader(mask_set, batch_size, dist, collate_fn=stacked),
                               lambda m, b: mask_counts(m(b[0]), b[1], threshold),
                               dist=dist, desc="mask IoU")
    finally:
        model.train(was)
    n = sums.get("n", 0.0)
    if n == 0:
        raise CGNError("mask_iou: the evaluation set is empty")
    return {"iou": sums["iou"] / n, "mae": sums["mae"] / n, "n": int(n)}
