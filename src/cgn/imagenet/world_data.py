"""Reading a world folder (:mod:`cgn.imagenet.world`): the manifest and a Dataset per split.

:class:`WorldSplit` serves a split like the ImageNet datasets do: by default ``(image, label)``
as ``ImageNetFolder`` (label = the shape class); ``returns=("image", "shape", "texture")`` gives
the cue-conflict triple of ``CueConflictDataset``; ``("image", "mask")`` the U2-Net pairs.
Without a ``transform`` an image is a float tensor [3, S, S] in ``value_range`` (default
[-1, 1]: what BigGAN draws and the CGN and U2-Net take); with one, the transform gets the RGB
PIL image (torchvision convention, e.g. ``cgn.imagenet.imagefolder.eval_transform`` for the
classifiers' ImageNet normalisation). A mask is a float tensor [1, S, S] in [0, 1] and is never
transformed: with ``"mask"`` in ``returns`` use no geometric transform. :meth:`WorldSplit.batch`
returns many items at once as tensors, for trainers that slice the arrays directly.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from cgn.errors import CGNError
from cgn.imagenet.npzdata import read_npz
from cgn.io import file_digest, read_json

MANIFEST = "world.json"
FORMAT, VERSION = "cgn-world", 1
FIELDS = {"image": None, "label": "labels", "shape": "labels", "texture": "fg_class",
          "background": "bg_class", "mask": "masks", "index": None}
ARRAYS = ("images", "labels", "fg_class", "bg_class", "masks", "object_index", "texture_index",
          "background_index", "fg_offset", "bg_offset")  # the first five in every split
_verified: dict[tuple[str, int, int], str] = {}  # files hashed in this process, while unchanged


def read_manifest(root: str | os.PathLike) -> dict:
    root = Path(root)
    if not root.is_dir():
        raise CGNError(f"world folder {root} does not exist; build one with "
                       "`cgn imagenet world build --out DIR`")
    if not (root / MANIFEST).is_file():
        raise CGNError(f"{root} has no {MANIFEST}: not a world folder, or its build was cut "
                       "short; (re)build it with `cgn imagenet world build --out DIR`")
    m = read_json(root / MANIFEST, "world manifest")
    if not isinstance(m, dict) or m.get("format") != FORMAT or m.get("version") != VERSION:
        raise CGNError(f"{root / MANIFEST} is not a cgn world manifest (version 1); rebuild the world")
    return m


def _verify(path: Path, want: str) -> None:
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if _verified.get(key) == want:
        return
    if file_digest(path) != want:
        raise CGNError(f"{path} does not match the sha256 in its {MANIFEST} (changed or damaged); "
                       "rebuild the world")
    _verified[key] = want


def load_split_arrays(root: str | os.PathLike, split: str, verify: bool = True) -> tuple[dict, dict]:
    """(arrays, manifest entry) of one split; ``original`` is the test split (IN-9 Original)."""
    root = Path(root)
    entries = read_manifest(root)["splits"]
    if split not in entries:
        raise CGNError(f"unknown world split {split!r}; choose one of {', '.join(entries)}")
    entry = entries[split]
    path = root / entry["file"]
    if not path.is_file():
        raise CGNError(f"{path} is missing from the world folder; rebuild the world")
    if verify:
        _verify(path, entry["sha256"])
    arrays = read_npz(path, ARRAYS[:5], ARRAYS[5:], what="world split", fix="rebuild the world")
    return arrays, entry


class WorldSplit(Dataset):
    """One split of a world folder (see the module docstring)."""

    def __init__(self, root: str | os.PathLike, split: str, *,
                 returns: Sequence[str] = ("image", "label"), transform: Callable | None = None,
                 value_range: tuple[float, float] = (-1.0, 1.0), verify: bool = True):
        bad = [r for r in returns if r not in FIELDS]
        if bad or not returns:
            raise CGNError(f"unknown world field(s) {bad}; choose among {', '.join(FIELDS)}")
        self.root, self.split = Path(root), split
        self.returns, self.transform = tuple(returns), transform
        self.lo, self.hi = float(value_range[0]), float(value_range[1])
        arrays, self.entry = load_split_arrays(root, split, verify)
        self.manifest = read_manifest(root)
        self.images, self.masks = arrays["images"], arrays["masks"]
        self.labels, self.fg_class, self.bg_class = arrays["labels"], arrays["fg_class"], arrays["bg_class"]
        self.arrays = arrays
        self.num_classes = int(self.manifest["num_classes"])
        self.classes = [str(c) for c in range(self.num_classes)]
        self.targets = self.labels.tolist()  # as torchvision's ImageFolder

    def __len__(self) -> int:
        return len(self.labels)

    def _image(self, i: int):
        if self.transform is not None:
            from PIL import Image
            return self.transform(Image.fromarray(self.images[i]))
        return self.to_range(torch.from_numpy(self.images[i]).permute(2, 0, 1))

    def to_range(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 [..., 3, H, W] -> float32 in ``value_range``."""
        return x.float().mul_((self.hi - self.lo) / 255.0).add_(self.lo)

    def __getitem__(self, i: int):
        out = []
        for r in self.returns:
            if r == "image":
                out.append(self._image(i))
            elif r == "mask":
                out.append(torch.from_numpy(self.masks[i]).float().div_(255.0)[None])
            elif r == "index":
                out.append(int(i))
            else:
                out.append(int(self.arrays[FIELDS[r]][i]))
        return out[0] if len(out) == 1 else tuple(out)

    def batch(self, idx) -> dict[str, torch.Tensor]:
        """Items ``idx`` (indices or a slice) as tensors: ``image`` [B, 3, S, S] in
        ``value_range``, ``mask`` [B, 1, S, S] in [0, 1], ``shape`` / ``texture`` /
        ``background`` [B] long."""
        images = torch.from_numpy(np.ascontiguousarray(self.images[idx])).permute(0, 3, 1, 2)
        return {"image": self.to_range(images),
                "mask": torch.from_numpy(self.masks[idx].astype(np.float32) / 255.0)[:, None],
                "shape": torch.from_numpy(self.labels[idx]),
                "texture": torch.from_numpy(self.fg_class[idx]),
                "background": torch.from_numpy(self.bg_class[idx])}
