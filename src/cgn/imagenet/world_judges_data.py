"""What each judge is trained and tested on, read or rendered from a world's splits.

- ``world_classifier``: the split's images, labelled with their class (``labels``).
- ``shape_judge``: the ground-truth masks, labelled with the shape class (``labels``).
- ``texture_judge``: full-frame texture images, labelled with the texture class (``fg_class``).
  Wildlife MNIST: the image's object texture crop itself (class ``fg_class``, offset
  ``fg_offset``), the picture the digit's alpha cut its object from. A world from npz files: the
  mirror-tiled texture of the image's object core (:func:`cgn.imagenet.world_ops.texture_tiles`).
- ``background_judge``: background images without object, labelled ``bg_class``. Wildlife
  MNIST: the background texture crop (``bg_class``, ``bg_offset``); npz: the image's background
  with its object inpainted (:func:`cgn.imagenet.world_ops.backgrounds`).

Wildlife renders are exact: before using them, the first images of the split are painted again
from the rendered crops and their masks and must equal the stored images byte for byte (a world
built with ``--textures DIR`` needs the same folder). Training uses the ``train`` split, the
held-out accuracy the ``test`` split.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from cgn.errors import CGNError
from cgn.imagenet.world_data import load_split_arrays, read_manifest
from cgn.imagenet.world_judges import JUDGES

CHECK_IMAGES = 64  # images painted again to check the wildlife renders


class JudgeSet(Dataset):
    """uint8 inputs [N, C, S, S] and labels [N], served a batch at a time: masks (C = 1) as
    floats in [0, 1], images in [-1, 1]."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, kind: str):
        self.x, self.y, self.kind = x, y, kind

    def __len__(self) -> int:
        return len(self.y)

    def __getitems__(self, indices):
        idx = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        x = self.x[idx].float()
        x = x.div_(255.0) if self.kind == "mask" else x.div_(127.5).sub_(1.0)
        return x, self.y[idx]

    def __getitem__(self, i: int):
        x, y = self.__getitems__([i])
        return x[0], y[0]


def stacked(batch):
    """Collate for batches that :meth:`JudgeSet.__getitems__` already stacked."""
    return batch


def texture_set(manifest: dict, textures: str | os.PathLike | None):
    """The texture set a wildlife world was painted with (``textures``: its folder, if any)."""
    from cgn.mnist.textures import matching_textures
    want = manifest.get("source", {}).get("texture_set", "procedural")
    return matching_textures(want, textures, "this world was painted")


def _wildlife_crops(arrays: dict, tex, which: str, size: int) -> np.ndarray:
    """uint8 [N, S, S, 3]: each image's object (``fg``) or background (``bg``) texture crop."""
    from cgn.mnist.variants import CHUNK, _crops, _to_uint8
    cls, off = arrays[f"{which}_class"], arrays.get(f"{which}_offset")
    if off is None:
        raise CGNError("the world's split has no crop offsets (fg_offset / bg_offset); rebuild it "
                       "with `cgn imagenet world build`")
    crops = _crops(tex.objects if which == "fg" else tex.backgrounds, cls, off, size)
    out = np.empty((len(cls), size, size, 3), dtype=np.uint8)
    for a in range(0, len(cls), CHUNK):
        out[a:a + CHUNK] = _to_uint8(crops(slice(a, a + CHUNK)))
    return out


def check_wildlife_renders(arrays: dict, fg: np.ndarray, bg: np.ndarray, where: str) -> None:
    """The split's first images must be their masks compositing the rendered crops exactly."""
    from cgn.mnist.variants import _paint
    n = min(CHECK_IMAGES, len(fg))
    alpha = arrays["masks"][:n].astype(np.float32) / 255.0
    to = lambda a: (lambda sl: torch.from_numpy(a[:n][sl]).permute(0, 3, 1, 2).float() / 255.0)  # noqa: E731
    again = _paint(alpha, to(fg), to(bg))
    if not np.array_equal(again, arrays["images"][:n]):
        raise CGNError(f"{where}: the images are not their textures painted again (another texture "
                       "set, or a changed world); pass the --textures folder the world was built "
                       "with, or rebuild the world")


def _npz_renders(arrays: dict, judge: str) -> tuple[np.ndarray, np.ndarray]:
    from cgn.imagenet.world_ops import BG_MAX, OBJ_MIN, backgrounds, texture_tiles
    m = arrays["masks"]
    if judge == "texture_judge":
        idx = np.flatnonzero((m >= OBJ_MIN).any(axis=(1, 2)))
        x, y = texture_tiles(arrays["images"], m, idx), arrays["fg_class"][idx]
    else:
        idx = np.flatnonzero((m < BG_MAX).any(axis=(1, 2)))
        x, y = backgrounds(arrays["images"], m, idx), arrays["bg_class"][idx]
    if len(idx) == 0:
        raise CGNError(f"no image of the world has the {'object' if judge == 'texture_judge' else 'background'}"
                       " pixels the judge needs (check its masks)")
    return np.clip(np.round(x), 0, 255).astype(np.uint8), y


def judge_set(root: str | os.PathLike, split: str, judge: str, *, limit: int = 0,
              textures: str | os.PathLike | None = None) -> JudgeSet:
    """The inputs and labels of ``judge`` from ``split`` of the world at ``root`` (the first
    ``limit`` images when > 0)."""
    if judge not in JUDGES:
        raise CGNError(f"unknown judge {judge!r}; choose one of {', '.join(JUDGES)}")
    manifest = read_manifest(root)
    arrays, _ = load_split_arrays(root, split)
    if limit > 0:
        arrays = {k: v[:limit] for k, v in arrays.items()}
    kind = JUDGES[judge][0]
    if judge == "world_classifier":
        x, y = arrays["images"], arrays["labels"]
    elif judge == "shape_judge":
        x, y = arrays["masks"][..., None], arrays["labels"]
    elif manifest.get("world") == "npz":
        x, y = _npz_renders(arrays, judge)
    else:
        tex, size = texture_set(manifest, textures), int(arrays["images"].shape[1])
        fg, bg = _wildlife_crops(arrays, tex, "fg", size), _wildlife_crops(arrays, tex, "bg", size)
        check_wildlife_renders(arrays, fg, bg, f"{Path(root)} {split}")
        x, y = (fg, arrays["fg_class"]) if judge == "texture_judge" else (bg, arrays["bg_class"])
    x = torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2).contiguous()
    return JudgeSet(x, torch.from_numpy(np.asarray(y, dtype=np.int64)), kind)
