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
``world-32-cgn``
    The ImageNet recipe on a 32-px world (docs/world.md): the world's BigGAN-deep stand-in
    (``cgn imagenet pretrain biggan --preset world-32``) and U²-Net stand-in (``cgn imagenet
    pretrain u2net --preset u2netp-32``), the paper's loss weights, learning rates and patch-grid
    geometry, HED's VGG16 for the style losses, 300 episodes of 4 × 32 samples::

        cgn imagenet train --preset world-32-cgn --biggan RUNS/biggan-world/biggan \
            --u2net RUNS/u2net/u2netp.pth --out runs/in_cgn_world

    Expected: the world's claims (issue 18), measured by the world pipeline, not here.
``tiny``
    Random tiny BigGAN (16 px, width 4) and U²-Net, random VGG16 features, 2 episodes × 2
    accumulations: the CPU smoke test of the whole pipeline (no expected numbers)::

        cgn imagenet train --preset tiny --out runs/in_cgn_tiny

The paper's loss ablation (Table 2) removes one of L_shape (the mask losses ``binary`` and
``mask``), L_text (``text``), L_bg (``bg``) or L_rec (``l1`` and ``perc``): :data:`ABLATIONS`
holds the weights each sets to zero (``cgn imagenet train --ablate shape|text|bg|rec``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from cgn.config import check
from cgn.errors import CGNError
from cgn.presets import Preset

FIXED_CLASSES = [15, 251, 330, 382, 385, 483, 559, 751, 938, 947, 999]
SHEET_ROWS = 16  # a BigGAN of other than 1000 classes: sheets show its first classes, up to this many
# the paper's ablation (Table 2): each removes one loss term of the objective
ABLATIONS: dict[str, dict] = {
    "shape": {"loss.binary": 0.0, "loss.mask": 0.0},
    "text": {"loss.text": [0.0, 0.0, 0.0, 0.0]},
    "bg": {"loss.bg": 0.0},
    "rec": {"loss.l1": 0.0, "loss.perc": [0.0, 0.0, 0.0, 0.0]},
}


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
    tiny_classes: int = field(default=1000, metadata={"help": "tiny BigGAN number of classes"})
    u2net: str = field(default="", metadata={
        "help": "U2-Net weights (u2net.pth / u2netp.pth); empty = random init of u2net_arch"})
    u2net_arch: Literal["full", "small", "tiny"] = field(default="full", metadata={
        "help": "U2-Net architecture used when no weights are given"})
    u2net_align_corners: bool = field(default=True, metadata={
        "help": "bilinear upsampling in U2-Net (the CGN's copy: true)"})
    random_init: bool = field(default=False, metadata={
        "help": "train from random BigGAN/U2-Net weights where no file is given (pipeline checks "
                "only; --random-init)"})
    cgn: str = field(default="", metadata={
        "help": "initialise all parts from the authors' cgn.pth or a cgn checkpoint"})
    mask_clamp: float = field(default=1e-4, metadata={"help": "mask clamped to [c, 1-c]"})
    init_seed: int = field(default=0, metadata={"help": "seed of random initialisations"})

    def __post_init__(self):
        check(0 < self.mask_clamp < 0.5, "mask_clamp must be in (0, 0.5)")
        check(self.tiny_resolution >= 8, "tiny_resolution must be >= 8")
        check(self.tiny_width >= 1 and self.tiny_z_dim >= 1 and self.tiny_classes >= 1,
              "tiny sizes must be positive")


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
    keep_every: int = field(default=0, metadata={"resume": "free", "help":
        "also keep a copy checkpoints/ep<episode>.pt every n episodes (0: none), e.g. to compare "
        "with an ablation trained for fewer episodes"})
    sample_classes: list[int] = field(default_factory=list, metadata={
        "help": "classes of the sample sheets; empty = from the BigGAN: the authors' 11 ImageNet "
                "classes for 1000 classes, else its first classes (up to 16); fixed when the run "
                "starts"})
    sample_truncation: float = field(default=0.5, metadata={"help": "truncation of sample sheets"})
    precision: Literal["auto", "bf16", "fp32"] = field(default="auto", metadata={"resume": "free",
        "help": "the CGN's forward (and the style losses' VGG) under bf16 autocast, fp32, or auto "
                "(bf16 only where it is faster: CPUs with AMX, bf16 GPUs)"})
    fixed_noise: str = field(default="", metadata={
        "help": "(1, z_dim) noise file of the sample sheets; empty = the authors' (cgn download "
                "imagenet-sheet-noise) when present and fitting, else seeded"})

    def __post_init__(self):
        check(self.episodes >= 1 and self.batch_size >= 1 and self.batch_acc >= 1,
              "episodes, batch_size and batch_acc must be >= 1")
        check(0 < self.truncation <= 1 and 0 < self.sample_truncation <= 1,
              "truncations must be in (0, 1]")
        check(self.save_every >= 1 and self.sample_every >= 1, "save/sample intervals must be >= 1")
        check(self.keep_every >= 0, "keep_every must be >= 0 (0: keep no copies)")


@dataclass
class ImageNetCGNConfig:
    preset: str = field(default="imagenet-256", metadata={"help": "preset this config came from"})
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self):
        check(all(c >= 0 for c in self.train.sample_classes), "sample_classes must be >= 0")


def resolve_sample_classes(classes: list[int], n_classes: int) -> list[int]:
    """The sheet classes of a run whose BigGAN has ``n_classes`` classes (``classes`` empty:
    the default); a class the BigGAN does not have is a one-line error."""
    if not classes:
        return list(FIXED_CLASSES) if n_classes == 1000 else list(range(min(n_classes, SHEET_ROWS)))
    bad = [c for c in classes if not 0 <= c < n_classes]
    if bad:
        example = ",".join(str(c) for c in range(min(n_classes, 3)))
        raise CGNError(f"train.sample_classes {bad} are not classes of the BigGAN ({n_classes} "
                       f"classes, 0..{n_classes - 1}); pass --set \"train.sample_classes=[{example}]\" "
                       "or leave it empty (its first classes)")
    return list(classes)


PRESETS: dict[str, Preset] = {p.name: p for p in [
    Preset("imagenet-256", ImageNetCGNConfig, "imagenet train",
           "cgn imagenet train --preset imagenet-256 --biggan WEIGHTS/biggan-deep-256 "
           "--u2net WEIGHTS/u2net.pth --vgg16 WEIGHTS/vgg16-397923af.pth --out runs/in_cgn",
           "the paper, Table 2 (the authors' cgn.pth): Inception Score 130.2 (BigGAN 202.9) and "
           "mu_mask about 0.3, measured with cgn imagenet metrics on 2,000 random counterfactuals "
           "(10 splits)",
           # the paper's style features: torchvision's ImageNet VGG16, never a stand-in
           overrides={"loss.feature_extractor": "imagenet", "train.sample_classes": list(FIXED_CLASSES)}),
    Preset("world-32-cgn", ImageNetCGNConfig, "imagenet train",
           "cgn imagenet train --preset world-32-cgn --biggan RUNS/biggan-world/biggan "
           "--u2net RUNS/u2net/u2netp.pth --out runs/in_cgn_world",
           "the world's claims of issue 18 (mechanisms separated, mu_mask near the world's mean "
           "object area), measured by the world pipeline",
           # the architecture fields describe the stand-ins (used only with --random-init); the
           # loss weights, learning rates and patch-grid geometry are the paper's (docs/imagenet_cgn.md)
           overrides={"model.biggan_arch": "tiny", "model.tiny_resolution": 32, "model.tiny_width": 16,
                      "model.tiny_z_dim": 128, "model.tiny_classes": 10, "model.u2net_arch": "small",
                      "loss.feature_extractor": "hed", "train.episodes": 300, "train.batch_size": 32,
                      "train.batch_acc": 4, "train.save_every": 10, "train.sample_every": 10}),
    Preset("tiny", ImageNetCGNConfig, "imagenet train",
           "cgn imagenet train --preset tiny --out runs/in_cgn_tiny",
           "nothing: the CPU smoke test of the whole pipeline",
           overrides={"model.biggan_arch": "tiny", "model.u2net_arch": "tiny",
                      "model.tiny_resolution": 16, "model.tiny_width": 4, "model.tiny_z_dim": 8,
                      "model.random_init": True, "loss.feature_extractor": "random", "loss.text_work_size": 16,
                      "loss.text_patch": 3, "loss.text_top": 20, "loss.text_grid": 3,
                      "train.episodes": 2, "train.batch_acc": 2, "train.batch_size": 1,
                      "train.sample_classes": [15, 251, 999]}),
]}
