"""The EMA generator of a BigGAN stand-in: weight averaging, standing statistics, sheets, export.

- **EMA.** ``G_ema ← decay · G_ema + (1 − decay) · G`` for every parameter after each G step
  (:func:`cgn.core.ema.ema_update`; decay 0 copies); buffers (spectral-norm vectors) are copied from G.
- **Standing statistics.** G trains with batch statistics; the public port's BatchNorms use
  *standing statistics* instead: per BatchNorm ``n_stats`` rows of (mean, var), row ``r`` for
  truncation ``r / (n_stats − 1)``. :func:`standing_statistics` measures them on the EMA weights
  themselves (the running averages of the live G would describe other weights): for each row,
  ``batches`` batches of ``batch_size`` (the training batch size, so a row holds what training
  normalised with) with classes drawn uniformly and truncated noise at that row's truncation;
  every BatchNorm's row is the mean of its batch means and the mean of its (biased) batch
  variances, as BigGAN's standing statistics are accumulated. The spectral-norm vectors are first
  brought to the EMA weights by power iteration (:func:`refresh_spectral_norm`), since in eval
  mode σ comes from the stored vectors.
- **Sheets** and the **export** use a copy prepared that way; the export is the public port's
  folder (``config.json`` + ``pytorch_model.bin``), loaded by ``cgn imagenet train --biggan DIR``.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cgn.imagenet.biggan import BigGAN
from cgn.imagenet.biggan_layers import BigGANBatchNorm, _SpectralNorm, use_batch_statistics
from cgn.imagenet.model import truncated_noise

SPECTRAL_REFRESH = 10  # power iterations before measuring statistics / exporting


def seeded(*key: int) -> torch.Generator:
    """A CPU generator that is a pure function of the integer key."""
    state = np.random.SeedSequence([int(k) for k in key]).generate_state(2)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]) >> 1)


def refresh_spectral_norm(model: nn.Module, iterations: int = SPECTRAL_REFRESH) -> None:
    for m in model.modules():
        if isinstance(m, _SpectralNorm):
            m.power_iterate(iterations)


def stats_inputs(model: BigGAN, row: int, batch: int, batch_size: int,
                 seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise [B, z] and classes [B] of batch ``batch`` of standing-statistics row ``row``."""
    cfg = model.config
    g = seeded(seed, 7, row, batch)
    classes = torch.randint(cfg.num_classes, (batch_size,), generator=g)
    u = truncated_noise(batch_size, cfg.z_dim, row / (cfg.n_stats - 1), g)
    return u, classes


@torch.no_grad()
def standing_statistics(model: BigGAN, batch_size: int, batches: int, seed: int,
                        rows: list[int] | None = None) -> None:
    """Fill the standing-statistics ``rows`` (default: all) of every BatchNorm of ``model``."""
    was = model.training
    model.eval()  # spectral norm from the stored vectors, no power iteration
    bns = [m for m in model.modules() if isinstance(m, BigGANBatchNorm)]
    dev = model.embeddings.weight.device
    use_batch_statistics(model, True)
    try:
        for row in range(model.config.n_stats) if rows is None else rows:
            for m in bns:
                m.recorded = []
            for k in range(batches):
                u, classes = stats_inputs(model, row, k, batch_size, seed)
                model(u.to(dev), model.class_vector(classes), 1.0)  # BN ignores the truncation here
            for m in bns:
                m.running_means[row] = torch.stack([r[0] for r in m.recorded]).mean(0)
                m.running_vars[row] = torch.stack([r[1] for r in m.recorded]).mean(0)
    finally:
        for m in bns:
            m.recorded = None
        use_batch_statistics(model, False)
        model.train(was)


def rows_for(truncation: float, n_stats: int) -> list[int]:
    """The standing-statistics rows a truncation reads (one on the grid, else its two neighbours)."""
    pos = truncation * (n_stats - 1)
    lo = min(int(math.floor(pos + 1e-9)), n_stats - 1)
    return [lo] if abs(pos - lo) < 1e-9 or lo == n_stats - 1 else [lo, lo + 1]


def prepared_copy(ema: BigGAN, batch_size: int, batches: int, seed: int,
                  truncations: list[float] | None = None) -> BigGAN:
    """A copy of the EMA generator ready to sample: fresh spectral-norm vectors and standing
    statistics (all rows, or those the ``truncations`` read); in eval mode. The copy holds its
    weights in the default layout, so its statistics do not depend on the layout the trainer
    keeps (a channels_last convolution rounds differently)."""
    g = copy.deepcopy(ema).eval().to(memory_format=torch.contiguous_format)
    use_batch_statistics(g, False)
    for p in g.parameters():
        p.requires_grad_(False)
    refresh_spectral_norm(g)
    rows = None if truncations is None else sorted({r for t in truncations for r in rows_for(t, g.config.n_stats)})
    standing_statistics(g, batch_size, batches, seed, rows)
    return g


@torch.no_grad()
def sample_sheet(model: BigGAN, classes: list[int], u: torch.Tensor, truncation: float,
                 pad: int = 1) -> np.ndarray:
    """One row per class, one column per noise vector of ``u`` [n, z]: uint8 [H', W', 3]."""
    dev = model.embeddings.weight.device
    rows = [model(u.to(dev), model.class_vector([c] * len(u)), truncation) for c in classes]
    imgs = ((torch.stack(rows) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).cpu()  # [R, n, 3, h, w]
    r, n, _, h, w = imgs.shape
    sheet = torch.full((3, r * (h + pad) + pad, n * (w + pad) + pad), 255, dtype=torch.uint8)
    for i in range(r):
        for j in range(n):
            sheet[:, pad + i * (h + pad):pad + i * (h + pad) + h, pad + j * (w + pad):pad + j * (w + pad) + w] = imgs[i, j]
    return sheet.permute(1, 2, 0).numpy()


def save_png(path: str | Path, image: np.ndarray) -> None:
    """uint8 [H, W, 3] -> PNG, atomically."""
    from PIL import Image

    from cgn.io import atomic_write
    with atomic_write(path, "wb") as f:
        Image.fromarray(image).save(f, format="PNG")


def export_generator(ema: BigGAN, folder: str | Path, batch_size: int, batches: int, seed: int) -> Path:
    """Write the EMA generator in the public port's layout (all standing-statistics rows)."""
    g = prepared_copy(ema, batch_size, batches, seed).cpu()
    g.save_pretrained(folder)
    return Path(folder)
