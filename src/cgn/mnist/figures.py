"""Figures of an MNIST CGN run: sample grids at fixed inputs and the mask timeline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from cgn.core.sampling import eval_mode, to_uint8
from cgn.mnist.model import MnistCGN
from cgn.mnist.preview import make_grid, save_png, stack_vertical, titled

TIMELINE_ROWS = 12  # frames shown in mask_timeline.png (evenly spaced over the run)


def _mask_u8(mask: torch.Tensor) -> np.ndarray:
    return to_uint8(mask.expand(-1, 3, -1, -1) * 2 - 1)


def save_sample_grid(model: MnistCGN, inputs: dict[str, torch.Tensor], path: Path, title: str) -> Image.Image:
    """Composite, mask, foreground and background of fixed inputs, one panel each (classes as
    columns); returns the picture written."""
    with eval_mode(model):
        out = model(**inputs)
    ncol = model.n_classes
    panels = [titled(make_grid(to_uint8(out.composite.cpu()), ncol), f"{title}: composite", 2),
              titled(make_grid(_mask_u8(out.mask.cpu()), ncol), "mask", 2),
              titled(make_grid(to_uint8(out.foreground.cpu()), ncol), "foreground", 2),
              titled(make_grid(to_uint8(out.background.cpu()), ncol), "background", 2)]
    grid = stack_vertical(panels)
    save_png(path, grid)
    return grid


def save_timeline_figure(steps: np.ndarray, masks: np.ndarray, path: Path, title: str) -> None:
    """Masks of the fixed noise/labels through training: one row per frame (<= TIMELINE_ROWS,
    evenly spaced), columns = classes x noise vectors; each row labelled with step and mean mask."""
    if len(steps) == 0:
        return
    rows = np.unique(np.linspace(0, len(steps) - 1, min(TIMELINE_ROWS, len(steps))).round().astype(int))
    scale, label_w, pad = 2, 150, 2
    h, w = masks.shape[-2:]
    ncol = masks.shape[1]
    canvas = Image.new("RGB", (label_w + ncol * (w * scale + pad), 18 + len(rows) * (h * scale + pad)), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 3), title, fill="black")
    for r, i in enumerate(rows):
        y = 18 + r * (h * scale + pad)
        draw.text((4, y + h * scale // 2 - 6), f"step {int(steps[i])}  mean {masks[i].mean():.3f}", fill="black")
        for c in range(ncol):
            tile = Image.fromarray((masks[i, c] * 255).round().astype(np.uint8)).resize((w * scale, h * scale), Image.NEAREST)
            canvas.paste(tile, (label_w + c * (w * scale + pad), y))
    save_png(path, canvas)

