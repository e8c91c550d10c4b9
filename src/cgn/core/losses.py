"""Losses of a CGN, shared by the MNIST and the ImageNet variants.

- LSGAN adversarial losses (least squares against 1 for real, 0 for fake), and the hinge
  losses BigGAN trains with (a BigGAN stand-in: :mod:`cgn.imagenet.biggan_pretrain`);
- the mask's binary entropy, which pushes every mask pixel towards 0 or 1;
- the mask-size interval loss (ImageNet: the mean mask is kept inside ``[0.1, 0.9]``);
- the perceptual *style* loss: L1 between per-sample Gram matrices of VGG16 features, layer ``i``
  weighted by ``w_i**2 * 5000``; layers with weight 0 are not computed at all and the network is
  run only up to the deepest layer needed;
- the reproducibility study's additions: an SSIM loss (``1 - SSIM``, Gaussian window 11, via
  ``pytorch-msssim``) and a mask border loss (mask mass near the image edge, which a digit mask
  should not have; it counters the masks that collapse to the whole frame).
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from cgn.core.perceptual import STAGE_NAMES, VGG16Features
from cgn.core.precision import Probe
from cgn.errors import CGNError

STYLE_SCALE = 5e3  # the original's factor on w_i**2


# --- adversarial -----------------------------------------------------------------------------

def lsgan_generator_loss(d_fake: torch.Tensor) -> torch.Tensor:
    """Generator side of LSGAN: ``mean((D(x_gen) - 1)**2)``."""
    return F.mse_loss(d_fake, torch.ones_like(d_fake))


def lsgan_discriminator_loss(d_real: torch.Tensor, d_fake: torch.Tensor) -> torch.Tensor:
    """Discriminator side of LSGAN: ``(mean((D(x)-1)**2) + mean(D(x_gen)**2)) / 2``."""
    return (F.mse_loss(d_real, torch.ones_like(d_real)) + F.mse_loss(d_fake, torch.zeros_like(d_fake))) / 2


def hinge_discriminator_terms(d_real: torch.Tensor, d_fake: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The two terms of the hinge loss of D: ``mean(relu(1 - D(x)))``, ``mean(relu(1 + D(x_gen)))``."""
    return F.relu(1 - d_real).mean(), F.relu(1 + d_fake).mean()


def hinge_discriminator_loss(d_real: torch.Tensor, d_fake: torch.Tensor) -> torch.Tensor:
    """Hinge loss of D (Lim & Ye 2017; SA-GAN, BigGAN): the sum of :func:`hinge_discriminator_terms`."""
    real, fake = hinge_discriminator_terms(d_real, d_fake)
    return real + fake


def hinge_generator_loss(d_fake: torch.Tensor) -> torch.Tensor:
    """Hinge loss of G: ``-mean(D(x_gen))``."""
    return -d_fake.mean()


# --- mask --------------------------------------------------------------------------------------

def binary_entropy(p: torch.Tensor) -> torch.Tensor:
    """Element-wise ``-p log2 p - (1-p) log2 (1-p)`` (in bits; 0 at p in {0, 1}, 1 at p = 0.5)."""
    return -p * torch.log2(p) - (1 - p) * torch.log2(1 - p)


def mask_binary_entropy(mask: torch.Tensor) -> torch.Tensor:
    """Mean binary entropy of a mask with values strictly inside (0, 1)."""
    return binary_entropy(mask).mean()


def mask_interval_loss(mask: torch.Tensor, low: float = 0.1, high: float = 0.9) -> torch.Tensor:
    """Per-sample mean mask outside ``[low, high]`` is penalised linearly; averaged over the batch."""
    mean = mask.flatten(1).mean(1)
    return (F.relu(low - mean) + F.relu(mean - high)).mean()


def mask_border_loss(mask: torch.Tensor, width: int = 3) -> torch.Tensor:
    """Mean mask value over the frame of ``width`` pixels along the image border.

    mask: [B, 1, H, W]. An object mask (an MNIST digit is centred with a margin of about 4 px
    at 32 px) should be ~0 there; a mask that spreads to the whole frame is penalised.
    """
    h, w = mask.shape[-2:]
    if not 0 < 2 * width < min(h, w):
        raise ValueError(f"border width {width} does not fit a {h}x{w} mask")
    frame = torch.ones(h, w, dtype=torch.bool, device=mask.device)
    frame[width:h - width, width:w - width] = False
    return mask[..., frame].mean()


# --- SSIM ---------------------------------------------------------------------------------------

def ssim_loss(x: torch.Tensor, y: torch.Tensor, win_size: int = 11) -> torch.Tensor:
    """``1 - SSIM(x, y)`` for images in ``[-1, 1]`` (Gaussian window ``win_size``, sigma 1.5)."""
    try:
        from pytorch_msssim import ssim
    except ImportError:
        raise CGNError("the SSIM loss needs pytorch-msssim; pip install pytorch-msssim") from None
    x01 = (x.float() + 1) / 2
    y01 = (y.float() + 1) / 2
    return 1 - ssim(x01, y01, data_range=1.0, win_size=win_size, size_average=True)


# --- perceptual style loss -----------------------------------------------------------------------

def _gram_rows(f: torch.Tensor) -> tuple[torch.Tensor, float]:
    """f [B, C, H, W] -> (float32 rows [B, C, HW], 1 / (C*H*W)); a channels_last ``f`` is read
    as [B, HW, C] and transposed as a view, never reordered."""
    b, c, h, w = f.shape
    if f.is_contiguous(memory_format=torch.channels_last) and not f.is_contiguous():
        rows = f.permute(0, 2, 3, 1).reshape(b, h * w, c).float().transpose(1, 2)
    else:
        rows = f.reshape(b, c, h * w).float()
    return rows, 1.0 / (c * h * w)


@contextmanager
def _bf16_operand_products(f: torch.Tensor):
    """The Gram's float32 products at bf16 speed when its rows hold bf16 values (features of the
    bf16 VGG), on CPU: oneDNN's bf32 matmul mode rounds float32 operands to bf16, which leaves
    these unchanged (as it does the signs of the backward), then accumulates and writes float32,
    i.e. the same products as the float32 kernel up to summation order; on the AMD EPYC 2-4x
    faster (the fp32 path goes through MKL). Any other input, or a CPU without native bf16
    (ATen then keeps the float32 kernel), computes as before."""
    if f.dtype != torch.bfloat16 or f.device.type != "cpu":
        yield
        return
    mm = torch.backends.mkldnn.matmul
    before = mm.fp32_precision
    mm.fp32_precision = "bf16"
    try:
        yield
    finally:
        mm.fp32_precision = before


def gram_matrix(f: torch.Tensor) -> torch.Tensor:
    """Per-sample Gram matrix in float32: f [B, C, H, W] -> [B, C, C], normalised by C*H*W
    (the normalisation is folded into the matrix product)."""
    rows, alpha = _gram_rows(f)
    with _bf16_operand_products(f):
        return torch.baddbmm(rows.new_zeros(()), rows, rows.transpose(1, 2), beta=0.0, alpha=alpha)


class _GramL1(torch.autograd.Function):
    """``mean |gram(rows) - target|`` in one pass over the [B, C, C] Gram matrices.

    Backward: with S = sign(gram - target) / numel, d/d rows = alpha (S + S^T) rows = 2 alpha S rows,
    as both Gram matrices are symmetric (entries where float rounding makes the two signs differ
    have |gram - target| at rounding level, where any value in [-1, 1] is a valid subgradient).
    Computing it directly skips the difference, absolute value and sign tensors autograd would
    keep and the second matrix product of the Gram's backward (the relu4_3 Gram is
    [B, 512, 512], larger than the features it comes from)."""

    @staticmethod
    def forward(ctx, rows: torch.Tensor, target: torch.Tensor, alpha: float, f: torch.Tensor) -> torch.Tensor:
        # f: the features rows come from (their dtype and device choose the kernel), no gradient
        ctx.like = f.new_empty(())
        with _bf16_operand_products(f):
            diff = torch.baddbmm(target, rows, rows.transpose(1, 2), beta=-1.0, alpha=alpha)
        loss = torch.linalg.vector_norm(diff, ord=1) / diff.numel()
        # only the sign is needed backward: keep it in diff's memory (saved after the change,
        # so a second backward with retain_graph=True reads it unchanged)
        ctx.save_for_backward(rows, diff.sign_())
        ctx.alpha = alpha
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        rows, s = ctx.saved_tensors
        scale = grad * (2.0 * ctx.alpha / s.numel())
        with _bf16_operand_products(ctx.like):  # s holds -1, 0, 1: bf16 values too
            if rows.transpose(1, 2).is_contiguous():  # rows of a channels_last f: answer in its
                # layout, [B, HW, C] = rows^T S (S symmetric): the gradient meets the VGG's in one
                return torch.bmm(rows.transpose(1, 2), s).mul_(scale).transpose(1, 2), None, None, None
            return torch.bmm(s, rows).mul_(scale), None, None, None


def gram_l1(f: torch.Tensor, target_gram: torch.Tensor) -> torch.Tensor:
    """``F.l1_loss(gram_matrix(f), target_gram)`` (mean over the elements) with a lean backward;
    ``target_gram`` gets no gradient."""
    rows, alpha = _gram_rows(f)
    return _GramL1.apply(rows, target_gram.detach().float(), alpha, f.detach())


def _channels_last_copy(extractor: VGG16Features, dtype: torch.dtype) -> VGG16Features:
    twin = copy.deepcopy(extractor)
    twin.features.to(dtype=dtype, memory_format=torch.channels_last)  # buffers stay fp32
    return twin


class StyleLoss(nn.Module):
    """Gram-matrix style loss on VGG16 stages, ``sum_i w_i**2 * 5000 * L1(G_i(x), G_i(target))``.

    ``weights`` has one entry per stage (``relu1_2, relu2_2, relu3_3, relu4_3[, relu5_3]``);
    stages with weight 0 are skipped and the network stops at the deepest stage with a nonzero
    weight. The target's features are computed without gradients (it is real data or a fixed
    template). ``autocast_bf16`` runs the VGG forward in bfloat16 (Gram matrices stay float32).
    Gram matrices are per sample, so ``generated`` and ``target`` are paired item by item (the
    original pairs a generated batch with an unrelated real batch).
    """

    def __init__(self, extractor: VGG16Features, weights: Sequence[float],
                 autocast_bf16: bool = False, scale: float = STYLE_SCALE):
        super().__init__()
        weights = [float(w) for w in weights]
        if not 1 <= len(weights) <= len(STAGE_NAMES):
            raise CGNError(f"style weights need 1..{len(STAGE_NAMES)} entries, got {len(weights)}")
        if any(w < 0 for w in weights):
            raise CGNError(f"style weights must be >= 0, got {weights}")
        self.extractor = extractor
        self.weights = weights
        self.scale = float(scale)
        self.autocast_bf16 = bool(autocast_bf16)
        self.active = [i for i, w in enumerate(weights) if w != 0]
        self.depth = max(self.active) + 1 if self.active else 0
        # The VGG runs from a frozen copy of its conv stack in channels_last, the layout oneDNN
        # is fastest in (fp32 on one AVX2 core: the MNIST style loss's VGG passes 1.2-1.5x faster,
        # `floor` of benchmarks/cgn_train_step.py). With bf16 the copy is held
        # in bfloat16: what autocast computes (every conv rounds its weights and input to bf16)
        # without recasting the frozen weights at every call.
        dtype = torch.bfloat16 if self.autocast_bf16 else extractor.features[0].weight.dtype
        self.extractor_fast = _channels_last_copy(extractor, dtype) if self.active else None

    def _features(self, x: torch.Tensor) -> list[torch.Tensor]:
        net = self.extractor if self.extractor_fast is None else self.extractor_fast
        return net(x, self.depth)

    def forward(self, generated: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Returns (total loss, {stage name: weighted loss of that stage}) for the active stages."""
        if generated.shape != target.shape:
            raise ValueError(f"style loss: generated {tuple(generated.shape)} and target "
                             f"{tuple(target.shape)} differ in shape")
        if not self.active:
            zero = generated.new_zeros(())
            return zero, {}
        with torch.no_grad():
            target_feats = self._features(target)
            target_grams = {i: gram_matrix(target_feats[i]) for i in self.active}
        gen_feats = self._features(generated)
        parts = {}
        for i in self.active:
            parts[STAGE_NAMES[i]] = gram_l1(gen_feats[i], target_grams[i]) * self.weights[i] ** 2 * self.scale
        return sum(parts.values()), parts


def style_loss_probe(weights: Sequence[float], batch: int, size: int) -> Probe:
    """What ``--precision`` changes in a CGN step, for ``auto`` to time where it measures
    (:mod:`cgn.core.precision`): the style loss's VGG passes (target forward, generated forward
    and backward to the input) on a randomly initialised VGG16, batch x 3 x size x size."""
    active = [STAGE_NAMES[i] for i, w in enumerate(weights) if float(w) != 0]

    def make(bf16: bool):
        loss = StyleLoss(VGG16Features(), weights, autocast_bf16=bf16)
        generated = torch.rand(batch, 3, size, size, requires_grad=True)
        target = torch.rand(batch, 3, size, size)

        def call() -> None:
            total, _ = loss(generated, target)
            if total.requires_grad:
                total.backward()
        return call
    return Probe(f"style-loss[{','.join(active)}]-{batch}x{size}px", make)
