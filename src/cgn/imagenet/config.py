"""Configs of the ImageNet CGN (docs/reference.md#imagenet-cgn) and its presets.

Every field is typed and validated; ``cgn imagenet train --set section.field=value`` overrides
any of them. The loss weights and learning rates default to the authors' code config (the
paper's λ differ slightly: λ1..λ6 = 100, 5, 300, 500, 5, 2000 and a texture lr of 1e-5).

Presets
-------
``imagenet-256``
    The paper's model: four BigGAN-deep-256 copies initialised from the public release, U²-Net
    (``u2net.pth``), the authors' schedule (batch 1 × 4000 accumulations × 300 episodes).
    Command::

        cgn imagenet train --preset imagenet-256 --biggan WEIGHTS/biggan-deep-256 \\
            --u2net WEIGHTS/u2net.pth --vgg16 WEIGHTS/vgg16-397923af.pth --out runs/in_cgn

    Expected (the paper, Table 2; the authors' ``cgn.pth``): Inception Score 130.2 (BigGAN 202.9)
    and μ_mask ≈ 0.3, measured with ``cgn imagenet metrics`` on 2,000 random counterfactuals
    (10 splits). Needs a GPU; see docs/imagenet_cgn.md for memory and time.
``tiny``
    Random tiny BigGAN (16 px, width 4) and U²-Net, random VGG16 features, 2 episodes × 2
    accumulations: the CPU smoke test of the whole pipeline (no expected numbers)::

        cgn imagenet train --preset tiny --out runs/in_cgn_tiny
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from cgn.config import check
from cgn.presets import Preset

FIXED_CLASSES = [15, 251, 330, 382, 385, 483, 559, 751, 938, 947, 999]


@dataclass
class ModelConfig:
    biggan: str = field(default="", metadata={
        "help": "BigGAN weights: a folder with config.json + pytorch_model.bin, or the .bin; "
                "empty = random init of biggan_arch"})
    biggan_arch: Literal["deep-256", "tiny"] = field(default="deep-256", metadata={
        "help": "architecture used when no weights are given"})
    tiny_resolution: int = field(default=32, metadata={"help": "tiny BigGAN output size"})
    tiny_width: int = field(default=4, metadata={"help": "tiny BigGAN channel width"})
    tiny_z_dim: int = field(default=8, metadata={"help": "tiny BigGAN noise/embedding size"})
    u2net: str = field(default="", metadata={
        "help": "U2-Net weights (u2net.pth / u2netp.pth); empty = random init of u2net_arch"})
    u2net_arch: Literal["full", "small", "tiny"] = field(default="full", metadata={
        "help": "U2-Net architecture used when no weights are given"})
    u2net_align_corners: bool = field(default=True, metadata={
        "help": "bilinear upsampling in U2-Net (the CGN's copy: true)"})
    cgn: str = field(default="", metadata={
        "help": "initialise all parts from the authors' cgn.pth or a cgn checkpoint"})
    mask_clamp: float = field(default=1e-4, metadata={"help": "mask clamped to [c, 1-c]"})
    init_seed: int = field(default=0, metadata={"help": "seed of random initialisations"})

    def __post_init__(self):
        check(0 < self.mask_clamp < 0.5, "mask_clamp must be in (0, 0.5)")
        check(self.tiny_resolution >= 8, "tiny_resolution must be >= 8")
        check(self.tiny_width >= 1 and self.tiny_z_dim >= 1, "tiny sizes must be positive")


@dataclass
class LossConfig:
    l1: float = field(default=100.0, metadata={"help": "L1(x_gen, x_gt) weight"})
    perc: list[float] = field(default_factory=lambda: [4.0, 4.0, 4.0, 4.0], metadata={
        "help": "style loss (x_gen vs x_gt) per-VGG-stage weights w (term w^2 * 5000)"})
    binary: float = field(default=300.0, metadata={"help": "mask binary-entropy weight"})
    mask: float = field(default=500.0, metadata={"help": "mask-size interval loss weight"})
    mask_interval: list[float] = field(default_factory=lambda: [0.1, 0.9], metadata={
        "help": "allowed range of the mean mask"})
    text: list[float] = field(default_factory=lambda: [0.0, 5.0, 5.0, 0.0], metadata={
        "help": "texture loss (foreground vs patch grid) per-stage weights"})
    bg: float = field(default=2000.0, metadata={"help": "background saliency loss weight"})
    text_patch: int = field(default=15, metadata={"help": "texture patch size (work resolution)"})
    text_work_size: int = field(default=128, metadata={
        "help": "x_gt and mask are resized to this before cutting patches"})
    text_top: int = field(default=100, metadata={"help": "patches drawn from the top-k by mask"})
    text_grid: int = field(default=6, metadata={"help": "the patch grid is text_grid x text_grid"})
    feature_extractor: str = field(default="auto", metadata={
        "help": "VGG16 features: imagenet (torchvision's) | hed | random | auto (imagenet, else "
                "hed) | path to a torchvision file"})
    vgg16: str = field(default="", metadata={"help": "explicit torchvision VGG16 weight file"})
    allow_download: bool = field(default=False, metadata={
        "help": "let the feature extractor download torchvision VGG16 weights"})
    feature_seed: int = field(default=0, metadata={"help": "seed of the random VGG16"})

    def __post_init__(self):
        for name in ("l1", "binary", "mask", "bg"):
            check(getattr(self, name) >= 0, f"{name} weight must be >= 0")
        check(len(self.perc) == 4 and len(self.text) == 4, "perc and text need 4 stage weights")
        check(all(w >= 0 for w in self.perc + self.text), "style weights must be >= 0")
        lo, hi = self.mask_interval if len(self.mask_interval) == 2 else (1, 0)
        check(0 <= lo < hi <= 1, "mask_interval must be [low, high] with 0 <= low < high <= 1")
        check(self.text_patch >= 1 and self.text_grid >= 1 and self.text_top >= 1,
              "texture patch, grid and top-k must be >= 1")
        check(self.text_work_size > self.text_patch, "text_work_size must exceed text_patch")
        n_patches = (self.text_work_size - self.text_patch + 1) ** 2
        check(self.text_top <= n_patches, f"text_top must be <= the {n_patches} patches available")


@dataclass
class OptimConfig:
    lr_shape: float = field(default=8e-6, metadata={"help": "Adam lr of f_shape"})
    lr_texture: float = field(default=3e-5, metadata={"help": "Adam lr of f_text (paper: 1e-5)"})
    lr_background: float = field(default=1e-5, metadata={"help": "Adam lr of f_bg"})
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999], metadata={
        "help": "Adam betas (the authors' optimiser defaults)"})

    def __post_init__(self):
        check(min(self.lr_shape, self.lr_texture, self.lr_background) > 0, "learning rates must be > 0")
        check(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "betas: two values in [0, 1)")


@dataclass
class TrainConfig:
    episodes: int = field(default=300, metadata={"help": "training length in episodes (optimizer updates)", "resume": "extend"})
    batch_size: int = field(default=1, metadata={"help": "samples per micro-step (per process)"})
    batch_acc: int = field(default=4000, metadata={"help": "micro-steps accumulated per update"})
    truncation: float = field(default=1.0, metadata={"help": "noise truncation in training"})
    seed: int = field(default=0, metadata={"help": "seed of classes, noise and texture patches"})
    save_every: int = field(default=1, metadata={"help": "checkpoint every n episodes"})
    sample_every: int = field(default=1, metadata={"help": "sample sheet every n episodes"})
    sample_classes: list[int] = field(default_factory=lambda: list(FIXED_CLASSES), metadata={
        "help": "classes of the sample sheets"})
    sample_truncation: float = field(default=0.5, metadata={"help": "truncation of sample sheets"})
    fixed_noise: str = field(default="", metadata={
        "help": "(1, z_dim) noise file of the sample sheets; empty = the authors' (cgn download "
                "imagenet-sheet-noise) when present and fitting, else seeded"})

    def __post_init__(self):
        check(self.episodes >= 1 and self.batch_size >= 1 and self.batch_acc >= 1,
              "episodes, batch_size and batch_acc must be >= 1")
        check(0 < self.truncation <= 1 and 0 < self.sample_truncation <= 1,
              "truncations must be in (0, 1]")
        check(self.save_every >= 1 and self.sample_every >= 1, "save/sample intervals must be >= 1")
        check(len(self.sample_classes) >= 1, "sample_classes must not be empty")


@dataclass
class ImageNetCGNConfig:
    preset: str = field(default="imagenet-256", metadata={"help": "preset this config came from"})
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self):
        n = 1000
        check(all(0 <= c < n for c in self.train.sample_classes), "sample_classes must be in 0..999")


PRESETS: dict[str, Preset] = {p.name: p for p in [
    Preset("imagenet-256", ImageNetCGNConfig, "imagenet train",
           "cgn imagenet train --preset imagenet-256 --biggan WEIGHTS/biggan-deep-256 "
           "--u2net WEIGHTS/u2net.pth --vgg16 WEIGHTS/vgg16-397923af.pth --out runs/in_cgn",
           "the paper, Table 2 (the authors' cgn.pth): Inception Score 130.2 (BigGAN 202.9) and "
           "mu_mask about 0.3, measured with cgn imagenet metrics on 2,000 random counterfactuals "
           "(10 splits)",
           # the paper's style features: torchvision's ImageNet VGG16, never a stand-in
           overrides={"loss.feature_extractor": "imagenet"}),
    Preset("tiny", ImageNetCGNConfig, "imagenet train",
           "cgn imagenet train --preset tiny --out runs/in_cgn_tiny",
           "nothing: the CPU smoke test of the whole pipeline",
           overrides={"model.biggan_arch": "tiny", "model.u2net_arch": "tiny",
                      "model.tiny_resolution": 16, "model.tiny_width": 4, "model.tiny_z_dim": 8,
                      "loss.feature_extractor": "random", "loss.text_work_size": 16,
                      "loss.text_patch": 3, "loss.text_top": 20, "loss.text_grid": 3,
                      "train.episodes": 2, "train.batch_acc": 2, "train.batch_size": 1,
                      "train.sample_classes": [15, 251, 999]}),
]}
