"""The ImageNet CGN: a frozen reference BigGAN, three BigGAN mechanisms, U²-Net.

::

    x_gt            = G_gt(u, y)                       frozen BigGAN-deep (the target)
    m, premask      = clamp(U2Net(f_shape(u, y_s)))    shape mechanism → mask   [B, 1, R, R]
    f               = f_text(u, y_t)                   texture mechanism        [B, 3, R, R]
    b, b_saliency   = f_bg(u, y_b), U2Net(b)           background mechanism     [B, 3, R, R]
    x_gen           = compose(m, f, b)                 the analytic composer

All four BigGANs start from the same weights; U²-Net and G_gt stay frozen and in eval mode
(also when the CGN is put in training mode). The attribute names are the state-dict layout of the
authors' code, so their ``cgn.pth`` (keys ``biggan_GT.*, f_shape.*, f_text.*, f_bg.*, u2net.*``,
possibly with a ``module.`` prefix) loads strictly; everywhere else the mechanisms are called
``shape``, ``texture`` and ``background`` (:data:`TRAINABLE` maps them to the attributes).
Class inputs are class *vectors* ``[B, K]`` (one-hot, or mixtures of one-hots for
interpolations in class-embedding space; K = the BigGAN's classes, 1000 for ImageNet).

The model also implements :class:`cgn.core.sampling.CounterfactualModel` (mechanisms
``shape / texture / background``, one truncated noise vector per item), so the generic
counterfactual sampler works with it.

Reference: docs/reference.md#imagenet-mechanisms.
"""

from __future__ import annotations

import dataclasses
import math
import os
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from cgn.core.composer import compose
from cgn.errors import CGNError
from cgn.imagenet.background import BackgroundMechanism
from cgn.imagenet.biggan import BigGAN, BigGANConfig, biggan_deep_256_config, tiny_config
from cgn.imagenet.config import ModelConfig
from cgn.imagenet.shape import ShapeMechanism
from cgn.imagenet.texture import TextureMechanism
from cgn.imagenet.u2net import U2Net, U2NetConfig, fill_missing_bn_counters, freeze

CHECKPOINT_KIND = "imagenet-cgn"
TRAINABLE = {"shape": "f_shape", "texture": "f_text", "background": "f_bg"}  # mechanism -> attribute
_PHI_2 = 0.5 * (1 + math.erf(2 / math.sqrt(2)))  # Φ(2)


def truncated_noise(n: int, dim: int, truncation: float,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """``truncation · z`` with z ~ N(0, 1) truncated to [-2, 2], by inverse-CDF sampling.

    Drawn on the CPU from ``generator`` (float64 internally): [n, dim] float32.
    """
    p = torch.rand(n, dim, generator=generator, dtype=torch.float64)
    p = (1 - _PHI_2) + (2 * _PHI_2 - 1) * p                      # uniform on [Φ(-2), Φ(2)]
    return (torch.special.ndtri(p) * truncation).float()


@dataclass
class CGNOutput:
    mask: torch.Tensor              # [B, 1, R, R] in [c, 1-c]
    premask: torch.Tensor           # [B, 3, R, R] f_shape's image (detached)
    foreground: torch.Tensor        # [B, 3, R, R]
    background: torch.Tensor        # [B, 3, R, R]
    background_mask: torch.Tensor | None  # [B, 1, R, R] U2-Net saliency of the background (training)
    x_gt: torch.Tensor | None = None  # [B, 3, R, R] the frozen BigGAN's image

    def composite(self) -> torch.Tensor:
        return compose(self.mask, self.foreground, self.background)

    def float(self) -> "CGNOutput":
        """Every tensor in float32 (the outputs of a forward under bf16 autocast, for the losses)."""
        return CGNOutput(*(None if t is None else t.float() for t in
                           (self.mask, self.premask, self.foreground, self.background,
                            self.background_mask, self.x_gt)))


class ImageNetCGN(nn.Module):
    mechanisms = ("shape", "texture", "background")

    def __init__(self, biggan_config: BigGANConfig, u2net_config: U2NetConfig,
                 mask_clamp: float = 1e-4, truncation: float = 0.5):
        super().__init__()
        self.biggan_config = biggan_config
        self.u2net_config = u2net_config
        self.mask_clamp = mask_clamp
        self.truncation = truncation          # used by the CounterfactualModel interface
        self.biggan_GT = BigGAN(biggan_config)
        self.f_shape = ShapeMechanism(biggan_config)
        self.f_text = TextureMechanism(biggan_config)
        self.f_bg = BackgroundMechanism(biggan_config)
        self.u2net = U2Net(u2net_config)
        freeze(self.biggan_GT)
        freeze(self.u2net)

    # -- modes ---------------------------------------------------------------------------------
    def train(self, mode: bool = True) -> "ImageNetCGN":
        super().train(mode)
        self.biggan_GT.eval()
        self.u2net.eval()
        return self

    def trainable(self) -> dict[str, nn.Module]:
        return {k: getattr(self, v) for k, v in TRAINABLE.items()}

    @property
    def n_classes(self) -> int:
        return self.biggan_config.num_classes

    @property
    def z_dim(self) -> int:
        return self.biggan_config.z_dim

    @property
    def device(self) -> torch.device:
        return self.f_shape.embeddings.weight.device

    def class_vector(self, classes) -> torch.Tensor:
        """One-hot ``[B, K]`` vectors of integer classes; a class the BigGAN lacks is a one-line error."""
        c = torch.as_tensor(classes, dtype=torch.long).view(-1)
        if len(c) and not (0 <= int(c.min()) and int(c.max()) < self.n_classes):
            bad = sorted({int(v) for v in c if not 0 <= int(v) < self.n_classes})
            raise CGNError(f"class(es) {bad[:5]} are not classes of this CGN's BigGAN, which has "
                           f"{self.n_classes} classes (0..{self.n_classes - 1}); choose classes in that range")
        return self.f_shape.class_vector(c)

    # -- the forward pass ------------------------------------------------------------------------
    def forward(self, u: torch.Tensor, y_shape: torch.Tensor, y_texture: torch.Tensor,
                y_background: torch.Tensor, truncation: float,
                with_reference: bool = True, with_background_mask: bool = True) -> CGNOutput:
        """u: [B, z_dim]; y_*: [B, num_classes] class vectors. One noise for all mechanisms.
        ``with_reference``: also G_gt's x_gt; ``with_background_mask``: also the U2-Net saliency
        of the background (both only for the losses; sampling skips them, a third less work)."""
        x_gt = None
        if with_reference:
            with torch.no_grad():
                x_gt = self.biggan_GT(u, y_shape, truncation)
        mask, premask = self.f_shape.mask(u, y_shape, truncation, self.u2net, self.mask_clamp)
        foreground = self.f_text.foreground(u, y_texture, truncation)
        background, bg_mask = self.f_bg.background(u, y_background, truncation,
                                                   self.u2net if with_background_mask else None)
        return CGNOutput(mask=mask, premask=premask.detach(), foreground=foreground,
                         background=background, background_mask=bg_mask, x_gt=x_gt)

    # -- cgn.core.sampling.CounterfactualModel ---------------------------------------------------
    def draw_latents(self, mechanism: str, n: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        return {"noise": truncated_noise(n, self.z_dim, self.truncation, generator)}

    def run_mechanism(self, mechanism: str, labels: torch.Tensor, noise: torch.Tensor):
        y = self.class_vector(labels)
        if mechanism == "shape":
            mask, premask = self.f_shape.mask(noise, y, self.truncation, self.u2net, self.mask_clamp)
            return mask, {"premask": premask}
        if mechanism == "texture":
            return self.f_text.foreground(noise, y, self.truncation)
        if mechanism == "background":
            b, sal = self.f_bg.background(noise, y, self.truncation, self.u2net)
            return b, {"saliency": sal}
        raise ValueError(f"unknown mechanism {mechanism!r}")

    # -- loading ---------------------------------------------------------------------------------
    def load_cgn_state(self, state: dict, source: str) -> None:
        """Load a full CGN state dict (ours or the authors' ``cgn.pth``; ``module.`` stripped)."""
        from cgn.core.checkpoint import load_state_dict_strict
        state = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}
        state = fill_missing_bn_counters(self, state)
        load_state_dict_strict(self, state, source)
        freeze(self.biggan_GT)
        freeze(self.u2net)
        self.train(self.training)


def biggan_config(cfg: ModelConfig) -> BigGANConfig:
    """The BigGAN architecture ``cfg`` names: a weights folder's config.json, else the one a CGN
    checkpoint records, else the arch fields."""
    arch = recorded_architecture(cfg.cgn) if cfg.cgn and not cfg.biggan else None
    return BigGANConfig(**arch["biggan"]) if arch else _biggan_config(cfg)[0]


def _biggan_config(cfg: ModelConfig) -> tuple[BigGANConfig, Path | None]:
    if cfg.biggan:
        p = Path(cfg.biggan).expanduser()
        cfg_file = (p if p.is_dir() else p.parent) / "config.json"
        if cfg_file.is_file():
            return BigGANConfig.from_json_file(cfg_file), p
        if not p.exists():
            raise CGNError(f"BigGAN weights {p} do not exist; pass the biggan-deep-256 folder "
                           "(run `cgn download biggan-deep-256`)")
        return biggan_deep_256_config(), p
    if cfg.biggan_arch == "tiny":
        return tiny_config(cfg.tiny_resolution, cfg.tiny_width, cfg.tiny_z_dim, cfg.tiny_classes), None
    return biggan_deep_256_config(), None


def architecture(model: ImageNetCGN) -> dict:
    """The architectures of the BigGAN and the U²-Net as a checkpoint records them (they may
    have come from weight files, which a checkpoint's user need not have)."""
    return {"biggan": dataclasses.asdict(model.biggan_config),
            "u2net": dataclasses.asdict(model.u2net_config)}


def recorded_architecture(path: str | os.PathLike, loaded: object = None) -> dict | None:
    """The architectures (:func:`architecture`) one of our CGN checkpoints records; None for the
    authors' ``cgn.pth`` and older checkpoints. ``loaded``: the file's contents if read already;
    otherwise it is memory-mapped, so its tensors are not read."""
    from cgn.core.checkpoint import FORMAT
    obj = loaded
    if obj is None:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except (OSError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile):
            return None  # a legacy or unreadable file: the loader that follows says which
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        return (obj.get("extra") or {}).get("architecture")
    return None


def build_cgn(cfg: ModelConfig, truncation: float = 0.5, loaded: object = None) -> ImageNetCGN:
    """Build the CGN on the CPU: BigGAN/U²-Net from their files (or seeded random weights),
    then, if ``cfg.cgn`` is set, every part from that CGN file (``loaded``: its contents, when
    the caller has read it already), in the architectures it records (those of the files it was
    trained from), else in those ``cfg`` names."""
    arch = recorded_architecture(cfg.cgn, loaded) if cfg.cgn else None
    bcfg, bpath = (BigGANConfig(**arch["biggan"]), None) if arch else _biggan_config(cfg)
    u2_state = None
    if cfg.u2net:
        u2 = U2Net.from_pretrained(cfg.u2net, align_corners=cfg.u2net_align_corners)
        ucfg, u2_state = u2.config, u2.state_dict()
    elif arch:
        ucfg = U2NetConfig(**arch["u2net"])
    else:
        ucfg = U2NetConfig(arch=cfg.u2net_arch, align_corners=cfg.u2net_align_corners)
    with torch.device("meta"):
        model = ImageNetCGN(bcfg, ucfg, mask_clamp=cfg.mask_clamp, truncation=truncation)
    model = model.to_empty(device="cpu")
    if cfg.cgn:
        # Every part comes from the CGN file (loaded strictly: nothing stays uninitialised).
        load_cgn_file(model, cfg.cgn, loaded)
        return model.train(False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.init_seed)
        g_state = (BigGAN.from_pretrained(bpath) if bpath is not None else BigGAN(bcfg)).state_dict()
        if u2_state is None:
            u2_state = U2Net(ucfg).state_dict()
    for name in ("biggan_GT", "f_shape", "f_text", "f_bg"):
        getattr(model, name).load_state_dict(g_state, strict=True)
    model.u2net.load_state_dict(u2_state, strict=True)
    freeze(model.biggan_GT)
    freeze(model.u2net)
    return model.train(False)


def load_cgn_file(model: ImageNetCGN, path: str | os.PathLike, loaded: object = None) -> None:
    """Load the authors' ``cgn.pth`` (a plain state dict) or one of our checkpoints (``loaded``:
    the file's contents, if read already)."""
    from cgn.core.checkpoint import FORMAT, torch_load
    state = torch_load(path, what="CGN weights") if loaded is None else loaded
    if isinstance(state, dict) and state.get("format") == FORMAT:
        if state.get("kind") != CHECKPOINT_KIND:
            raise CGNError(f"{path} holds a '{state.get('kind')}' checkpoint, not an ImageNet CGN")
        state = state["model"]
    if not isinstance(state, dict):
        raise CGNError(f"{path} is not a CGN state dict")
    model.load_cgn_state(state, f"CGN weights {path}")
