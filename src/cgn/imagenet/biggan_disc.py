"""The BigGAN-deep discriminator (Brock et al. 2019), for training a BigGAN-deep stand-in.

Only the generator has a public release; this D exists to train one
(:mod:`cgn.imagenet.biggan_pretrain`). Architecture (ch = width, R = 4·2^k)::

    x [B, 3, R, R] → SNConv3×3(3 → ch)
    k stages, each two DBlocks: the first halves the resolution and widens to ch·m_i
        (m_i = min(2^(i+1), 16)), the second keeps both; optional SelfAttn after the stage
        that ends at ``attention`` px                                        [B, ch·m_k, 4, 4]
    ReLU → sum over H, W → h                                                 [B, C]
    D(x, y) = SNLinear(h → 1) + ⟨SNEmbed(y), h⟩                               [B]

The last line is the projection discriminator (Miyato & Koyama 2018): the class enters as the
inner product of a class embedding with the pooled features. A DBlock is the bottleneck
residual block of BigGAN-deep's D: ReLU → 1×1 (in → out/4) → ReLU → 3×3 → ReLU → 3×3 → ReLU
→ avg-pool 2×2 (when it downsamples) → 1×1 (→ out); the skip path is pooled the same way and,
when the width grows, keeps the input and appends ``out − in`` channels from a 1×1 conv.
Every weight is spectrally normalised (the layers of :mod:`cgn.imagenet.biggan_layers`,
orthogonally initialised); D has no BatchNorm.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from cgn.errors import CGNError
from cgn.imagenet.biggan_layers import SelfAttn, SNConv2d, SNLinear


class DBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, down: bool, eps: float):
        super().__init__()
        mid = max(out_ch // 4, 1)
        self.down = down
        self.conv_0 = SNConv2d(in_ch, mid, kernel_size=1, eps=eps)
        self.conv_1 = SNConv2d(mid, mid, kernel_size=3, padding=1, eps=eps)
        self.conv_2 = SNConv2d(mid, mid, kernel_size=3, padding=1, eps=eps)
        self.conv_3 = SNConv2d(mid, out_ch, kernel_size=1, eps=eps)
        self.conv_sc = SNConv2d(in_ch, out_ch - in_ch, kernel_size=1, eps=eps) if out_ch > in_ch else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_0(F.relu(x))
        h = self.conv_1(F.relu(h))
        h = F.relu(self.conv_2(F.relu(h)))
        if self.down:
            h = F.avg_pool2d(h, 2)
        h = self.conv_3(h)
        skip = F.avg_pool2d(x, 2) if self.down else x
        if self.conv_sc is not None:
            skip = torch.cat([skip, self.conv_sc(skip)], dim=1)
        return h + skip


class Discriminator(nn.Module):
    """``D(x, y)``: x [B, 3, R, R] in [-1, 1], y [B] class indices (or [B, K] class vectors) → [B]."""

    def __init__(self, resolution: int, width: int, num_classes: int, attention: int = 0,
                 eps: float = 1e-4):
        super().__init__()
        k = int(round(math.log2(resolution / 4))) if resolution >= 8 else 0
        if k < 1 or 4 * 2 ** k != resolution:
            raise CGNError(f"discriminator resolution {resolution} must be 4·2^k (8, 16, 32, 64, ...)")
        if width < 1 or num_classes < 1:
            raise CGNError("the discriminator's width and number of classes must be positive")
        self.num_classes = num_classes
        self.input_conv = SNConv2d(3, width, kernel_size=3, padding=1, eps=eps)
        blocks: list[nn.Module] = []
        c, size = width, resolution
        for i in range(k):
            out = width * min(2 ** (i + 1), 16)
            blocks += [DBlock(c, out, True, eps), DBlock(out, out, False, eps)]
            c, size = out, size // 2
            if attention and size == attention:
                if c % 8:
                    raise CGNError(f"discriminator attention at {attention} px needs a width "
                                   f"divisible by 8 there (got {c})")
                blocks.append(SelfAttn(c, eps=eps))
        if attention and not any(isinstance(b, SelfAttn) for b in blocks):
            raise CGNError(f"discriminator attention at {attention} px: no stage ends at that size "
                           f"(stages end at {', '.join(str(resolution >> (i + 1)) for i in range(k))} px)")
        self.blocks = nn.ModuleList(blocks)
        self.out_channels = c
        self.linear = SNLinear(c, 1, eps=eps)
        self.embed = SNLinear(num_classes, c, bias=False, eps=eps)  # rows of W^T: class embeddings

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled features h: [B, C]."""
        h = self.input_conv(x)
        for block in self.blocks:
            h = block(h)
        return F.relu(h).sum(dim=(2, 3))

    def class_embedding(self, y: torch.Tensor) -> torch.Tensor:
        """[B] indices or [B, K] class vectors → [B, C] (the spectrally normalised embedding)."""
        if y.dim() == 1:
            y = F.one_hot(y, self.num_classes)
        return self.embed(y.to(self.embed.weight_orig.dtype))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.features(x)
        out = self.linear(h)[:, 0] + (self.class_embedding(y).to(h.dtype) * h).sum(dim=1)
        return out
