"""U²-Net salient-object detector (Qin et al. 2020), full (``u2net``) and small (``u2netp``).

In the ImageNet CGN, a frozen U²-Net turns the shape mechanism's output (the *pre-mask*, an
image) into the mask, and segments the background mechanism's output for the background loss.

Module and parameter names follow the public release, so ``u2net.pth`` (176.3 MB) and
``u2netp.pth`` (4.7 MB) load strictly. The U²-Net authors trained with PyTorch 0.4.0, whose
BatchNorm has no ``num_batches_tracked`` buffer; files saved by later versions have it. Both are
accepted: missing counters are filled with 0 (they play no part in eval mode).

Architecture: a U-Net of six stages whose every stage is itself a small U-Net, the *residual
U-block* RSU-L (L = depth: 7, 6, 5, 4, and 4F, a dilated variant without pooling)::

    RSU-L(x):  h_in = REBNCONV(x);  h_1 = REBNCONV(h_in)
               h_i  = REBNCONV(pool(h_{i-1}))            i = 2 .. L-1
               h_L  = REBNCONV_dilation2(h_{L-1})
               d    = REBNCONV(cat(h_L, h_{L-1}));  d = REBNCONV(cat(up(d), h_i)) for i = L-2 .. 1
               return d + h_in

    encoder  stage1..6 = RSU7, RSU6, RSU5, RSU4, RSU4F, RSU4F (2×2 max-pool between stages)
    decoder  stage5d..1d = RSU4F, RSU4, RSU5, RSU6, RSU7 on cat(upsampled deeper, skip)
    saliency sigmoid(outconv(cat(side1..side6)))   side_k: 3×3 conv to 1 channel, upsampled

REBNCONV = Conv3×3 (dilation d, padding d) → BatchNorm → ReLU. Upsampling is bilinear; the
CGN's copy of U²-Net uses ``align_corners=True`` (the U²-Net release: False) — configurable.
The input is used as given: the CGN feeds BigGAN images in [-1, 1] straight in (the U²-Net
release normalises with ImageNet mean/std at 320 px; the CGN does not).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from cgn.config import check
from cgn.errors import CGNError

# Encoder stages (in, mid, out) and decoder stages (in, mid, out) of each preset; the RSU depth
# of each stage is fixed by its position (see the module docstring).
ARCHS: dict[str, dict[str, list[tuple[int, int, int]]]] = {
    "full": {  # u2net.pth, 44.0 M parameters
        "enc": [(3, 32, 64), (64, 32, 128), (128, 64, 256), (256, 128, 512), (512, 256, 512),
                (512, 256, 512)],
        "dec": [(1024, 256, 512), (1024, 128, 256), (512, 64, 128), (256, 32, 64), (128, 16, 64)],
    },
    "small": {  # u2netp.pth, 1.13 M parameters
        "enc": [(3, 16, 64)] + [(64, 16, 64)] * 5,
        "dec": [(128, 16, 64)] * 5,
    },
    "tiny": {  # tests only: the small layout at a quarter of its width
        "enc": [(3, 4, 16)] + [(16, 4, 16)] * 5,
        "dec": [(32, 4, 16)] * 5,
    },
}
ENC_DEPTHS = (7, 6, 5, 4, "4F", "4F")
DEC_DEPTHS = ("4F", 4, 5, 6, 7)  # stage5d, 4d, 3d, 2d, 1d
RELEASE_FILES = {"full": "u2net.pth", "small": "u2netp.pth"}


@dataclass
class U2NetConfig:
    arch: Literal["full", "small", "tiny"] = field(
        default="full", metadata={"help": "full = u2net.pth, small = u2netp.pth, tiny = tests"})
    align_corners: bool = field(default=True, metadata={
        "help": "bilinear upsampling corners (CGN: true, U2-Net release: false)"})

    def __post_init__(self):
        check(self.arch in ARCHS, f"arch must be one of {sorted(ARCHS)}")


class REBNCONV(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, dirate: int = 1):
        super().__init__()
        self.conv_s1 = nn.Conv2d(in_ch, out_ch, 3, padding=dirate, dilation=dirate)
        self.bn_s1 = nn.BatchNorm2d(out_ch)
        self.relu_s1 = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu_s1(self.bn_s1(self.conv_s1(x)))


def _up(x: torch.Tensor, like: torch.Tensor, align_corners: bool) -> torch.Tensor:
    return F.interpolate(x, size=like.shape[2:], mode="bilinear", align_corners=align_corners)


class RSU(nn.Module):
    """Residual U-block of depth L (pooling version): RSU7, RSU6, RSU5, RSU4."""

    def __init__(self, depth: int, in_ch: int, mid_ch: int, out_ch: int, align_corners: bool):
        super().__init__()
        self.depth = depth
        self.align_corners = align_corners
        self.rebnconvin = REBNCONV(in_ch, out_ch)
        self.rebnconv1 = REBNCONV(out_ch, mid_ch)
        for i in range(2, depth):
            setattr(self, f"rebnconv{i}", REBNCONV(mid_ch, mid_ch))
        setattr(self, f"rebnconv{depth}", REBNCONV(mid_ch, mid_ch, dirate=2))
        for i in range(depth - 1, 1, -1):
            setattr(self, f"rebnconv{i}d", REBNCONV(2 * mid_ch, mid_ch))
        self.rebnconv1d = REBNCONV(2 * mid_ch, out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hin = self.rebnconvin(x)
        hs = [self.rebnconv1(hin)]                                   # h_1 at full resolution
        for i in range(2, self.depth):
            pooled = F.max_pool2d(hs[-1], 2, stride=2, ceil_mode=True)
            hs.append(getattr(self, f"rebnconv{i}")(pooled))          # h_i at 1/2^(i-1)
        top = getattr(self, f"rebnconv{self.depth}")(hs[-1])          # dilated bottom
        d = getattr(self, f"rebnconv{self.depth - 1}d")(torch.cat([top, hs[-1]], 1))
        for i in range(self.depth - 2, 0, -1):
            skip = hs[i - 1]
            d = getattr(self, f"rebnconv{i}d")(torch.cat([_up(d, skip, self.align_corners), skip], 1))
        return d + hin


class RSU4F(nn.Module):
    """Dilated residual U-block without pooling (used at the coarsest resolutions)."""

    def __init__(self, in_ch: int, mid_ch: int, out_ch: int):
        super().__init__()
        self.rebnconvin = REBNCONV(in_ch, out_ch)
        self.rebnconv1 = REBNCONV(out_ch, mid_ch, dirate=1)
        self.rebnconv2 = REBNCONV(mid_ch, mid_ch, dirate=2)
        self.rebnconv3 = REBNCONV(mid_ch, mid_ch, dirate=4)
        self.rebnconv4 = REBNCONV(mid_ch, mid_ch, dirate=8)
        self.rebnconv3d = REBNCONV(2 * mid_ch, mid_ch, dirate=4)
        self.rebnconv2d = REBNCONV(2 * mid_ch, mid_ch, dirate=2)
        self.rebnconv1d = REBNCONV(2 * mid_ch, out_ch, dirate=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hin = self.rebnconvin(x)
        h1 = self.rebnconv1(hin)
        h2 = self.rebnconv2(h1)
        h3 = self.rebnconv3(h2)
        h4 = self.rebnconv4(h3)
        d3 = self.rebnconv3d(torch.cat([h4, h3], 1))
        d2 = self.rebnconv2d(torch.cat([d3, h2], 1))
        d1 = self.rebnconv1d(torch.cat([d2, h1], 1))
        return d1 + hin


def _stage(depth, in_ch, mid_ch, out_ch, align_corners) -> nn.Module:
    return RSU4F(in_ch, mid_ch, out_ch) if depth == "4F" else RSU(depth, in_ch, mid_ch, out_ch, align_corners)


class U2Net(nn.Module):
    """``saliency = U2Net(x)``: x [B, 3, H, W] → [B, 1, H, W] in [0, 1]."""

    def __init__(self, config: U2NetConfig | None = None):
        super().__init__()
        self.config = config or U2NetConfig()
        arch = ARCHS[self.config.arch]
        ac = self.config.align_corners
        for k, (depth, (i, m, o)) in enumerate(zip(ENC_DEPTHS, arch["enc"]), start=1):
            setattr(self, f"stage{k}", _stage(depth, i, m, o, ac))
        for k, (depth, (i, m, o)) in zip(range(5, 0, -1), zip(DEC_DEPTHS, arch["dec"])):
            setattr(self, f"stage{k}d", _stage(depth, i, m, o, ac))
        side_in = [arch["dec"][4][2], arch["dec"][3][2], arch["dec"][2][2], arch["dec"][1][2],
                   arch["dec"][0][2], arch["enc"][5][2]]                    # 1d, 2d, 3d, 4d, 5d, 6
        for k, c in enumerate(side_in, start=1):
            setattr(self, f"side{k}", nn.Conv2d(c, 1, 3, padding=1))
        self.outconv = nn.Conv2d(6, 1, 1)

    def forward(self, x: torch.Tensor, all_logits: bool = False):
        """The saliency [B, 1, H, W]; with ``all_logits`` the list of :meth:`logits` instead
        (training calls it so, through DistributedDataParallel when there are several ranks)."""
        out = self.logits(x)
        return out if all_logits else torch.sigmoid(out[0])

    def logits(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The fused saliency logit and the six side logits (side1..side6), each [B, 1, H, W]
        before the sigmoid: the seven outputs U²-Net's deep supervision trains."""
        ac = self.config.align_corners
        enc = []
        h = x
        for k in range(1, 7):
            if k > 1:
                h = F.max_pool2d(h, 2, stride=2, ceil_mode=True)
            h = getattr(self, f"stage{k}")(h)
            enc.append(h)                                             # hx1 .. hx6
        dec = {6: enc[5]}
        d = enc[5]
        for k in range(5, 0, -1):
            skip = enc[k - 1]
            d = getattr(self, f"stage{k}d")(torch.cat([_up(d, skip, ac), skip], 1))
            dec[k] = d                                                # hx5d .. hx1d
        d1 = self.side1(dec[1])
        sides = [d1] + [_up(getattr(self, f"side{k}")(dec[k]), d1, ac) for k in range(2, 7)]
        return [self.outconv(torch.cat(sides, 1))] + sides

    # -- loading -------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, arch: str | None = None,
                        align_corners: bool = True) -> "U2Net":
        """Load ``u2net.pth`` (arch full) or ``u2netp.pth`` (arch small); the arch is inferred
        from the file when not given. Returns the model frozen and in eval mode."""
        from cgn.core.checkpoint import load_state_dict_strict, torch_load
        p = Path(path).expanduser()
        if not p.is_file():
            raise CGNError(f"U2-Net weights {p} do not exist; pass the path of u2net.pth or "
                           "u2netp.pth (run `cgn download u2net`)")
        state = torch_load(p, what="U2-Net weights")
        if not isinstance(state, dict) or not state:
            raise CGNError(f"{p} does not hold a state dict; it is not a U2-Net release file")
        state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
        if arch is None:
            w = state.get("stage1.rebnconvin.conv_s1.weight")
            if w is None:
                raise CGNError(f"{p} has no 'stage1.rebnconvin.conv_s1.weight'; it is not a U2-Net "
                               "state dict")
            arch = next((a for a, spec in ARCHS.items()
                         if spec["enc"][0][2] == w.shape[0]
                         and spec["enc"][0][1] == state["stage1.rebnconv1.conv_s1.weight"].shape[0]),
                        None)
            if arch is None:
                raise CGNError(f"{p}: stage1 widths {tuple(w.shape)} match no known U2-Net; "
                               "pass arch explicitly")
        with torch.device("meta"):
            model = cls(U2NetConfig(arch=arch, align_corners=align_corners))
        model = model.to_empty(device="cpu")
        state = fill_missing_bn_counters(model, state)
        load_state_dict_strict(model, state, f"U2-Net weights {p} (arch {arch})")
        return freeze(model)


def fill_missing_bn_counters(model: nn.Module, state: dict) -> dict:
    """Add ``num_batches_tracked = 0`` where a pre-0.4.1 file lacks it (nothing else)."""
    out = dict(state)
    for k, v in model.state_dict().items():
        if k.endswith("num_batches_tracked") and k not in out:
            out[k] = torch.zeros((), dtype=torch.long)
    return out


def freeze(model: nn.Module) -> nn.Module:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model
