"""The background mechanism f_bg of the ImageNet CGN.

f_bg is a BigGAN-deep (initialised from the public checkpoint) that should paint a scene
*without* the object: ``b = f_bg(u, y_background)`` [B, 3, R, R]. The frozen U²-Net segments b;
its mean saliency is the background loss (weight 2000), which trains f_bg to remove anything
salient. The authors' ``cgn.pth`` stores it under ``f_bg.``.
"""

from __future__ import annotations

import torch
from torch import nn

from cgn.imagenet.biggan import BigGAN


class BackgroundMechanism(BigGAN):
    def background(self, u: torch.Tensor, y: torch.Tensor, truncation: float,
                   u2net: nn.Module | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Returns (b [B, 3, R, R], U2-Net saliency of b [B, 1, R, R]; None without a U2-Net:
        only the background loss needs it)."""
        b = self(u, y, truncation)
        return b, None if u2net is None else u2net(b)
