"""Image grids: ``make_grid`` for uint8 batches and the train/test preview of a dataset."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image, ImageDraw

from cgn.io import atomic_write


def make_grid(images: np.ndarray, ncol: int, pad: int = 2, pad_value: int = 255) -> np.ndarray:
    """uint8 [N, H, W, 3] -> one uint8 [rows*(H+pad)+pad, ncol*(W+pad)+pad, 3] image."""
    n, h, w, c = images.shape
    nrow = max(1, -(-n // ncol))
    grid = np.full((nrow * (h + pad) + pad, ncol * (w + pad) + pad, c), pad_value, dtype=np.uint8)
    for i in range(n):
        r, q = divmod(i, ncol)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h, pad + q * (w + pad): pad + q * (w + pad) + w] = images[i]
    return grid


def save_png(path: str | os.PathLike, image: np.ndarray | Image.Image, scale: int = 1) -> None:
    im = image if isinstance(image, Image.Image) else Image.fromarray(image)
    if scale != 1:
        im = im.resize((im.width * scale, im.height * scale), Image.NEAREST)
    with atomic_write(path, "wb") as f:
        im.save(f, format="PNG")


def per_class_samples(images: np.ndarray, labels: np.ndarray, per_class: int) -> np.ndarray:
    """``per_class`` rows of 10 columns; column c shows the first images labelled c."""
    rows = []
    for r in range(per_class):
        rows.append(np.stack([images[np.flatnonzero(labels == c)[r]] for c in range(10)]))
    return np.concatenate(rows)


def titled(grid: np.ndarray, title: str, scale: int) -> Image.Image:
    im = Image.fromarray(grid).resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST)
    canvas = Image.new("RGB", (im.width, im.height + 16), "white")
    canvas.paste(im, (0, 16))
    ImageDraw.Draw(canvas).text((4, 2), title, fill="black")
    return canvas


def stack_vertical(images: list[Image.Image]) -> Image.Image:
    w = max(i.width for i in images)
    out = Image.new("RGB", (w, sum(i.height for i in images)), "white")
    y = 0
    for i in images:
        out.paste(i, (0, y))
        y += i.height
    return out


def sample_grid(sample, limit: int = 100, ncol: int = 10, scale: int = 2) -> Image.Image:
    """Four titled panels of a :class:`cgn.core.sampling.CGNSample` (its first ``limit`` items,
    ``ncol`` per row): composite, mask, foreground, background."""
    from cgn.core.sampling import to_uint8
    k = min(len(sample), limit)
    ncol = min(k, ncol)
    mask = to_uint8(sample.mask[:k].expand(-1, 3, -1, -1) * 2 - 1)
    panels = [(to_uint8(sample.composite[:k]), "composite"), (mask, "mask"),
              (to_uint8(sample.foreground[:k]), "foreground"), (to_uint8(sample.background[:k]), "background")]
    return stack_vertical([titled(make_grid(images, ncol), title, scale) for images, title in panels])
