"""BigGAN-deep generator (Brock et al. 2019), laid out like the public PyTorch port.

The public ``biggan-deep-256`` release of the widely used PyTorch port is a folder with
``config.json`` (this module's :class:`BigGANConfig` fields, same names) and ``pytorch_model.bin``
(a plain state dict). This implementation has exactly that state dict: the same module names,
parameter shapes and spectral-norm buffers (``weight_orig`` / ``weight_u`` / ``weight_v``), so the
file loads unchanged and strictly. ``tests/data/biggan_deep_256_keys.txt`` holds the expected
key list (see the test that builds the full model on the ``meta`` device).

Architecture (ch = channel_width, cond = [u, W_e y], u ∈ R^z_dim, y a class vector)::

    gen_z:  SNLinear(cond → 4·4·16ch), reshaped TF-style (NHWC → NCHW)       [B, 16ch, 4, 4]
    layers: GenBlock × len(layers), with SelfAttn inserted before the block at
            ``attention_layer_position``; every "up" block doubles the resolution
    bn → ReLU → SNConv3×3(ch → ch) → keep 3 channels → tanh                  [B, 3, R, R]

The layers (spectral norm, standing-statistics BatchNorm, GenBlock, SelfAttn) are in
:mod:`cgn.imagenet.biggan_layers`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from cgn.config import check
from cgn.errors import CGNError
from cgn.imagenet.biggan_layers import BigGANBatchNorm, GenBlock, SelfAttn, SNConv2d, SNLinear

WEIGHTS_NAME = "pytorch_model.bin"
CONFIG_NAME = "config.json"


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------

def _deep_256_layers() -> list[list]:
    # (upsample?, in-width multiplier, out-width multiplier) of each GenBlock
    return [[False, 16, 16], [True, 16, 16], [False, 16, 16], [True, 16, 8], [False, 8, 8],
            [True, 8, 8], [False, 8, 8], [True, 8, 4], [False, 4, 4], [True, 4, 2],
            [False, 2, 2], [True, 2, 1]]


@dataclass
class BigGANConfig:
    """Architecture of a BigGAN-deep generator (field names as in the port's ``config.json``)."""
    output_dim: int = field(default=256, metadata={"help": "output resolution (4 · 2^#up-blocks)"})
    z_dim: int = field(default=128, metadata={"help": "noise dimension"})
    class_embed_dim: int = field(default=128, metadata={"help": "class embedding dimension"})
    channel_width: int = field(default=128, metadata={"help": "base width ch"})
    num_classes: int = field(default=1000, metadata={"help": "number of classes"})
    layers: list = field(default_factory=_deep_256_layers,
                         metadata={"help": "GenBlocks as [upsample, in_mult, out_mult]"})
    attention_layer_position: int = field(default=8, metadata={"help": "SelfAttn before this block"})
    eps: float = field(default=1e-4, metadata={"help": "epsilon of BN and spectral norm"})
    n_stats: int = field(default=51, metadata={"help": "standing-statistics rows (truncation grid)"})

    def __post_init__(self):
        self.layers = [[bool(a), int(b), int(c)] for a, b, c in self.layers]
        for name in ("output_dim", "z_dim", "class_embed_dim", "channel_width", "num_classes"):
            check(getattr(self, name) > 0, f"{name} must be positive")
        check(len(self.layers) > 0, "layers must not be empty")
        check(0 <= self.attention_layer_position <= len(self.layers),
              "attention_layer_position must index a block (or equal len(layers): no attention)")
        check(self.n_stats >= 2, "n_stats must be at least 2")
        check(self.eps > 0, "eps must be positive")
        n_up = sum(1 for up, _, _ in self.layers if up)
        check(4 * 2 ** n_up == self.output_dim,
              f"output_dim {self.output_dim} does not match the {n_up} up-sampling blocks "
              f"(4·2^{n_up} = {4 * 2 ** n_up})")
        check(self.layers[0][1] == 16, "the first block must take 16·ch channels (gen_z output)")
        check(self.layers[-1][2] == 1, "the last block must output ch channels (final BN)")
        for (_, _, out), (_, nxt, _) in zip(self.layers, self.layers[1:]):
            check(out == nxt, "each block's in_mult must equal the previous block's out_mult")
        for _, i, o in self.layers:
            check(o in (i, i // 2) and (self.channel_width * i) % 4 == 0,
                  "a block keeps or halves the width, and in-width must be divisible by 4")
        if self.attention_layer_position < len(self.layers):
            a = self.channel_width * self.layers[self.attention_layer_position][1]
            check(a % 8 == 0, "the attention width must be divisible by 8")

    @property
    def cond_dim(self) -> int:
        return self.z_dim + self.class_embed_dim

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> "BigGANConfig":
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise CGNError(f"cannot read BigGAN config {path} ({e}); re-download it") from None
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise CGNError(f"BigGAN config {path} has unknown field(s) {sorted(unknown)}; "
                           "it is not a BigGAN-deep config.json")
        try:
            return cls(**data)
        except (ValueError, TypeError) as e:
            raise CGNError(f"BigGAN config {path}: {e}") from None


def biggan_deep_256_config() -> BigGANConfig:
    """The public ``biggan-deep-256`` architecture (≈ 55.9 M parameters)."""
    return BigGANConfig()


def tiny_config(output_dim: int = 32, channel_width: int = 4, z_dim: int = 8,
                num_classes: int = 1000, n_stats: int = 51) -> BigGANConfig:
    """A narrow BigGAN-deep for CPU tests: the same block pattern, fewer blocks and channels.

    Each up-sampling step is a (keep, up-and-halve) pair of blocks, as in the 256-px model; the
    width goes 16·ch → ch (extra halving blocks at the end when there are fewer than four
    up-sampling steps). Attention sits before the fifth block.
    """
    n_up = int(round(math.log2(output_dim / 4))) if output_dim >= 8 else 0
    if n_up < 1 or 4 * 2 ** n_up != output_dim:
        raise CGNError(f"tiny BigGAN output_dim {output_dim} must be 4·2^k (8, 16, 32, 64, ...)")
    layers: list[list] = []
    m = 16
    for _ in range(n_up):
        layers.append([False, m, m])
        layers.append([True, m, max(m // 2, 1)])
        m = max(m // 2, 1)
    while m > 1:
        layers.append([False, m, m // 2])
        m //= 2
    return BigGANConfig(output_dim=output_dim, z_dim=z_dim, class_embed_dim=z_dim,
                        channel_width=channel_width, num_classes=num_classes, layers=layers,
                        attention_layer_position=min(4, len(layers) - 1), eps=1e-4,
                        n_stats=n_stats)


# --------------------------------------------------------------------------------------------
# The generator
# --------------------------------------------------------------------------------------------

class Generator(nn.Module):
    def __init__(self, config: BigGANConfig):
        super().__init__()
        ch = config.channel_width
        self.channel_width = ch
        self.gen_z = SNLinear(config.cond_dim, 4 * 4 * 16 * ch, eps=config.eps)
        layers: list[nn.Module] = []
        for i, (up, in_m, out_m) in enumerate(config.layers):
            if i == config.attention_layer_position:
                layers.append(SelfAttn(ch * in_m, eps=config.eps))
            layers.append(GenBlock(ch * in_m, ch * out_m, config.cond_dim, up, config.n_stats,
                                   config.eps))
        self.layers = nn.ModuleList(layers)
        self.bn = BigGANBatchNorm(ch, None, config.n_stats, config.eps)
        self.conv_to_rgb = SNConv2d(ch, ch, kernel_size=3, padding=1, eps=config.eps)

    def forward(self, cond: torch.Tensor, truncation: float) -> torch.Tensor:
        z = self.gen_z(cond)                                                        # [B, 16·16ch]
        # The weights come from TensorFlow: the linear output is laid out NHWC.
        z = z.view(-1, 4, 4, 16 * self.channel_width).permute(0, 3, 1, 2).contiguous()
        for layer in self.layers:
            z = layer(z, cond, truncation) if isinstance(layer, GenBlock) else layer(z)
        z = self.conv_to_rgb(F.relu(self.bn(z, truncation)))
        return torch.tanh(z[:, :3])                                                 # [B, 3, R, R]


class BigGAN(nn.Module):
    """BigGAN-deep: ``x = G([u, W_e y], truncation)`` with ``y`` a (soft) one-hot class vector."""

    def __init__(self, config: BigGANConfig | None = None):
        super().__init__()
        self.config = config or BigGANConfig()
        self.embeddings = nn.Linear(self.config.num_classes, self.config.class_embed_dim, bias=False)
        self.generator = Generator(self.config)

    def forward(self, u: torch.Tensor, y: torch.Tensor, truncation: float) -> torch.Tensor:
        """u: [B, z_dim] noise; y: [B, num_classes] class vector; returns [B, 3, R, R] in [-1, 1]."""
        if not 0 < truncation <= 1:
            raise ValueError(f"truncation must be in (0, 1], got {truncation}")
        cond = torch.cat([u, self.embeddings(y)], dim=1)                            # [B, cond]
        return self.generator(cond, truncation)

    def class_vector(self, classes: torch.Tensor | list[int]) -> torch.Tensor:
        """One-hot ``[B, num_classes]`` float vectors on this model's device."""
        dev = self.embeddings.weight.device
        y = torch.as_tensor(classes, dtype=torch.long, device=dev).view(-1)
        return F.one_hot(y, self.config.num_classes).to(self.embeddings.weight.dtype)

    # -- loading -------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> "BigGAN":
        """Load a local port-format folder (``config.json`` + ``pytorch_model.bin``).

        ``path`` may also be the ``.bin`` file itself; then ``config.json`` next to it is used if
        present, else the biggan-deep-256 architecture (the authors' CGN stores the file as
        ``biggan256.pth`` without a config).
        """
        from cgn.core.checkpoint import load_state_dict_strict, torch_load
        p = Path(path).expanduser()
        if p.is_dir():
            weights, cfg_file = p / WEIGHTS_NAME, p / CONFIG_NAME
            if not cfg_file.is_file():
                raise CGNError(f"{p} has no {CONFIG_NAME}; a BigGAN folder needs {CONFIG_NAME} and "
                               f"{WEIGHTS_NAME} (run `cgn download biggan-deep-256`)")
        elif p.is_file():
            weights, cfg_file = p, p.parent / CONFIG_NAME
        else:
            raise CGNError(f"BigGAN weights {p} do not exist; pass a folder with {CONFIG_NAME} and "
                           f"{WEIGHTS_NAME} (run `cgn download biggan-deep-256`)")
        if not weights.is_file():
            raise CGNError(f"{weights} is missing; the BigGAN folder needs {WEIGHTS_NAME} "
                           "(run `cgn download biggan-deep-256`)")
        config = BigGANConfig.from_json_file(cfg_file) if cfg_file.is_file() else BigGANConfig()
        state = torch_load(weights, what="BigGAN weights")
        if not isinstance(state, dict):
            raise CGNError(f"{weights} does not hold a state dict; it is not a BigGAN release file")
        with torch.device("meta"):
            model = cls(config)
        model = model.to_empty(device="cpu")
        load_state_dict_strict(model, state, f"BigGAN weights {weights}")
        return model

    def save_pretrained(self, folder: str | os.PathLike) -> None:
        """Write the port's folder layout (used by tests and to export trained mechanisms)."""
        import io

        from cgn.io import write_bytes_atomic, write_text_atomic
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        torch.save(self.state_dict(), buf)
        write_bytes_atomic(folder / WEIGHTS_NAME, buf.getvalue())
        write_text_atomic(folder / CONFIG_NAME, self.config.to_json())
