"""The texture mechanism of the MNIST CGN: noise + label -> an RGB texture in [-1, 1].

    z = [u, e(y)]                             [B, latent + n_classes]
    Linear -> reshape                         [B, 2ngf, s/4, s/4]
    Up x2, Conv3x3 2ngf->2ngf, BN, LReLU      [B, 2ngf, s/2, s/2]
    Up x2, Conv3x3 2ngf->ngf, BN, LReLU       [B, ngf, s, s]
    Conv3x3 ngf->3 (bias), BN, tanh           [B, 3, s, s]
    tile 2x2, random s x s crop               [B, 3, s, s]   (the texture prior)

The tile-and-crop prior: the generated patch is repeated 2x2 and cropped back at a random
offset, i.e. circularly shifted by a random amount per sample. A texture that drew a digit in
place would be torn apart by the shift, so the mechanism can only learn position-free texture
(colour, stripes, veins); the shape has to come from the mask. Offsets are explicit inputs
(drawn by :func:`draw_offsets` from a caller's generator) so sampling is reproducible.
"""

from __future__ import annotations

import torch
from torch import nn

from cgn.mnist.shape import Reshape, upsample_block
from cgn.mnist.mechanism import Mechanism


def draw_offsets(n: int, img_size: int, generator: torch.Generator | None = None,
                 device: torch.device | str = "cpu") -> torch.Tensor:
    """Crop offsets [n, 2] (row, column) in 0..img_size of the 2x2 tiled texture (as the original:
    every start position of an ``img_size`` window in a ``2*img_size`` image)."""
    return torch.randint(0, img_size + 1, (n, 2), generator=generator).to(device)


def tile_and_crop(x: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """x [B, C, H, W], offsets [B, 2] -> crop [B, C, H, W] of the 2x2 tiling of x at the offsets.

    The crop at (r, c) of the tiling is x circularly shifted: crop[i, j] = x[(i+r) % H, (j+c) % W],
    gathered directly (no tiled copy; the backward is a scatter of a permutation)."""
    b, c, h, w = x.shape
    rows = (offsets[:, 0:1] + torch.arange(h, device=x.device)) % h           # [B, H]
    cols = (offsets[:, 1:2] + torch.arange(w, device=x.device)) % w           # [B, W]
    idx = (rows[:, :, None] * w + cols[:, None, :]).view(b, 1, h * w).expand(b, c, h * w)
    return x.reshape(b, c, h * w).gather(2, idx).view(b, c, h, w)


class TextureMechanism(Mechanism):

    def __init__(self, in_dim: int, ngf: int = 32, img_size: int = 32, channels: int = 3):
        super().__init__()
        s0 = img_size // 4
        self.img_size = img_size
        self.layers = nn.Sequential(
            nn.Linear(in_dim, 2 * ngf * s0 * s0),          # 0
            Reshape(2 * ngf, s0, s0),                      # 1
            *upsample_block(2 * ngf, 2 * ngf),             # 2-5
            *upsample_block(2 * ngf, ngf),                 # 6-9
            nn.Conv2d(ngf, channels, 3, stride=1, padding=1),  # 10
            nn.BatchNorm2d(channels),                      # 11
            nn.Tanh(),                                     # 12
        )

    @property
    def output_norm(self) -> nn.BatchNorm2d:
        """The BatchNorm before the tanh: its bias sets the texture's base colour."""
        return self.layers[11]

    def forward(self, z: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """z [B, in_dim], offsets [B, 2] -> texture [B, 3, H, W] in [-1, 1]."""
        return tile_and_crop(self.body(z), offsets)
