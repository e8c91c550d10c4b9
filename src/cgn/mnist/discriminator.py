"""Label-conditional discriminators of the MNIST CGN (LSGAN: a real-valued score per image).

Linear (colored, double-colored presets):
    [flatten(x) (3*32*32), e(y) (10)] -> Linear ndf -> LReLU -> Linear ndf -> Dropout 0.4 -> LReLU
    -> Linear ndf -> Dropout 0.4 -> LReLU -> Linear 1                          score [B]
Conv (wildlife preset): the label embedding is one extra image channel,
    [x, e(y) broadcast] [B, 4, 32, 32]
    -> (conv3 s1, BN, LReLU) ndf      [B, ndf, 30, 30]
    -> (conv3 s1, BN, LReLU) 2ndf     [B, 2ndf, 28, 28]
    -> (conv4 s2, BN, LReLU) 4ndf     [B, 4ndf, 13, 13]
    -> (conv4 s2, BN, LReLU) 4ndf     [B, 4ndf, 5, 5]
    -> AvgPool 3                      [B, 4ndf, 1, 1]
    -> 1x1 conv                       score [B]
(no padding, no conv biases; weights ~ N(0, 0.02), BatchNorm weights ~ N(1, 0.02)).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from cgn.mnist.model import init_weights


class LinearDiscriminator(nn.Module):
    def __init__(self, n_classes: int = 10, ndf: int = 512, img_shape: tuple[int, int, int] = (3, 32, 32)):
        super().__init__()
        self.label_embedding = nn.Embedding(n_classes, n_classes)
        n_in = n_classes + img_shape[0] * img_shape[1] * img_shape[2]
        self.model = nn.Sequential(
            nn.Linear(n_in, ndf), nn.LeakyReLU(0.2, inplace=True),
            nn.Linear(ndf, ndf), nn.Dropout(0.4), nn.LeakyReLU(0.2, inplace=True),
            nn.Linear(ndf, ndf), nn.Dropout(0.4), nn.LeakyReLU(0.2, inplace=True),
            nn.Linear(ndf, 1),
        )

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """x [B, 3, H, W], labels [B] -> score [B]."""
        first = self.model[0]
        h = _LabelledLinear.apply(x.flatten(1), self.label_embedding(labels), first.weight, first.bias)
        return self.model[1:](h).view(-1)


class _LabelledLinear(torch.autograd.Function):
    """``Linear(cat[x, e])`` (x [B, n], e [B, k], weight [out, n + k], bias [out]) whose backward
    computes x's gradient only when x needs one.

    Through autograd's concatenation the embedding's gradient needs the whole input gradient, a
    [B, out] x [out, n + k] product per pass, even for a real or detached x (D's own step), of
    which it keeps k = 10 columns. Forward and parameter gradients are the same products as the
    plain layer's."""

    @staticmethod
    def forward(ctx, x, e, weight, bias):
        d_in = torch.cat([x, e], dim=1)
        ctx.save_for_backward(d_in, weight)
        ctx.n = x.shape[1]
        return torch.addmm(bias, d_in, weight.t())

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        d_in, weight = ctx.saved_tensors
        n, dt = ctx.n, grad.dtype  # under autocast the products ran in grad's dtype, as here
        w = weight.to(dt)
        grad_x = grad_e = None
        if ctx.needs_input_grad[0]:  # the generator's step: the plain layer's input gradient
            grad_in = (grad @ w).to(d_in.dtype)
            grad_x, grad_e = grad_in[:, :n], grad_in[:, n:]
        elif ctx.needs_input_grad[1]:
            grad_e = (grad @ w[:, n:]).to(d_in.dtype)
        grad_w = (grad.t() @ d_in.to(dt)).to(weight.dtype) if ctx.needs_input_grad[2] else None
        grad_b = grad.sum(0).to(weight.dtype) if ctx.needs_input_grad[3] else None
        return grad_x, grad_e, grad_w, grad_b


def _block(cin: int, cout: int, k: int, s: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, k, stride=s, padding=0, bias=False), nn.BatchNorm2d(cout),
            nn.LeakyReLU(0.2, inplace=True)]


class ConvDiscriminator(nn.Module):
    def __init__(self, n_classes: int = 10, ndf: int = 32):
        super().__init__()
        self.label_embedding = nn.Embedding(n_classes, 1)
        self.model = nn.Sequential(
            *_block(4, ndf, 3, 1),
            *_block(ndf, 2 * ndf, 3, 1),
            *_block(2 * ndf, 4 * ndf, 4, 2),
            *_block(4 * ndf, 4 * ndf, 4, 2),
            nn.AvgPool2d(3),
            nn.Conv2d(4 * ndf, 1, kernel_size=1, bias=False),
        )
        init_weights(self, "normal", 0.02)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """x [B, 3, H, W], labels [B] -> score [B]."""
        emb = self.label_embedding(labels).view(-1, 1, 1, 1).expand(-1, 1, *x.shape[-2:])
        return self.model(torch.cat([x, emb], dim=1)).view(-1)


def build_discriminator(kind: str, n_classes: int, ndf: int) -> nn.Module:
    if kind == "linear":
        return LinearDiscriminator(n_classes, ndf)
    if kind == "conv":
        return ConvDiscriminator(n_classes, ndf)
    raise ValueError(f"unknown discriminator {kind!r}")
