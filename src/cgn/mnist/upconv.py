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

Inference (:class:`FrozenLayers`, used by :func:`cgn.mnist.mechanism.frozen_inference` in
counterfactual generation) goes further on a snapshot of the weights: BatchNorm folded into the
conv before it, the activation computed inside oneDNN's convolution kernel, and a 3x3 conv that
follows an up-conv applied to the up-conv's phase map directly (:func:`polyphase_kernel`), so
the largest feature map is never interleaved.
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


def _is_plain_conv(m: nn.Module) -> bool:
    """A 3x3 conv, stride 1, zero padding 1, no dilation or groups."""
    return (isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3) and m.stride == (1, 1)
            and m.padding == (1, 1) and m.dilation == (1, 1) and m.groups == 1
            and m.padding_mode == "zeros")


def is_fusable(up: nn.Module, conv: nn.Module) -> bool:
    """Whether ``up`` then ``conv`` is a nearest x2 upsampling into a 3x3/stride-1/pad-1 conv."""
    if not (isinstance(up, nn.Upsample) and isinstance(conv, nn.Conv2d)):
        return False
    sf = up.scale_factor
    sf = tuple(sf) if isinstance(sf, (tuple, list)) else (sf, sf)
    return (up.mode == "nearest" and up.size is None and all(float(s) == 2.0 for s in sf)
            and _is_plain_conv(conv))


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


# ---- inference: BatchNorm folded, activations fused ---------------------------------------------

_ACTIVATIONS = (nn.LeakyReLU, nn.Tanh)


def _pointwise_op():
    """oneDNN's conv + bias + activation kernel (what torch.compile uses on CPU), if present."""
    try:
        return torch.ops.mkldnn._convolution_pointwise
    except (AttributeError, RuntimeError):
        return None


def _fold_bn(weight: torch.Tensor, bias: torch.Tensor | None, bn: nn.BatchNorm2d | None):
    """Conv (weight, bias) followed by an eval-mode BatchNorm -> one conv's (weight, bias), folded
    in float64."""
    w = weight.detach().double()
    b = bias.detach().double() if bias is not None else torch.zeros(w.shape[0], dtype=w.dtype, device=w.device)
    if bn is None:
        return w, b
    scale = bn.weight.detach().double() / torch.sqrt(bn.running_var.double() + bn.eps)
    return w * scale.view(-1, 1, 1, 1), (b - bn.running_mean.double()) * scale + bn.bias.detach().double()


def polyphase_kernel(weight: torch.Tensor) -> torch.Tensor:
    """3x3 conv weight [O, C, 3, 3] -> 2x2 weight [4*O, 4*C, 2, 2] that applies the conv to an
    interleaved map directly from its phase map (see :func:`upconv2x`).

    With X the interleaved map and y its phase map [4*C, H+1, W+1] (X[c, 2i+a, 2j+b] =
    y[(2a+b)*C + c, i+a, j+b]) whose unused border entries are zero (phase a=1 row 0, phase a=0
    row H, likewise for columns), the zero-padded X at fine row R = 2i+r, r in {-1, 0, 1, 2}, is
    phase r mod 2 of y at row i + s(r), s = (0, 0, 1, 1). So output phase (a, b) of the conv at
    (i, j) is a 2x2 convolution of y over rows i, i+1 and columns j, j+1 (no padding); output
    channel o*4 + 2a + b, the order :func:`torch.nn.functional.pixel_shuffle` interleaves."""
    o, c = weight.shape[:2]
    k = weight.new_zeros(o, 4, 4, c, 2, 2)  # [out ch, out phase, in phase, in ch, row tap, col tap]
    s = {-1: 0, 0: 0, 1: 1, 2: 1}
    for a in range(2):
        for b in range(2):
            for di in (-1, 0, 1):
                for dj in (-1, 0, 1):
                    r, q = a + di, b + dj
                    k[:, 2 * a + b, 2 * (r % 2) + q % 2, :, s[r], s[q]] += weight[:, :, di + 1, dj + 1]
    return k.reshape(4 * o, 4 * c, 2, 2)


def _zero_phase_border(y: torch.Tensor, cout: int) -> torch.Tensor:
    """Zero the entries of a phase map [B, 4*Cout, H+1, W+1] that the interleave crops (in place)."""
    for a in range(2):
        for b in range(2):
            ph = y[:, (2 * a + b) * cout:(2 * a + b + 1) * cout]
            ph[:, :, -1 if a == 0 else 0].zero_()
            ph[:, :, :, -1 if b == 0 else 0].zero_()
    return y


class _ConvStep:
    """A conv with folded BatchNorm, bias and activation, in one of three forms:
    ``plain`` (3x3, padding 1), ``up`` (an Upsample + conv pair as its 2x2 phase conv; the
    activation runs before the interleave, it is elementwise) and ``up-phases`` (as ``up`` but the
    phase map is handed on, borders zeroed, to a following ``poly`` step: a plain conv applied to
    the phase map by :func:`polyphase_kernel`, then pixel-shuffled; this skips interleaving the
    large map)."""

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d | None, act: nn.Module | None,
                 form: str, dtype: torch.dtype):
        w, b = _fold_bn(conv.weight, conv.bias, bn)
        self.form, self.cout = form, w.shape[0]
        if form in ("up", "up-phases"):
            w, b, self.padding = phase_kernel(w), b.repeat(4), [1, 1]
        elif form == "poly":
            w, b, self.padding = polyphase_kernel(w), b.repeat_interleave(4), [0, 0]
        else:
            self.padding = [int(p) for p in conv.padding]
        self.weight = w.to(dtype).contiguous(memory_format=torch.channels_last)
        self.bias = b.to(dtype)
        if isinstance(act, nn.LeakyReLU):
            self.act, self.act_args = "leaky_relu", [float(act.negative_slope)]
        elif isinstance(act, nn.Tanh):
            self.act, self.act_args = "tanh", []
        else:
            self.act, self.act_args = "none", []
        self.op = (_pointwise_op() if self.weight.device.type == "cpu"
                   and dtype in (torch.float32, torch.bfloat16) else None)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        y = None
        if self.op is not None:
            try:
                y = self.op(x, self.weight, self.bias, self.padding, [1, 1], [1, 1], 1,
                            self.act, self.act_args, "")
            except RuntimeError:  # a build or CPU without this kernel: the plain ops from now on
                self.op = None
        if y is None:
            y = F.conv2d(x, self.weight, self.bias, padding=self.padding)
            if self.act == "leaky_relu":
                y = F.leaky_relu(y, self.act_args[0], inplace=True)
            elif self.act == "tanh":
                y = torch.tanh(y)
        if self.form == "plain":
            return y
        if self.form == "poly":
            return F.pixel_shuffle(y, 2).contiguous(memory_format=torch.channels_last)
        if not (y.is_contiguous() or _is_channels_last(y)):
            y = y.contiguous()
        if self.form == "up-phases":
            return _zero_phase_border(y, self.cout)
        return _Interleave.apply(y, self.cout, True)


class FrozenLayers:
    """An eval-mode mechanism stack compiled for inference in ``dtype``: every 3x3 Conv2d (and
    every fusable Upsample + Conv2d pair, as its phase conv) absorbs the BatchNorm and the
    activation that follow it, an upconv feeding a 3x3 conv hands over its phase map (see
    :func:`polyphase_kernel`); Linear, Reshape, InstanceNorm and anything else run as
    themselves. The same function as ``layers.eval()`` up to float rounding, on a snapshot of
    the weights (rebuild it after the weights change). Activations are channels_last."""

    def __init__(self, layers: nn.Sequential, dtype: torch.dtype = torch.float32):
        self.dtype = dtype
        self.steps: list = []
        mods, i = list(layers), 0
        groups = []  # (conv, bn or None, activation or None, upsampled) or (module,)
        while i < len(mods):
            up = i + 1 < len(mods) and is_fusable(mods[i], mods[i + 1])
            conv = mods[i + 1] if up else mods[i]
            if _is_plain_conv(conv):
                j = i + (2 if up else 1)
                bn = mods[j] if j < len(mods) and isinstance(mods[j], nn.BatchNorm2d) else None
                j += bn is not None
                act = mods[j] if j < len(mods) and isinstance(mods[j], _ACTIVATIONS) else None
                j += act is not None
                groups.append((conv, bn, act, up))
                i = j
            else:
                groups.append((mods[i],))
                i += 1
        for k, g in enumerate(groups):
            if len(g) == 1:
                self.steps.append(self._plain(g[0]))
                continue
            conv, bn, act, up = g
            feeds_conv = k + 1 < len(groups) and len(groups[k + 1]) == 4 and not groups[k + 1][3]
            after_up = k > 0 and len(groups[k - 1]) == 4 and groups[k - 1][3]
            form = ("up-phases" if feeds_conv else "up") if up else ("poly" if after_up else "plain")
            self.steps.append(_ConvStep(conv, bn, act, form, dtype))

    def _plain(self, m: nn.Module):
        if isinstance(m, nn.Linear):
            w, b = m.weight.detach().to(self.dtype), m.bias.detach().to(self.dtype)
            return lambda x: F.linear(x.to(self.dtype), w, b)
        if isinstance(m, (nn.InstanceNorm2d, nn.BatchNorm2d)):  # statistics in fp32 at least
            wide = torch.promote_types(self.dtype, torch.float32)
            return lambda x: m(x.to(wide)).to(self.dtype).contiguous(memory_format=torch.channels_last)

        def run(x, m=m):
            y = m(x)
            return y.contiguous(memory_format=torch.channels_last) if y.dim() == 4 else y
        return run

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        for step in self.steps:
            x = step(x)
        return x
