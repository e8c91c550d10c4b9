"""The MNIST CGN: three independent mechanisms and the analytic composer.

    u_shape, u_texture, u_background ~ N(0, I_32)    noise, one per mechanism
    e = Embedding(10, 10)                            one label embedding shared by all mechanisms
    m = shape([u_shape, e(y_shape)])                 the mask        [B, 1, 32, 32] in (0, 1)
    f = texture([u_texture, e(y_texture)])           the foreground  [B, 3, 32, 32] in [-1, 1]
    b = background([u_background, e(y_background)])  the background  [B, 3, 32, 32] in [-1, 1]
    x = compose(m, f, b) = m*f + (1-m)*b             (cgn.core.composer)

f and b are tile-and-crop textures (:mod:`cgn.mnist.texture`).

In training (and in a plain sample) the three mechanisms get the same label and the same noise;
counterfactuals give each its own (:mod:`cgn.core.sampling`).

Size: 659,992 trainable parameters plus 470 BatchNorm running-statistic entries, i.e. 660,462
numbers in the state dict, the count of the authors' checkpoints.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping

import torch
from torch import nn

from cgn.core.composer import compose
from cgn.mnist.background import BackgroundMechanism
from cgn.mnist.config import ModelConfig
from cgn.mnist.shape import ShapeMechanism
from cgn.mnist.texture import TextureMechanism, draw_offsets

CHECKPOINT_KIND = "mnist-cgn"
# State-dict prefixes that our checkpoints once wrote under another name (old -> current): the
# texture mechanism was the attribute ``foreground``. :meth:`MnistCGN.load_weights` renames them.
RENAMED_PREFIXES = {"foreground.": "texture."}


@dataclass
class CGNOutput:
    mask: torch.Tensor         # [B, 1, H, W]
    foreground: torch.Tensor   # [B, 3, H, W]
    background: torch.Tensor   # [B, 3, H, W]
    composite: torch.Tensor    # [B, 3, H, W]


def init_weights(module: nn.Module, init_type: str, gain: float) -> None:
    """Conv/Linear weights by ``init_type`` with ``gain`` (std for ``normal``), zero biases;
    BatchNorm weights ~ N(1, gain), zero biases. Embeddings keep PyTorch's N(0, 1)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            if init_type == "normal":
                nn.init.normal_(m.weight, 0.0, gain)
            elif init_type == "xavier":
                nn.init.xavier_normal_(m.weight, gain=gain)
            elif init_type == "kaiming":
                nn.init.kaiming_normal_(m.weight, a=0, mode="fan_in")
            elif init_type == "orthogonal":
                nn.init.orthogonal_(m.weight, gain=gain)
            else:
                raise ValueError(f"unknown init {init_type!r}")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, gain)
            nn.init.zeros_(m.bias)


class MnistCGN(nn.Module):
    mechanisms = ("shape", "texture", "background")

    def __init__(self, cfg: ModelConfig | None = None):
        super().__init__()
        cfg = cfg or ModelConfig()
        self.cfg = cfg
        self.n_classes = cfg.n_classes
        self.latent_dim = cfg.latent_dim
        self.img_size = cfg.img_size
        in_dim = cfg.latent_dim + cfg.n_classes
        self.label_emb = nn.Embedding(cfg.n_classes, cfg.n_classes)
        self.shape = ShapeMechanism(in_dim, cfg.ngf, cfg.img_size)
        self.texture = TextureMechanism(in_dim, cfg.ngf, cfg.img_size)
        self.background = BackgroundMechanism(in_dim, cfg.ngf, cfg.img_size)
        init_weights(self, cfg.init_type, cfg.init_gain)

    # --- the counterfactual-model protocol (cgn.core.sampling) -----------------------------

    def draw_latents(self, mechanism: str, n: int, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Noise [n, latent] (and crop offsets [n, 2] for the textures), on the CPU."""
        noise = torch.randn(n, self.latent_dim, generator=generator)
        if mechanism == "shape":
            return {"noise": noise}
        if mechanism in ("texture", "background"):
            return {"noise": noise, "offsets": draw_offsets(n, self.img_size, generator)}
        raise ValueError(f"unknown mechanism {mechanism!r}")

    def run_mechanism(self, mechanism: str, labels: torch.Tensor, noise: torch.Tensor,
                      offsets: torch.Tensor | None = None) -> torch.Tensor:
        z = torch.cat([noise, self.label_emb(labels)], dim=1)  # [B, latent + n_classes]
        if mechanism == "shape":
            return self.shape(z)
        if offsets is None:
            raise ValueError(f"the {mechanism} mechanism needs crop offsets")
        if mechanism == "texture":
            return self.texture(z, offsets)
        if mechanism == "background":
            return self.background(z, offsets)
        raise ValueError(f"unknown mechanism {mechanism!r}")

    # --- training-time sampling ---------------------------------------------------------------

    def forward(self, labels: torch.Tensor, noise: torch.Tensor, texture_offsets: torch.Tensor,
                background_offsets: torch.Tensor) -> CGNOutput:
        """A plain sample: the same labels [B] and noise [B, latent] for all three mechanisms."""
        mask = self.run_mechanism("shape", labels, noise)
        f = self.run_mechanism("texture", labels, noise, texture_offsets)
        b = self.run_mechanism("background", labels, noise, background_offsets)
        return CGNOutput(mask, f, b, compose(mask, f, b))

    def sample_inputs(self, n: int, generator: torch.Generator | None = None,
                      device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        """Labels (uniform), noise and both crop offsets for a training batch of ``n``."""
        labels = torch.randint(self.n_classes, (n,), generator=generator)
        noise = torch.randn(n, self.latent_dim, generator=generator)
        t_off = draw_offsets(n, self.img_size, generator)
        b_off = draw_offsets(n, self.img_size, generator)
        return {"labels": labels.to(device), "noise": noise.to(device),
                "texture_offsets": t_off.to(device), "background_offsets": b_off.to(device)}

    # --- loading ------------------------------------------------------------------------------

    def load_weights(self, state: Mapping[str, torch.Tensor], source: str) -> None:
        """Load a state dict strictly (a mismatch is one CGNError line naming ``source``). Keys
        under an old name (:data:`RENAMED_PREFIXES`) are renamed first, tensors untouched, so
        checkpoints written before a rename load bit for bit."""
        from cgn.core.checkpoint import load_state_dict_strict
        load_state_dict_strict(self, current_keys(state), source)


def current_keys(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with every key under an old prefix (:data:`RENAMED_PREFIXES`) renamed."""
    out = {}
    for key, value in state.items():
        old = next((p for p in RENAMED_PREFIXES if key.startswith(p)), None)
        out[RENAMED_PREFIXES[old] + key[len(old):] if old else key] = value
    return out


def count_parameters(model: nn.Module) -> dict[str, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    state = sum(v.numel() for v in model.state_dict().values())
    return {"trainable": trainable, "state_dict": state}


def load_generator(path: str | os.PathLike, reference_format: bool = False,
                   device: torch.device | str = "cpu") -> tuple[MnistCGN, dict]:
    """A generator from a cgn checkpoint (``kind='mnist-cgn'``), a weights-only file
    (``mnist-cgn-weights``), the name of a shipped pretrained CGN (``colored-mnist``, ...:
    :mod:`cgn.mnist.pretrained`) or, with ``reference_format``, one of the authors' plain state
    dicts. Returns (model in eval mode, info dict)."""
    from cgn.core.checkpoint import load_checkpoint
    from cgn.mnist.config import config_from_dict
    from cgn.mnist.pretrained import WEIGHTS_KIND, resolve
    from cgn.mnist.reference import load_reference

    if reference_format:
        model, info = load_reference(path)
    else:
        name = str(path)
        path = resolve(path)
        ckpt = load_checkpoint(path, kind=(CHECKPOINT_KIND, WEIGHTS_KIND))
        cfg = config_from_dict(ckpt["config"])
        model = MnistCGN(cfg.model)
        state = {k: (v.float() if v.is_floating_point() else v) for k, v in ckpt["model"].items()}
        model.load_weights(state, f"checkpoint {path}")
        extra = ckpt.get("extra", {})
        info = {"format": "cgn", "path": str(path), "step": ckpt["step"], "preset": cfg.preset,
                "dataset": cfg.train.dataset, "feature_extractor": extra.get("feature_extractor", "")}
        if ckpt["kind"] == WEIGHTS_KIND:
            info["format"] = "cgn-weights"
            if name != str(path):
                info["pretrained"] = name
            info["provenance"] = extra.get("provenance", {})
    return model.to(device).eval(), info
