"""The six losses of the ImageNet CGN, weighted as in the authors' code config.

With x_gen = m ⊙ f + (1 − m) ⊙ b and x_gt = the frozen BigGAN's image of the same class/noise::

    L_l1     = 100  · mean|x_gen − x_gt|                         (reconstruction)
    L_perc   = Σ_i w_i² · 5000 · L1(Gram_i(x_gen), Gram_i(x_gt)),  w = [4, 4, 4, 4]
    L_binary = 300  · mean binary entropy of m                    (masks near 0 or 1)
    L_mask   = 500  · mean_b [relu(0.1 − m̄_b) + relu(m̄_b − 0.9)]  (mask size interval)
    L_text   = Σ_i w_i² · 5000 · L1(Gram_i(f), Gram_i(P(x_gt, m))), w = [0, 5, 5, 0]
    L_bg     = 2000 · mean U2Net(b)                               (no object in the background)

P(x_gt, m) is the *patch grid*: x_gt and m are resized to 128 px, the 100 15×15 windows where
the mask is most confident (highest mean) are candidates, 36 are drawn from them with
replacement, tiled 6×6 (90 px) and upsampled back to the image size. It shows the object's
texture without its shape, so f learns texture only.

The generic pieces (binary entropy, interval loss, Gram style loss on VGG16) come from
:mod:`cgn.core.losses`; this module adds the patch grid, the background loss, and the bundle.

Reference: docs/reference.md#imagenet-losses.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cgn.core.losses import StyleLoss, mask_binary_entropy, mask_interval_loss
from cgn.core.perceptual import FeatureSource, VGG16Features, load_vgg16
from cgn.imagenet.config import LossConfig

LOSS_NAMES = ("l1", "perc", "binary", "mask", "text", "bg")


def patch_grid(x_gt: torch.Tensor, mask: torch.Tensor, *, patch: int = 15, work_size: int = 128,
               top: int = 100, grid: int = 6, generator: torch.Generator | None = None) -> torch.Tensor:
    """The texture target P(x_gt, m): a grid of patches from the most object-like regions.

    x_gt: [B, 3, H, W]; mask: [B, 1, H, W]. Returns [B, 3, H, W] (no gradient).
    ``generator`` (CPU) draws the patches; without one the global RNG is used.
    """
    b, c, h, w = x_gt.shape
    with torch.no_grad():
        img = F.interpolate(x_gt, (work_size, work_size), mode="bicubic", align_corners=False)
        prob = F.interpolate(mask, (work_size, work_size), mode="bicubic", align_corners=False)
        # mean mask of every patch×patch window (stride 1, no padding)
        score = F.avg_pool2d(prob, patch, stride=1).flatten(1)                 # [B, n_win]
        n_side = work_size - patch + 1
        best = score.topk(min(top, score.shape[1]), dim=1).indices            # [B, top]
        pick = torch.randint(best.shape[1], (b, grid * grid), generator=generator)
        chosen = best.gather(1, pick.to(best.device))                           # [B, grid²]
        rows, cols = chosen // n_side, chosen % n_side
        # the chosen windows' pixels only (not every window: unfolding all of them costs
        # C·p²·n_win numbers per image, 35 MB at the paper's geometry)
        off = torch.arange(patch, device=img.device)
        r = (rows[:, :, None] + off).view(b, grid, grid, patch, 1)             # [B, g, g, p, 1]
        q = (cols[:, :, None] + off).view(b, grid, grid, 1, patch)             # [B, g, g, 1, p]
        flat = (r * work_size + q).permute(0, 1, 3, 2, 4).reshape(b, 1, -1)    # rows (g·p) × cols (g·p)
        tiles = img.flatten(2).gather(2, flat.expand(-1, c, -1))
        tiles = tiles.view(b, c, grid * patch, grid * patch)                   # tile k = r·grid + q
        return F.interpolate(tiles, (h, w), mode="bicubic", align_corners=False)


def background_saliency_loss(background_mask: torch.Tensor) -> torch.Tensor:
    """Mean U2-Net saliency of the background image (per sample, then over the batch)."""
    return background_mask.flatten(1).mean(1).clamp_min(0).mean()


@dataclass
class LossTerms:
    """Weighted loss terms (what is optimised) and, for the scalar-weighted ones, raw values."""
    weighted: dict[str, torch.Tensor]
    raw: dict[str, torch.Tensor]
    style_parts: dict[str, torch.Tensor]

    def total(self) -> torch.Tensor:
        return sum(self.weighted.values())


class ImageNetCGNLosses(nn.Module):
    """All six losses; one frozen VGG16 serves both style losses. Inputs in float32."""

    def __init__(self, cfg: LossConfig, extractor: VGG16Features | None = None,
                 source: FeatureSource | None = None, autocast_bf16: bool = False):
        super().__init__()
        self.cfg = cfg
        if extractor is None:
            extractor, source = load_vgg16(cfg.feature_extractor, weights=cfg.vgg16 or None,
                                           seed=cfg.feature_seed, allow_download=cfg.allow_download)
        self.source = source
        # with autocast_bf16 the VGG forward runs in bfloat16, the Gram matrices in float32
        self.perc = StyleLoss(extractor, cfg.perc, autocast_bf16=autocast_bf16)
        self.text = StyleLoss(extractor, cfg.text, autocast_bf16=autocast_bf16)

    def forward(self, x_gen: torch.Tensor, x_gt: torch.Tensor, mask: torch.Tensor,
                foreground: torch.Tensor, background_mask: torch.Tensor,
                generator: torch.Generator | None = None) -> LossTerms:
        c = self.cfg
        raw = {
            "l1": F.l1_loss(x_gen, x_gt),
            "binary": mask_binary_entropy(mask),
            "mask": mask_interval_loss(mask, *c.mask_interval),
            "bg": background_saliency_loss(background_mask),
        }
        perc, perc_parts = self.perc(x_gen, x_gt)
        target = patch_grid(x_gt.detach(), mask.detach(), patch=c.text_patch,
                            work_size=c.text_work_size, top=c.text_top, grid=c.text_grid,
                            generator=generator)
        text, text_parts = self.text(foreground, target)
        weighted = {"l1": c.l1 * raw["l1"], "perc": perc, "binary": c.binary * raw["binary"],
                    "mask": c.mask * raw["mask"], "text": text, "bg": c.bg * raw["bg"]}
        parts = {f"perc.{k}": v for k, v in perc_parts.items()}
        parts.update({f"text.{k}": v for k, v in text_parts.items()})
        return LossTerms(weighted={k: weighted[k] for k in LOSS_NAMES}, raw=raw, style_parts=parts)
