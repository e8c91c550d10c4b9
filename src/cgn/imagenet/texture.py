"""The texture mechanism f_text of the ImageNet CGN; its output is the foreground f.

f_text is a BigGAN-deep (initialised from the public checkpoint) that paints the object's
texture: ``f = f_text(u, y_texture)`` [B, 3, R, R] in [-1, 1]. Only the masked part of f enters
the composite, so the reconstruction losses alone would let f stay a full image; the *texture
loss* (style loss against a grid of patches cut from the most confident mask regions of x_gt,
see :func:`cgn.imagenet.losses.patch_grid`) makes it a shape-free texture instead. The authors'
``cgn.pth`` stores it under ``f_text.``.
"""

from __future__ import annotations

import torch

from cgn.imagenet.biggan import BigGAN


class TextureMechanism(BigGAN):
    def foreground(self, u: torch.Tensor, y: torch.Tensor, truncation: float) -> torch.Tensor:
        """f = f_text(u, y): [B, 3, R, R] in [-1, 1]."""
        return self(u, y, truncation)
