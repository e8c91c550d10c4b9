"""Colored, Double-colored and Wildlife MNIST, built whole-split with vectorised code.

Every split is a pure function of (variant, split, seed, texture set, test-split choice): the
random colours / textures of the OOD test sets are drawn once from the seed, so every evaluation
sees the same test set (the original re-draws them on every access).

Arrays (the export contract of ``cgn data build``):
  images   uint8 [N, 32, 32, 3] RGB
  labels   int64 [N]  the digit
  fg_class int64 [N]  the class whose colour / texture painted the digit
  bg_class int64 [N]  the class whose colour / texture painted the background, -1 if none
  masks    uint8 [N, 32, 32]  the ground-truth object mask: the alpha the digit was painted
                             with (255 = object); files written before masks existed lack it

Reference: docs/reference.md#mnist-variants.
"""

from __future__ import annotations

import functools
import json
import math
import os
from dataclasses import dataclass

import numpy as np
import torch
from PIL import ImageColor
from torch.utils.data import Dataset

from cgn import __version__
from cgn.core.composer import compose
from cgn.errors import CGNError
from cgn.mnist.source import Mnist, load_mnist
from cgn.mnist.textures import TEXTURE_SIZE, TextureSet, get_textures

VARIANTS = ("colored-mnist", "double-colored-mnist", "wildlife-mnist")
SPLITS = ("train", "test")
SIZE = 32

# Colored MNIST: mean digit colour per class (RGB in [0, 1]). The LNTL palette is published only as
# a figure; these are the median digit colours the authors' colored-MNIST CGN paints per label.
COLORED_PALETTE = np.array([
    [0.803, 0.099, 0.338], [0.029, 0.502, 0.485], [0.910, 0.851, 0.100], [0.042, 0.354, 0.792],
    [0.920, 0.520, 0.196], [0.594, 0.182, 0.701], [0.236, 0.906, 0.797], [0.981, 0.838, 0.866],
    [0.845, 0.908, 0.239], [0.653, 0.108, 0.046],
])
COLORED_VARIANCE = 0.02  # σ² of the per-channel colour jitter (LNTL protocol)

# Double-colored MNIST: background colour of class i; object colour of class i is the background
# colour of class (i - 6) mod 10.
DOUBLE_BACKGROUND_NAMES = ("darkgreen", "darkblue", "#b03060", "orangered", "yellow", "burlywood",
                           "lime", "aqua", "fuchsia", "#6495ed")
DOUBLE_NOISE_STD = 0.01
BINARIZE_THRESHOLD = 0.1
TEXTURE_PAD = 3  # reflect padding before the random 32x32 texture crop


def double_colored_tables() -> tuple[np.ndarray, np.ndarray]:
    """(object colours, background colours), each [10, 3] in [0, 1]."""
    bg = np.array([ImageColor.getrgb(c) for c in DOUBLE_BACKGROUND_NAMES], dtype=np.float64) / 255.0
    obj = bg[[(i - 6) % 10 for i in range(10)]]
    return obj, bg


@dataclass(frozen=True)
class SplitSpec:
    variant: str
    split: str
    seed: int = 0
    textures: str | None = None  # texture folder for wildlife (None: procedural set)
    official_test: bool = False  # double-colored / wildlife: test on the official 10k test split

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise CGNError(f"unknown dataset {self.variant!r}; choose one of {', '.join(VARIANTS)}")
        if self.split not in SPLITS:
            raise CGNError(f"unknown split {self.split!r}; choose train or test")
        if self.seed < 0:
            raise CGNError(f"--seed must be non-negative, got {self.seed}")


def upscale_digits(digits: np.ndarray) -> np.ndarray:
    """MNIST digits [N, 28, 28] -> [N, 32, 32], nearest neighbour (source index floor(i * 28 / 32))."""
    idx = (np.arange(SIZE) * digits.shape[1]) // SIZE
    return digits[:, idx][:, :, idx]


def _source_digits(spec: SplitSpec, mnist: Mnist) -> tuple[np.ndarray, np.ndarray, str]:
    if spec.variant == "colored-mnist" or spec.official_test:
        if spec.split == "train":
            return mnist.train_images, mnist.train_labels, "official train [0:60000]"
        return mnist.test_images, mnist.test_labels, "official test [0:10000]"
    if spec.split == "train":
        return mnist.train_images[:50000], mnist.train_labels[:50000], "official train [0:50000]"
    return mnist.train_images[50000:], mnist.train_labels[50000:], "official train [50000:60000]"


def binary_mask(digits: np.ndarray) -> np.ndarray:
    """uint8 digits -> the binarised digit as a uint8 mask (255 = object), the double-colored and
    wildlife alpha."""
    return np.where(digits > BINARIZE_THRESHOLD * 255, np.uint8(255), np.uint8(0))


def _rng(spec: SplitSpec) -> np.random.Generator:
    return np.random.default_rng([spec.seed, VARIANTS.index(spec.variant), SPLITS.index(spec.split)])


def _draw_classes(labels: np.ndarray, train: bool, rng: np.random.Generator) -> np.ndarray:
    """Training: the label's class (full correlation). Test: an independent uniform class."""
    return labels.copy() if train else rng.integers(0, 10, size=len(labels)).astype(np.int64)


CHUNK = 8192  # images composed at a time: bounds peak memory, results do not depend on it


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    """float [N, 3, H, W] in [0, 1] -> uint8 [N, H, W, 3]."""
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def _paint(alpha: np.ndarray, fg, bg) -> np.ndarray:
    """Compose chunk by chunk. ``alpha``: [N, S, S] in [0, 1]; ``fg`` / ``bg``: callables
    mapping a slice to float [n, 3, S, S] images in [0, 1]. Returns uint8 [N, S, S, 3]."""
    out = np.empty(alpha.shape + (3,), dtype=np.uint8)
    for a in range(0, len(alpha), CHUNK):
        sl = slice(a, a + CHUNK)
        m = torch.from_numpy(alpha[sl]).float()[:, None]
        out[sl] = _to_uint8(compose(m, fg(sl), bg(sl)))
    return out


def _flat(colours: np.ndarray):
    """Per-item RGB colours [N, 3] -> a slice-to-image callable of constant-colour images."""
    t = torch.from_numpy(np.clip(colours, 0.0, 1.0)).float()[:, :, None, None]
    return lambda sl: t[sl].expand(-1, -1, SIZE, SIZE)


def _build_colored(digits, labels, train, rng) -> dict:
    fg = _draw_classes(labels, train, rng)
    colour = COLORED_PALETTE[fg] + rng.normal(0.0, math.sqrt(COLORED_VARIANCE), size=(len(fg), 3))
    # The digit's grey level is its alpha: strokes in the jittered class colour on black.
    images = _paint(digits.astype(np.float32) / 255.0, _flat(colour), _flat(np.zeros((len(fg), 3))))
    return {"images": images, "fg_class": fg, "bg_class": np.full_like(fg, -1), "masks": digits.copy()}


def _build_double(digits, labels, train, rng) -> dict:
    obj_table, bg_table = double_colored_tables()
    n = len(labels)
    bg = _draw_classes(labels, train, rng)
    fg = _draw_classes(labels, train, rng)
    bg_col = bg_table[bg] + rng.normal(0.0, DOUBLE_NOISE_STD, size=(n, 3))
    fg_col = obj_table[fg] + rng.normal(0.0, DOUBLE_NOISE_STD, size=(n, 3))
    images = _paint(digits > BINARIZE_THRESHOLD * 255, _flat(fg_col), _flat(bg_col))
    return {"images": images, "fg_class": fg, "bg_class": bg, "masks": binary_mask(digits)}


def _crop_offsets(n: int, rng: np.random.Generator, size: int = SIZE) -> np.ndarray:
    span = TEXTURE_SIZE + 2 * TEXTURE_PAD - size + 1
    return rng.integers(0, span, size=(n, 2))


def _crops(textures: np.ndarray, cls: np.ndarray, offsets: np.ndarray, size: int = SIZE):
    """Slice-to-image callable: random size x size crops of each item's (reflect-padded) texture."""
    p = TEXTURE_PAD
    padded = np.pad(textures, ((0, 0), (p, p), (p, p), (0, 0)), mode="reflect")
    ar = np.arange(size)

    def get(sl):
        c, o = cls[sl], offsets[sl]
        crop = padded[c[:, None, None], (o[:, 0, None] + ar)[:, :, None], (o[:, 1, None] + ar)[:, None, :]]
        return torch.from_numpy(crop).permute(0, 3, 1, 2).float() / 255.0
    return get


def _build_wildlife(digits, labels, train, rng, tex: TextureSet) -> dict:
    bg = _draw_classes(labels, train, rng)
    fg = _draw_classes(labels, train, rng)
    fg_off, bg_off = _crop_offsets(len(fg), rng), _crop_offsets(len(bg), rng)
    images = _paint(digits > BINARIZE_THRESHOLD * 255, _crops(tex.objects, fg, fg_off),
                    _crops(tex.backgrounds, bg, bg_off))
    return {"images": images, "fg_class": fg, "bg_class": bg, "masks": binary_mask(digits)}


@functools.lru_cache(maxsize=8)
def build_split(spec: SplitSpec, mnist_dir: str | None = None) -> dict:
    """Build one split; returns the contract arrays plus ``meta`` (a dict). Cached per process."""
    mnist = load_mnist(mnist_dir)
    digits28, labels, source_range = _source_digits(spec, mnist)
    digits = upscale_digits(digits28)
    labels = labels.astype(np.int64)
    rng = _rng(spec)
    train = spec.split == "train"
    texture_set = None
    if spec.variant == "colored-mnist":
        out = _build_colored(digits, labels, train, rng)
    elif spec.variant == "double-colored-mnist":
        out = _build_double(digits, labels, train, rng)
    else:
        tex = get_textures(spec.textures)
        texture_set = tex.name
        out = _build_wildlife(digits, labels, train, rng, tex)
    out["labels"] = labels
    out["meta"] = {
        "variant": spec.variant, "split": spec.split, "seed": spec.seed, "n": int(len(labels)),
        "mnist_images": source_range, "mnist_source": mnist.source, "texture_set": texture_set,
        "official_test": spec.official_test, "cgn_version": __version__,
    }
    return out


def load_split(variant: str, split: str, seed: int = 0, textures: str | os.PathLike | None = None,
               official_test: bool = False, mnist_dir: str | None = None) -> dict:
    """The public entry point: ``load_split("wildlife-mnist", "test", seed=0)``."""
    spec = SplitSpec(variant, split, int(seed), None if textures is None else str(textures), bool(official_test))
    return build_split(spec, mnist_dir)


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> float32 [N, 3, H, W] in [-1, 1] (the CGN / classifier input range)."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)


def meta_json(meta: dict) -> np.ndarray:
    """``meta`` as a 0-d string array, for storing inside an .npz without pickling."""
    return np.array(json.dumps(meta))


def item_positions(indices, n: int) -> np.ndarray:
    """``indices`` (negative ones counted from the end) as positions in ``0..n-1``; IndexError
    outside (which also ends iteration over a Dataset)."""
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    idx = np.where(idx < 0, idx + n, idx)
    if len(idx) and (idx.min() < 0 or idx.max() >= n):
        raise IndexError(f"index out of range for a data set of {n} images")
    return idx


def image_items(images: np.ndarray, labels: np.ndarray) -> list[tuple[torch.Tensor, int]]:
    """(image float32 [3, 32, 32] in [-1, 1], label) pairs of uint8 images [n, 32, 32, 3]."""
    return list(zip(to_tensor(images).unbind(0), np.asarray(labels).tolist()))


class MnistVariant(Dataset):
    """One split of an MNIST variant (:func:`load_split`) as a ``torch.utils.data.Dataset``.

    Items are ``(image, label)``: the image float32 [3, 32, 32] in [-1, 1] (the CGN's and the
    classifier's input range), the label the digit. The whole split is built on creation (cached
    per process) and kept as read-only arrays: ``images`` (uint8 [N, 32, 32, 3]), ``labels``,
    ``fg_class`` and ``bg_class`` (int64 [N]; ``bg_class`` is -1 where the variant has no
    background class) and ``meta`` (seed, MNIST source, texture set).
    """

    def __init__(self, name: str, split: str = "train", *, seed: int = 0,
                 textures: str | os.PathLike | None = None, official_test: bool = False):
        data = load_split(name, split, seed=seed, textures=textures, official_test=official_test)
        self.name, self.split, self.meta = name, split, dict(data["meta"])
        for key in ("images", "labels", "fg_class", "bg_class"):
            view = data[key].view()  # the cached split stays untouched
            view.flags.writeable = False
            setattr(self, key, view)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.__getitems__([i])[0]

    def __getitems__(self, indices) -> list[tuple[torch.Tensor, int]]:
        idx = item_positions(indices, len(self))
        return image_items(self.images[idx], self.labels[idx])

    def __repr__(self) -> str:
        return f"MnistVariant({self.name!r}, split={self.split!r}, seed={self.meta['seed']}, n={len(self)})"
