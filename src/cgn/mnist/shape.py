"""The shape mechanism of the MNIST CGN: noise + label -> a soft mask ``m`` in (0, 1).

    z = [u, e(y)]                        [B, latent + n_classes]
    Linear -> reshape                    [B, 2ngf, s/4, s/4]
    InstanceNorm                         (no affine: every sample normalised on its own)
    Up x2, Conv3x3 2ngf->ngf, BN, LReLU  [B, ngf, s/2, s/2]
    InstanceNorm
    Up x2, Conv3x3 ngf->1, BN, LReLU     [B, 1, s, s]
    InstanceNorm
    clamp to [1e-4, 1 - 1e-4]            the mask

The last InstanceNorm gives each mask zero mean and unit variance before the clamp, so only the
upper tail (roughly 10-25 % of the pixels) reaches 1: the mask is sparse by construction. The
layer order (and so the ``layers.<i>`` indices) follows the authors' ``f_shape``.
"""

from __future__ import annotations

import torch
from torch import nn

from cgn.mnist.mechanism import Mechanism

MASK_EPS = 1e-4


class Reshape(nn.Module):
    """[B, C*H*W] -> [B, C, H, W]."""

    def __init__(self, c: int, h: int, w: int):
        super().__init__()
        self.shape = (c, h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.shape[0], *self.shape)


def upsample_block(cin: int, cout: int) -> list[nn.Module]:
    """Nearest x2 upsampling, 3x3 conv without bias, BatchNorm, LeakyReLU(0.2). (The mechanisms
    compute the first two together, see :mod:`cgn.mnist.upconv`.)"""
    return [nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(cin, cout, 3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.LeakyReLU(0.2, inplace=True)]


def instance_norm(c: int) -> nn.Module:
    return nn.InstanceNorm2d(c, affine=False, track_running_stats=False)


class ShapeMechanism(Mechanism):

    def __init__(self, in_dim: int, ngf: int = 32, img_size: int = 32):
        super().__init__()
        s0 = img_size // 4
        self.layers = nn.Sequential(
            nn.Linear(in_dim, 2 * ngf * s0 * s0),  # 0
            Reshape(2 * ngf, s0, s0),              # 1
            instance_norm(2 * ngf),                # 2
            *upsample_block(2 * ngf, ngf),         # 3-6
            instance_norm(ngf),                    # 7
            *upsample_block(ngf, 1),               # 8-11
            instance_norm(1),                      # 12
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """z [B, in_dim] -> mask [B, 1, H, W] in [1e-4, 1 - 1e-4]; float32 under autocast (bf16
        has no number between 1 - 2^-8 and 1, so its clamp would let the mask reach 1 and the
        mask loss's log(1 - m) diverge)."""
        m = self.body(z)
        if torch.is_autocast_enabled(m.device.type):
            m = m.float()
        return m.clamp(MASK_EPS, 1 - MASK_EPS)
