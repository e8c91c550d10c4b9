"""Nearest x2 upsampling followed by a 3x3 convolution, computed at the input resolution.

The MNIST CGN mechanisms grow their feature maps with ``Upsample(x2, nearest)`` and then a
``Conv2d(3x3, stride 1, padding 1)``. The upsampled map holds every input pixel four times, so
the 3x3 conv on it repeats work: output pixel (2i+a, 2j+b) only depends on a 2x2 window of the
*small* input X.

Rows (columns are the same): the three kernel rows touch upsampled rows 2i+a-1, 2i+a, 2i+a+1,
i.e. input rows
    a = 0:  i-1, i, i      -> kernel rows {W0} on row i-1 and {W1 + W2} on row i
    a = 1:  i, i, i+1      -> kernel rows {W0 + W1} on row i and {W2} on row i+1
So each of the four output phases (a, b) is a 2x2 convolution of X with a kernel made of sums
of W's entries. With X zero-padded by one pixel, window p of the padded map covers input rows
p-1 and p: phase a=0 of output row 2i reads window i, phase a=1 of output row 2i+1 reads window
i+1. One 2x2 convolution with 4*Cout output channels (phase-major: channel (2a+b)*Cout + o)
computes all four phases on an (H+1) x (W+1) grid; output (o, 2i+a, 2j+b) is then the element
(phase (a,b), o, i+a, j+b), an affine function of (o, i, a, j, b), so the interleave (with the
crop of the unused border) is one strided view and one copy.

Cost: 4 * Cout * Cin * 4 MACs on (H+1)(W+1) positions instead of Cout * Cin * 9 on 2H x 2W,
i.e. 16 (H+1)(W+1) / (36 H W) of the work (0.56 for 8x8 inputs, 0.50 for 16x16), and the large
upsampled intermediate is never written.

The phase kernel is built from the conv's own weight by additions (differentiable, no copies
of parameters): state dicts and checkpoints are those of the plain pair, and outputs and
gradients agree with it up to float rounding.
Additions are not autocast, so under bf16 autocast the summed kernel is formed in the weight's
dtype and rounded once by the convolution's cast.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable


def _collapse(w: torch.Tensor, dim: int) -> torch.Tensor:
    """Kernel with size 3 along ``dim`` -> the two 2-tap kernels, stacked on a new axis inserted
    before ``dim``: phase 0 = {W0, W1+W2} (taps on rows i-1, i), phase 1 = {W0+W1, W2} (rows
    i, i+1)."""
    w0, w1, w2 = w.split(1, dim)
    return torch.stack([torch.cat([w0, w1 + w2], dim), torch.cat([w0 + w1, w2], dim)], dim)


def phase_kernel(weight: torch.Tensor) -> torch.Tensor:
    """3x3 weight [Cout, Cin, 3, 3] -> 2x2 weight [4*Cout, Cin, 2, 2]; output channel
    (2a+b)*Cout + o is phase (a, b) of channel o."""
    cout, cin = weight.shape[:2]
    k = _collapse(weight, 2)          # [Cout, Cin, 2(a), 2, 3]
    k = _collapse(k, 4)               # [Cout, Cin, 2(a), 2, 2(b), 2]
    k = k.permute(2, 4, 0, 1, 3, 5)   # [2(a), 2(b), Cout, Cin, 2, 2]
    return k.reshape(4 * cout, cin, 2, 2)


def _is_channels_last(x: torch.Tensor) -> bool:
    return x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def upconv2x(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``conv2d(interpolate(x, scale_factor=2, mode='nearest'), weight, bias, padding=1)`` for a
    3x3 ``weight``, computed at x's resolution. x [B, Cin, H, W] -> [B, Cout, 2H, 2W];
    channels_last if x or the weight is (as Conv2d decides), else contiguous."""
    n, _, h, w = x.shape
    cout = weight.shape[0]
    channels_last = _is_channels_last(x) or _is_channels_last(weight)
    k = phase_kernel(weight)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
        k = k.contiguous(memory_format=torch.channels_last)
    y = F.conv2d(x, k, None if bias is None else bias.repeat(4), padding=1)  # [B, 4*Cout, H+1, W+1]
    if not (y.is_contiguous() or _is_channels_last(y)):
        y = y.contiguous()
    return _Interleave.apply(y, cout, channels_last)


def _phase_view(y: torch.Tensor, cout: int) -> torch.Tensor:
    """The [B, Cout, H, 2, W, 2] view of the phase map ``y`` [B, 4*Cout, H+1, W+1]:
    element (n, o, i, a, j, b) is y[n, (2a+b)*Cout + o, i+a, j+b]; the strides add up per index."""
    n, _, hp, wp = y.shape
    sn, sc, sp, sq = y.stride()
    return y.as_strided((n, cout, hp - 1, 2, wp - 1, 2),
                        (sn, sc, sp, sp + 2 * cout * sc, sq, sq + cout * sc), y.storage_offset())


class _Interleave(torch.autograd.Function):
    """Phase map [B, 4*Cout, H+1, W+1] -> interleaved output [B, Cout, 2H, 2W] (one copy).

    Autograd's generic ``as_strided`` backward cannot prove that this view does not overlap and
    falls back to a scatter through index tensors (several ms per step); the backward here is the
    same copy in reverse into a zeroed gradient (the cropped border gets no gradient)."""

    @staticmethod
    def forward(ctx, y: torch.Tensor, cout: int, channels_last: bool) -> torch.Tensor:
        n, _, hp, wp = y.shape
        ctx.cout = cout
        ctx.layout = torch.channels_last if _is_channels_last(y) else torch.contiguous_format
        out = torch.empty((n, cout, 2 * (hp - 1), 2 * (wp - 1)), dtype=y.dtype, device=y.device,
                          memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        out.view(n, cout, hp - 1, 2, wp - 1, 2).copy_(_phase_view(y, cout))
        ctx.y_shape = y.shape
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        n, c4, hp, wp = ctx.y_shape
        grad_y = torch.empty((n, c4, hp, wp), dtype=grad_out.dtype, device=grad_out.device,
                             memory_format=ctx.layout).zero_()
        _phase_view(grad_y, ctx.cout).copy_(grad_out.reshape(n, ctx.cout, hp - 1, 2, wp - 1, 2))
        return grad_y, None, None


def is_fusable(up: nn.Module, conv: nn.Module) -> bool:
    """Whether ``up`` then ``conv`` is a nearest x2 upsampling into a 3x3/stride-1/pad-1 conv."""
    if not (isinstance(up, nn.Upsample) and isinstance(conv, nn.Conv2d)):
        return False
    sf = up.scale_factor
    sf = tuple(sf) if isinstance(sf, (tuple, list)) else (sf, sf)
    return (up.mode == "nearest" and up.size is None and all(float(s) == 2.0 for s in sf)
            and conv.kernel_size == (3, 3) and conv.stride == (1, 1) and conv.padding == (1, 1)
            and conv.dilation == (1, 1) and conv.groups == 1 and conv.padding_mode == "zeros")


def run_layers(layers: nn.Sequential, x: torch.Tensor, fused: bool = True) -> torch.Tensor:
    """``layers(x)``, with every fusable Upsample + Conv2d pair computed by :func:`upconv2x`
    when ``fused`` (the layers, parameters and state dict are unchanged)."""
    mods = list(layers)
    i = 0
    while i < len(mods):
        if fused and i + 1 < len(mods) and is_fusable(mods[i], mods[i + 1]):
            x = upconv2x(x, mods[i + 1].weight, mods[i + 1].bias)
            i += 2
        else:
            x = mods[i](x)
            i += 1
    return x


def set_fused(model: nn.Module, fused: bool) -> nn.Module:
    """Switch every mechanism under ``model`` with a ``fused`` flag between the fused (default)
    and the plain Upsample + Conv2d path; returns ``model``."""
    for m in model.modules():
        if hasattr(m, "fused") and isinstance(getattr(type(m), "fused", None), bool):
            m.fused = fused
    return model
