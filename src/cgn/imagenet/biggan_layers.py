"""The layers of BigGAN-deep (:mod:`cgn.imagenet.biggan`), named like the public PyTorch port.

Parameter and buffer names are those of the port's state dict, so its weights load strictly:
spectral-norm layers hold ``weight_orig`` / ``weight_u`` / ``weight_v`` (plus ``bias``),
BatchNorms ``running_means`` / ``running_vars`` (and ``scale`` / ``offset`` or ``weight`` /
``bias``).

A :class:`GenBlock` is a bottleneck residual block: four (conditional BN → ReLU → SNConv) stages
with 1×1, 3×3, 3×3, 1×1 kernels and ``in/4`` middle channels; the skip path drops half its
channels when the width shrinks and is upsampled (nearest) with the main path.

:class:`BigGANBatchNorm` uses *standing statistics*: ``running_means``/``running_vars`` hold
``n_stats`` rows measured at truncations 0, 1/(n_stats−1), …, 1; the row of the truncation in use
is taken (linear interpolation between the two neighbouring rows off the grid; the port weights
the two neighbours the other way round, which only matters off the 0.02 grid — the CGN uses 0.5
and 1.0, on it).

Training a BigGAN as a GAN (:mod:`cgn.imagenet.biggan_pretrain`) normalises with each batch's own
statistics instead: :func:`use_batch_statistics` switches every BigGANBatchNorm of a model to it
(a plain attribute, not state: the state dict and the eval path stay those of the port), and
:mod:`cgn.imagenet.biggan_standing` fills the standing-statistics rows afterwards.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


# --------------------------------------------------------------------------------------------
# Spectral normalisation (Miyato et al. 2018), state-dict compatible with torch's old hook
# --------------------------------------------------------------------------------------------

class _SpectralNorm(nn.Module):
    """Base of SN layers: ``weight = weight_orig / σ``, σ ≈ the largest singular value of the
    weight matrix ``[out, in·k·k]``, estimated by power iteration on the buffers ``weight_u``
    ([out]) and ``weight_v`` ([in·k·k]). In training mode one iteration runs per forward and
    updates the buffers; in eval mode the stored vectors are used as they are.
    """
    weight_u: torch.Tensor
    weight_v: torch.Tensor

    def _init_sn(self, weight_shape: tuple[int, ...], bias: bool, eps: float) -> None:
        self.eps = eps
        out_f = weight_shape[0]
        in_f = int(math.prod(weight_shape[1:]))
        self.weight_orig = nn.Parameter(torch.empty(weight_shape))
        if bias:
            self.bias = nn.Parameter(torch.zeros(out_f))
        else:
            self.register_parameter("bias", None)
        self.register_buffer("weight_u", torch.empty(out_f))
        self.register_buffer("weight_v", torch.empty(in_f))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        if self.weight_orig.device.type != "meta":
            nn.init.orthogonal_(self.weight_orig.view(self.weight_orig.shape[0], -1))
        if self.bias is not None:
            self.bias.zero_()
        self.weight_u.copy_(F.normalize(torch.randn_like(self.weight_u), dim=0, eps=self.eps))
        if self.weight_orig.device.type == "meta":
            return
        # A few power iterations so that a fresh layer's σ estimate is already positive and
        # close to the top singular value (as if it had been trained for a few steps).
        self.power_iterate(5)

    @torch.no_grad()
    def power_iterate(self, n: int) -> None:
        """``n`` power iterations on the stored vectors (what ``n`` training-mode forwards do)."""
        w_mat = self.weight_orig.reshape(self.weight_orig.shape[0], -1)
        for _ in range(n):
            self.weight_v.copy_(F.normalize(torch.mv(w_mat.t(), self.weight_u), dim=0, eps=self.eps))
            self.weight_u.copy_(F.normalize(torch.mv(w_mat, self.weight_v), dim=0, eps=self.eps))

    def sn_weight(self) -> torch.Tensor:
        w = self.weight_orig
        w_mat = w.reshape(w.shape[0], -1)
        u, v = self.weight_u, self.weight_v
        if self.training:
            with torch.no_grad():
                v = F.normalize(torch.mv(w_mat.t(), u), dim=0, eps=self.eps)
                u = F.normalize(torch.mv(w_mat, v), dim=0, eps=self.eps)
                self.weight_u.copy_(u)
                self.weight_v.copy_(v)
            u, v = u.clone(), v.clone()
        sigma = torch.dot(u, torch.mv(w_mat, v))
        return w / sigma


class SNLinear(_SpectralNorm):
    def __init__(self, in_features: int, out_features: int, bias: bool = True, eps: float = 1e-4):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self._init_sn((out_features, in_features), bias, eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.sn_weight(), self.bias)


class SNConv2d(_SpectralNorm):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1,
                 padding: int = 0, bias: bool = True, eps: float = 1e-4):
        super().__init__()
        self.padding = padding
        self._init_sn((out_channels, in_channels, kernel_size, kernel_size), bias, eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.sn_weight(), self.bias, padding=self.padding)


# --------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------

class BigGANBatchNorm(nn.Module):
    """BatchNorm with standing statistics per truncation, optionally class-conditional.

    Conditional: ``γ = 1 + W_s·cond``, ``β = W_o·cond`` (spectral-normalised, no bias).
    Unconditional (the final BN): plain affine ``weight``/``bias``.
    """

    def __init__(self, num_features: int, cond_dim: int | None, n_stats: int, eps: float):
        super().__init__()
        self.eps = eps
        self.n_stats = n_stats
        self.register_buffer("running_means", torch.zeros(n_stats, num_features))
        self.register_buffer("running_vars", torch.ones(n_stats, num_features))
        self.batch_stats = False  # normalise with the batch's own statistics (GAN training)
        self.recorded: list | None = None  # a list: collects (mean, var) of batch-statistics forwards
        self.conditional = cond_dim is not None
        if self.conditional:
            self.scale = SNLinear(cond_dim, num_features, bias=False, eps=eps)
            self.offset = SNLinear(cond_dim, num_features, bias=False, eps=eps)
        else:
            self.weight = nn.Parameter(torch.ones(num_features))
            self.bias = nn.Parameter(torch.zeros(num_features))

    def stats(self, truncation: float) -> tuple[torch.Tensor, torch.Tensor]:
        pos = truncation * (self.n_stats - 1)
        lo = int(math.floor(pos))
        frac = pos - lo
        if frac < 1e-9 or lo >= self.n_stats - 1:
            lo = min(lo, self.n_stats - 1)
            return self.running_means[lo], self.running_vars[lo]
        mean = self.running_means[lo] * (1 - frac) + self.running_means[lo + 1] * frac
        var = self.running_vars[lo] * (1 - frac) + self.running_vars[lo + 1] * frac
        return mean, var

    def forward(self, x: torch.Tensor, truncation: float, cond: torch.Tensor | None = None) -> torch.Tensor:
        if self.batch_stats:  # the batch's own mean and biased variance, gradients through both
            mean = var = None
            if self.recorded is not None:  # collecting standing statistics (no gradients)
                xf = x.detach().float()
                self.recorded.append((xf.mean(dim=(0, 2, 3)), xf.var(dim=(0, 2, 3), unbiased=False)))
        else:
            mean, var = self.stats(truncation)
        if not self.conditional:
            return F.batch_norm(x, mean, var, self.weight, self.bias, training=self.batch_stats,
                                momentum=0.0, eps=self.eps)
        h = F.batch_norm(x, mean, var, training=self.batch_stats, momentum=0.0, eps=self.eps)
        gamma = 1 + self.scale(cond)[:, :, None, None]                    # [B, C, 1, 1]
        return torch.addcmul(self.offset(cond)[:, :, None, None], h, gamma)


def use_batch_statistics(model: nn.Module, on: bool = True) -> None:
    """Switch every :class:`BigGANBatchNorm` in ``model`` to batch statistics (``on``) or back to
    the standing statistics of the public port (the default everywhere else)."""
    for m in model.modules():
        if isinstance(m, BigGANBatchNorm):
            m.batch_stats = on


class GenBlock(nn.Module):
    """Bottleneck residual block of BigGAN-deep (in → in/4 → in/4 → in/4 → out)."""

    def __init__(self, in_size: int, out_size: int, cond_dim: int, up_sample: bool,
                 n_stats: int, eps: float):
        super().__init__()
        mid = in_size // 4
        self.up_sample = up_sample
        self.drop_channels = in_size != out_size
        self.bn_0 = BigGANBatchNorm(in_size, cond_dim, n_stats, eps)
        self.conv_0 = SNConv2d(in_size, mid, kernel_size=1, eps=eps)
        self.bn_1 = BigGANBatchNorm(mid, cond_dim, n_stats, eps)
        self.conv_1 = SNConv2d(mid, mid, kernel_size=3, padding=1, eps=eps)
        self.bn_2 = BigGANBatchNorm(mid, cond_dim, n_stats, eps)
        self.conv_2 = SNConv2d(mid, mid, kernel_size=3, padding=1, eps=eps)
        self.bn_3 = BigGANBatchNorm(mid, cond_dim, n_stats, eps)
        self.conv_3 = SNConv2d(mid, out_size, kernel_size=1, eps=eps)

    def forward(self, x: torch.Tensor, cond: torch.Tensor, truncation: float) -> torch.Tensor:
        h = self.conv_0(F.relu(self.bn_0(x, truncation, cond)))
        h = F.relu(self.bn_1(h, truncation, cond))
        if self.up_sample:
            h = F.interpolate(h, scale_factor=2, mode="nearest")
        h = self.conv_1(h)
        h = self.conv_2(F.relu(self.bn_2(h, truncation, cond)))
        h = self.conv_3(F.relu(self.bn_3(h, truncation, cond)))
        skip = x[:, : x.shape[1] // 2] if self.drop_channels else x
        if self.up_sample:
            skip = F.interpolate(skip, scale_factor=2, mode="nearest")
        return h + skip


class SelfAttn(nn.Module):
    """SAGAN self-attention: queries θ at full resolution, keys φ and values g max-pooled 2×2."""

    def __init__(self, channels: int, eps: float):
        super().__init__()
        self.snconv1x1_theta = SNConv2d(channels, channels // 8, bias=False, eps=eps)
        self.snconv1x1_phi = SNConv2d(channels, channels // 8, bias=False, eps=eps)
        self.snconv1x1_g = SNConv2d(channels, channels // 2, bias=False, eps=eps)
        self.snconv1x1_o_conv = SNConv2d(channels // 2, channels, bias=False, eps=eps)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        theta = self.snconv1x1_theta(x).view(b, c // 8, h * w)                    # [B, C/8, N]
        phi = F.max_pool2d(self.snconv1x1_phi(x), 2).view(b, c // 8, h * w // 4)   # [B, C/8, N/4]
        attn = torch.softmax(torch.bmm(theta.transpose(1, 2), phi), dim=-1)         # [B, N, N/4]
        g = F.max_pool2d(self.snconv1x1_g(x), 2).view(b, c // 2, h * w // 4)       # [B, C/2, N/4]
        out = torch.bmm(g, attn.transpose(1, 2)).view(b, c // 2, h, w)             # [B, C/2, H, W]
        return x + self.gamma * self.snconv1x1_o_conv(out)
