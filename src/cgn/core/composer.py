"""The analytic composer of a CGN: ``x = m * f + (1 - m) * b``.

This is the only place in the code base where the formula is written.
"""

from __future__ import annotations

import torch


def compose(mask: torch.Tensor, foreground: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """Alpha-blend ``foreground`` over ``background`` with ``mask``.

    mask: [B, 1 or C, H, W] in [0, 1]; foreground, background: [B, C, H, W].
    A single-channel mask broadcasts over the colour channels.
    """
    if mask.dim() != foreground.dim() or foreground.shape != background.shape:
        raise ValueError(
            f"compose: shapes do not fit (mask {tuple(mask.shape)}, foreground "
            f"{tuple(foreground.shape)}, background {tuple(background.shape)})"
        )
    return mask * foreground + (1 - mask) * background
