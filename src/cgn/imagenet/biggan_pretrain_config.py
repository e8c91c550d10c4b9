"""Configs of ``cgn imagenet pretrain biggan`` (a BigGAN-deep stand-in trained as a GAN) and its presets.

Optimiser defaults (docs/reference.md#biggan-deep-stand-in): Adam with β = (0, 0.999), lr 1e-4
for G and 4e-4 for D, one D step per G step: the SA-GAN rates that the BigGAN paper found best
at small batch sizes (its 2,048-image batches used half of them and two D steps), and the
setting of the BigGAN-deep script of the BigGAN authors' PyTorch code. The paper evaluates an
EMA of G's weights (decay 0.9999; that script starts it after 20,000 iterations); runs here are
short, so the default EMA is 0.999 from step 1,000.

Presets
-------
``world-32``
    The world's stand-in: 32 px, width 16 (G and D), 10 classes, batch 64, 5,000 steps::

        cgn imagenet pretrain biggan --preset world-32 --data TRAIN.npz --out runs/biggan-world

    Expected: its samples carry their class (the world classifier labels >= 90 % of them with
    the class they were drawn for) and its IS is within 10 % of the real test split's, measured
    by the world pipeline. The length: on the 32-px Wildlife world both hold from step 2,000,
    but the digits' shapes (U2-Net mask read by the shape judge, which bounds what the CGN's
    shape mechanism can draw) take longer: 0.21 / 0.27 / 0.46 / 0.91 at steps 1,245 / 2,000 /
    2,500 / 4,461 (2,000 samples, truncation 1; docs/world.md).
``biggan-tiny``
    16 px, width 4, standing statistics on a 0.1 truncation grid, 4 steps of batch 8: the CPU
    check of the trainer (no expected numbers).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from cgn.config import check
from cgn.core import runcontrol
from cgn.presets import Preset

CHECKPOINT_KIND = "biggan-pretrain"


@dataclass
class GANModelConfig:
    resolution: int = field(default=32, metadata={"help": "image side in px (4 * 2^k; the data's side)"})
    g_width: int = field(default=16, metadata={"help": "generator channel width ch (the public model: 128)"})
    d_width: int = field(default=16, metadata={"help": "discriminator channel width"})
    z_dim: int = field(default=128, metadata={"help": "noise and class-embedding size of G (public: 128)"})
    num_classes: int = field(default=0, metadata={
        "help": "number of classes; 0: the data's (largest label + 1), fixed when the run starts"})
    n_stats: int = field(default=51, metadata={
        "help": "standing-statistics rows of G's BatchNorms (truncations 0, 1/(n-1), ..., 1; public: 51)"})
    d_attention: int = field(default=0, metadata={
        "help": "resolution (px) after which D has a self-attention layer; 0: none"})

    def __post_init__(self):
        check(self.resolution >= 8 and self.resolution & (self.resolution - 1) == 0,
              "resolution must be 4 * 2^k (8, 16, 32, 64, ...)")
        check(self.g_width >= 1 and self.d_width >= 1 and self.z_dim >= 1, "widths must be >= 1")
        check(self.num_classes >= 0, "num_classes must be >= 0 (0: from the data)")
        check(self.n_stats >= 2, "n_stats must be >= 2")
        check(self.d_attention >= 0, "d_attention must be >= 0")


@dataclass
class GANOptimConfig:
    lr_g: float = field(default=1e-4, metadata={"help": "Adam learning rate of G"})
    lr_d: float = field(default=4e-4, metadata={"help": "Adam learning rate of D"})
    betas: list[float] = field(default_factory=lambda: [0.0, 0.999], metadata={
        "help": "Adam betas of G and D"})
    adam_eps: float = field(default=1e-6, metadata={"help": "Adam epsilon"})
    d_steps: int = field(default=1, metadata={"help": "D steps per G step (the paper's BigGAN: 2)"})

    def __post_init__(self):
        check(self.lr_g > 0 and self.lr_d > 0 and self.adam_eps > 0, "learning rates and eps must be > 0")
        check(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "betas: two numbers in [0, 1)")
        check(self.d_steps >= 1, "d_steps must be >= 1")


@dataclass
class GANTrainConfig:
    data: str = field(default="", metadata={"resume": "free", "help":
        "training split: an .npz with uint8 images [N, H, W, 3] and int labels [N] (the "
        "cgn data build contract)"})
    limit_train: int | None = field(default=None, metadata={
        "help": "use only the first N training images (quick probes and tests)"})
    steps: int = field(default=10000, metadata={"resume": "extend", "help": "G steps to train"})
    batch_size: int = field(default=64, metadata={"help": "batch size of each G and D step (per process)"})
    seed: int = field(default=0, metadata={"help": "seed of init, data order, noise and classes"})
    ema_decay: float = field(default=0.999, metadata={
        "help": "decay of the EMA of G's weights (the paper: 0.9999)"})
    ema_start: int = field(default=1000, metadata={
        "help": "steps before the EMA starts (it copies G until then)"})
    sample_truncation: float = field(default=0.5, metadata={"resume": "free",
        "help": "truncation of the sample sheets"})
    sample_per_class: int = field(default=8, metadata={"resume": "free",
        "help": "samples per class (columns) of a sample sheet"})
    sample_every: int = field(default=500, metadata={"resume": "free", "help": "steps between sample sheets"})
    checkpoint_every: int = runcontrol.checkpoint_every(epochs=False)
    log_every: int = runcontrol.log_every()
    stats_batches: int = field(default=4, metadata={"resume": "free", "help":
        "batches (of batch_size) averaged for each standing-statistics row of the export"})
    precision: Literal["auto", "bf16", "fp32"] = field(default="auto", metadata={"resume": "free",
        "help": "bf16 autocast, fp32, or auto (bf16 only where it is faster: CPUs with AMX, bf16 GPUs)"})
    device: str = runcontrol.device()
    threads: int = runcontrol.threads()

    def __post_init__(self):
        check(self.steps >= 1, "steps must be >= 1")
        check(self.batch_size >= 2, "batch_size must be >= 2 (batch statistics)")
        check(self.limit_train is None or self.limit_train >= self.batch_size,
              "limit_train must be >= batch_size")
        check(0 <= self.ema_decay < 1, "ema_decay must be in [0, 1)")
        check(self.ema_start >= 0, "ema_start must be >= 0")
        check(0 < self.sample_truncation <= 1, "sample_truncation must be in (0, 1]")
        for name in ("sample_per_class", "sample_every", "stats_batches"):
            check(getattr(self, name) >= 1, f"{name} must be >= 1")
        runcontrol.check(self)


@dataclass
class BigGANPretrainConfig:
    preset: str = field(default="world-32", metadata={"help": "preset this config came from"})
    model: GANModelConfig = field(default_factory=GANModelConfig)
    optim: GANOptimConfig = field(default_factory=GANOptimConfig)
    train: GANTrainConfig = field(default_factory=GANTrainConfig)


PRESETS: dict[str, Preset] = {p.name: p for p in [
    Preset("world-32", BigGANPretrainConfig, "imagenet pretrain biggan",
           "cgn imagenet pretrain biggan --preset world-32 --data TRAIN.npz --out runs/biggan-world",
           "a generator whose samples carry their class (the world classifier labels >= 90 % of "
           "them with the class they were drawn for), exported for cgn imagenet train --biggan",
           overrides={"model.num_classes": 10, "train.steps": 5000}),
    Preset("biggan-tiny", BigGANPretrainConfig, "imagenet pretrain biggan",
           "cgn imagenet pretrain biggan --preset biggan-tiny --data TRAIN.npz --out runs/biggan-tiny",
           "nothing: the CPU check of the trainer",
           overrides={"model.resolution": 16, "model.g_width": 4, "model.d_width": 4,
                      "model.z_dim": 8, "model.n_stats": 11, "train.steps": 4, "train.batch_size": 8,
                      "train.ema_start": 0, "train.sample_per_class": 2, "train.sample_every": 2,
                      "train.checkpoint_every": 2, "train.log_every": 1, "train.stats_batches": 1}),
]}
