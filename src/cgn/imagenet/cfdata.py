"""The counterfactual ImageNet dataset format, written by the CGN and read by the classifier.

Layout of one dataset folder ``DIR``::

    DIR/train/0000000.png          RGB images, file name = ``<index:07d>.png``
    DIR/train/0000001.png
    DIR/train/labels.csv           header: image,seed,shape_class,texture_class,background_class
    DIR/val/...                    the same for the validation split

``labels.csv`` holds one row per image: the file name, the per-image seed the generator used (so
the image can be regenerated bit for bit), and the ImageNet-1k class indices (0..999) given to the
shape, texture and background mechanisms. The *label* of a counterfactual image for a classifier
trained on shape is ``shape_class``; the ensemble
(docs/reference.md#classifier-ensemble) uses all three.

Writing is resumable and crash-safe:

- an image is written atomically (temporary file + rename) *before* its CSV row is appended;
- a row is a single ``write`` followed by ``fsync``, so the CSV never holds a row for a missing
  image;
- on restart the writer reads the existing rows, drops a torn last line (a crash in the middle of
  an append), deletes *orphans* (image files or temporary files without a row) and continues at
  the next index.
"""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from cgn.errors import CGNError
from cgn.io import atomic_write

SPLITS = ("train", "val")
HEADER = ("image", "seed", "shape_class", "texture_class", "background_class")
LABELS_FILE = "labels.csv"
NUM_CLASSES = 1000
_NAME = re.compile(r"^(\d{7})\.png$")


@dataclass(frozen=True)
class CFRow:
    """One row of ``labels.csv``."""
    image: str
    seed: int
    shape_class: int
    texture_class: int
    background_class: int

    @property
    def index(self) -> int:
        return int(self.image[:7])

    def as_csv(self) -> str:
        return (f"{self.image},{self.seed},{self.shape_class},{self.texture_class},"
                f"{self.background_class}\n")


def image_name(index: int) -> str:
    return f"{int(index):07d}.png"


def split_dir(root: str | os.PathLike, split: str) -> Path:
    if split not in SPLITS:
        raise CGNError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    return Path(root) / split


def _check_class(value: int, what: str, where: str) -> int:
    if not 0 <= value < NUM_CLASSES:
        raise CGNError(f"{where}: {what} {value} is not an ImageNet-1k class index (0..999); "
                       "the file is corrupt or was not written by cgn: regenerate it")
    return value


def read_rows(root: str | os.PathLike, split: str, *, tolerate_torn_tail: bool = False) -> list[CFRow]:
    """Parse ``DIR/<split>/labels.csv`` strictly (header, ints, class range, unique names).

    With ``tolerate_torn_tail`` a last line without its newline (a crash mid-append) is ignored,
    which is what the resuming writer wants; readers see it as an error.
    """
    path = split_dir(root, split) / LABELS_FILE
    if not path.is_file():
        raise CGNError(f"{path} does not exist; generate the dataset first "
                       "(cgn imagenet generate --mode dataset ...) or check the folder")
    text = path.read_text()
    lines = text.split("\n")
    # ``text`` ends with "\n" when complete, leaving an empty last element.
    torn = lines[-1] != ""
    body = lines[:-1]
    if torn and not tolerate_torn_tail:
        raise CGNError(f"{path}: the last line is incomplete (an interrupted write); rerun the "
                       "generator on this folder to repair and finish it")
    if not body or tuple(body[0].strip().split(",")) != HEADER:
        raise CGNError(f"{path}: first line must be the header {','.join(HEADER)}; "
                       "the file was not written by cgn")
    rows: list[CFRow] = []
    seen: set[str] = set()
    for lineno, line in enumerate(body[1:], start=2):
        if not line.strip():
            continue
        parts = next(csv.reader([line]))
        where = f"{path}:{lineno}"
        if len(parts) != len(HEADER) or not _NAME.match(parts[0]):
            raise CGNError(f"{where}: expected '<index:07d>.png,seed,shape,texture,background', "
                           f"got {line!r}; the file is corrupt: regenerate it")
        try:
            seed, s, t, b = (int(p) for p in parts[1:])
        except ValueError:
            raise CGNError(f"{where}: non-integer field in {line!r}; regenerate the file") from None
        if parts[0] in seen:
            raise CGNError(f"{where}: image {parts[0]} listed twice; regenerate the file")
        seen.add(parts[0])
        rows.append(CFRow(parts[0], seed, _check_class(s, "shape_class", where),
                          _check_class(t, "texture_class", where),
                          _check_class(b, "background_class", where)))
    return rows


def to_pil(image: torch.Tensor | np.ndarray | Image.Image) -> Image.Image:
    """An RGB PIL image from a PIL image, a uint8 ``[H, W, 3]`` array, or a float tensor
    ``[3, H, W]`` with values in [0, 1] (rounded to 8 bits, as PNG stores them)."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, torch.Tensor):
        if image.dim() != 3 or image.shape[0] != 3 or not image.is_floating_point():
            raise ValueError(f"expected a float tensor [3, H, W] in [0, 1], got "
                             f"{image.dtype} {tuple(image.shape)}")
        arr = (image.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8)
        return Image.fromarray(arr.permute(1, 2, 0).numpy(), "RGB")
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected a uint8 array [H, W, 3], got {arr.dtype} {arr.shape}")
    return Image.fromarray(arr, "RGB")


class CFDatasetWriter:
    """Append-only, resumable writer of one split.

    >>> w = CFDatasetWriter(root, "train")
    >>> for i in range(w.next_index, n):
    ...     w.add(img, seed=s, shape_class=y_s, texture_class=y_t, background_class=y_b)
    """

    def __init__(self, root: str | os.PathLike, split: str):
        self.root = Path(root)
        self.split = split
        self.dir = split_dir(root, split)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.csv_path = self.dir / LABELS_FILE
        self.rows: list[CFRow] = self._recover()
        self.removed_orphans: int = self._remove_orphans()

    # -- restart -------------------------------------------------------------------------------
    def _recover(self) -> list[CFRow]:
        if not self.csv_path.exists():
            with atomic_write(self.csv_path, "w") as f:
                f.write(",".join(HEADER) + "\n")
            return []
        rows = read_rows(self.root, self.split, tolerate_torn_tail=True)
        text = self.csv_path.read_text()
        if not text.endswith("\n"):
            # Drop the torn last line so the next append starts on a fresh line.
            with atomic_write(self.csv_path, "w") as f:
                f.write(text[: text.rfind("\n") + 1])
        for i, r in enumerate(rows):
            if r.index != i:
                raise CGNError(f"{self.csv_path}: row {i + 2} names {r.image}, expected "
                               f"{image_name(i)}; rows must be contiguous: regenerate the split")
            if not (self.dir / r.image).is_file():
                raise CGNError(f"{self.csv_path} lists {r.image}, but the file is missing; the "
                               "folder was edited by hand: regenerate the split")
        return rows

    def _remove_orphans(self) -> int:
        listed = {r.image for r in self.rows}
        removed = 0
        for p in self.dir.iterdir():
            is_tmp = p.name.startswith(".") and p.name.endswith(".tmp")
            if (is_tmp or (_NAME.match(p.name) and p.name not in listed)) and p.is_file():
                p.unlink()
                removed += 1
        return removed

    # -- writing -------------------------------------------------------------------------------
    @property
    def next_index(self) -> int:
        return len(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def add(self, image: torch.Tensor | np.ndarray | Image.Image, *, seed: int, shape_class: int,
            texture_class: int, background_class: int) -> CFRow:
        """Write the next image (atomically), then append its row. Returns the row."""
        where = f"{self.csv_path} (new row)"
        row = CFRow(image_name(self.next_index), int(seed),
                    _check_class(int(shape_class), "shape_class", where),
                    _check_class(int(texture_class), "texture_class", where),
                    _check_class(int(background_class), "background_class", where))
        pil = to_pil(image)
        with atomic_write(self.dir / row.image, "wb") as f:
            pil.save(f, format="PNG")
        with open(self.csv_path, "a") as f:
            f.write(row.as_csv())
            f.flush()
            os.fsync(f.fileno())
        self.rows.append(row)
        return row


class CounterfactualDataset(torch.utils.data.Dataset):
    """A split of a counterfactual dataset as ``(image, shape, texture, background)``.

    ``transform`` is applied to the RGB PIL image (torchvision convention); without one the image
    is returned as a float tensor ``[3, H, W]`` in [0, 1]. The labels are plain ints.
    """

    def __init__(self, root: str | os.PathLike, split: str = "train",
                 transform: Callable | None = None):
        self.root = Path(root)
        self.split = split
        self.dir = split_dir(root, split)
        self.rows = read_rows(root, split)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        r = self.rows[i]
        path = self.dir / r.image
        try:
            with Image.open(path) as im:
                img = im.convert("RGB")
        except (FileNotFoundError, OSError) as e:
            raise CGNError(f"cannot read {path} ({e}); regenerate the dataset") from None
        if self.transform is not None:
            x = self.transform(img)
        else:
            x = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255
        return x, r.shape_class, r.texture_class, r.background_class

    def labels(self, which: str = "shape_class") -> list[int]:
        if which not in HEADER[2:]:
            raise CGNError(f"unknown label column {which!r}; use one of {', '.join(HEADER[2:])}")
        return [getattr(r, which) for r in self.rows]
