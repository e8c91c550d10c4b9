"""The shape mechanism f_shape of the ImageNet CGN.

f_shape is a BigGAN-deep (initialised from the public checkpoint, then trained) whose output is
not used as an image but as a *pre-mask*: the frozen U²-Net turns it into the saliency mask m,
clamped to [c, 1 − c] (c = 1e-4) so the binary-entropy loss stays finite::

    premask = f_shape(u, y_shape)              [B, 3, R, R] in [-1, 1]
    m       = clamp(U2Net(premask), c, 1 − c)  [B, 1, R, R]

Gradients reach f_shape through the frozen U²-Net. The class subclasses :class:`BigGAN` so its
state dict is the BigGAN's (the authors' ``cgn.pth`` stores it under ``f_shape.``).
"""

from __future__ import annotations

import torch
from torch import nn

from cgn.imagenet.biggan import BigGAN


class ShapeMechanism(BigGAN):
    def mask(self, u: torch.Tensor, y: torch.Tensor, truncation: float, u2net: nn.Module,
             clamp: float = 1e-4) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (mask [B, 1, R, R], premask [B, 3, R, R])."""
        premask = self(u, y, truncation)
        # float32 before the clamp: under bf16 autocast 1 - 1e-4 rounds to 1, where the binary
        # entropy of the mask is not finite
        return u2net(premask).float().clamp(clamp, 1 - clamp), premask
