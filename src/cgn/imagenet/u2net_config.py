"""Config and presets of the U²-Net stand-in (``cgn imagenet pretrain u2net``).

The stand-in replaces the public ``u2netp.pth`` where no such weights exist: a U²-Net trained on
a world's ground-truth object masks, at the resolution and in the input range in which the
ImageNet CGN calls it (its GAN's images, in [-1, 1]). Loss and optimiser are the U²-Net paper's
(docs/reference.md#u2-net-training): binary cross-entropy on the fused output and on each of the
six side outputs, summed with weight 1; Adam, lr 1e-3, betas (0.9, 0.999), eps 1e-8, no weight
decay; batch 12 as in the release's training script.

Presets
-------
``u2netp-32``
    U²-Netp (the ``u2netp.pth`` layout) at 32 px, 6 epochs of 4,800 images (2,400 steps of 12)::

        cgn imagenet pretrain u2net --preset u2netp-32 --data WORLD/train.npz \\
            --test WORLD/test.npz --out runs/u2net

    Target (the issue's): mean IoU >= 0.9 on the test split's ground-truth masks.
``u2net-tiny``
    The tiny layout at 16 px, 2 epochs of 32 images: the CPU check of the command (no
    expected numbers).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from cgn.config import check
from cgn.core import runcontrol
from cgn.imagenet.u2net import ARCHS
from cgn.presets import Preset


@dataclass
class ModelConfig:
    arch: Literal["small", "full", "tiny"] = field(default="small", metadata={
        "help": "U2-Net size: small = the u2netp.pth layout (1.13 M parameters), full = "
                "u2net.pth, tiny = tests"})
    align_corners: bool = field(default=True, metadata={
        "help": "bilinear upsampling corners; keep the ImageNet CGN's setting (true), with "
                "which imagenet train --u2net loads the file"})

    def __post_init__(self):
        check(self.arch in ARCHS, f"arch must be one of {sorted(ARCHS)}")


@dataclass
class DataConfig:
    train: str = field(default="", metadata={
        "help": "training split: an .npz as cgn data build writes it, with masks (uint8 N x H x W, "
                "255 = object)", "resume": "free"})
    test: str = field(default="", metadata={
        "help": "test split in the same format: periodic and final evaluation", "resume": "free"})
    image_size: int = field(default=0, metadata={
        "help": "side the network sees, the CGN's GAN resolution (0 = as stored; otherwise "
                "images and masks are resized)"})
    flip: Literal["none", "horizontal", "vertical"] = field(default="horizontal", metadata={
        "help": "random flips of image and mask together (probability 1/2)"})
    epoch_images: int = field(default=0, metadata={
        "help": "images drawn per epoch (0 = the training split; more repeats it); evaluations "
                "and the progress bar follow epochs"})

    def __post_init__(self):
        check(self.image_size == 0 or self.image_size >= 8, "image_size must be 0 or >= 8")
        check(self.epoch_images >= 0, "epoch_images must be >= 0")


@dataclass
class OptimConfig:
    lr: float = field(default=1e-3, metadata={"help": "Adam learning rate (the U2-Net paper)"})
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999], metadata={"help": "Adam betas"})
    eps: float = field(default=1e-8, metadata={"help": "Adam epsilon"})
    weight_decay: float = field(default=0.0, metadata={"help": "Adam weight decay"})

    def __post_init__(self):
        check(self.lr > 0 and self.eps > 0 and self.weight_decay >= 0,
              "lr and eps must be > 0, weight_decay >= 0")
        check(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "betas: two numbers in [0, 1)")


@dataclass
class TrainConfig:
    epochs: int = field(default=1, metadata={"help": "training length in epochs", "resume": "extend"})
    max_steps: int = field(default=0, metadata={
        "help": "stop after this many steps in total (0 = no limit)", "resume": "extend"})
    batch_size: int = field(default=12, metadata={"help": "images per step (the release: 12)"})
    seed: int = field(default=0, metadata={"help": "seed of initialisation, data order and flips"})
    limit_train: int = field(default=0, metadata={"help": "use the first N training images (0 = all)"})
    limit_test: int = field(default=0, metadata={"help": "use the first N test images (0 = all)",
                                                 "resume": "free"})
    eval_images: int = field(default=0, metadata={
        "help": "periodic evaluations use the first N test images (0 = all); the final one uses all",
        "resume": "free"})
    eval_every: int = field(default=1, metadata={"help": "evaluate every N epochs (and after the last)",
                                                 "resume": "free"})
    eval_batch_size: int = runcontrol.eval_batch_size()
    log_every: int = runcontrol.log_every()
    checkpoint_every: int = runcontrol.checkpoint_every()
    device: str = runcontrol.device()
    threads: int = runcontrol.threads()

    def __post_init__(self):
        check(self.epochs >= 1 and self.max_steps >= 0, "epochs must be >= 1, max_steps >= 0")
        check(self.batch_size >= 2, "batch_size must be >= 2 (BatchNorm)")
        for name in ("limit_train", "limit_test", "eval_images"):
            check(getattr(self, name) >= 0, f"{name} must be >= 0")
        check(self.eval_every >= 1, "eval_every must be >= 1")
        runcontrol.check(self)
        check(self.limit_train == 0 or self.limit_train >= self.batch_size,
              "limit_train must be 0 or >= batch_size")


@dataclass
class U2NetTrainConfig:
    preset: str = field(default="", metadata={"help": "preset this config came from (empty: none)"})
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


_COMMAND = "imagenet pretrain u2net"
PRESETS: dict[str, Preset] = {p.name: p for p in [
    Preset("u2netp-32", U2NetTrainConfig, _COMMAND,
           "cgn imagenet pretrain u2net --preset u2netp-32 --data WORLD/train.npz "
           "--test WORLD/test.npz --out runs/u2net",
           "target: mean IoU >= 0.9 against the test split's ground-truth masks",
           overrides={"model.arch": "small", "data.image_size": 32, "data.epoch_images": 4800,
                      "train.epochs": 6, "train.batch_size": 12, "train.eval_images": 1000}),
    Preset("u2net-tiny", U2NetTrainConfig, _COMMAND,
           "cgn imagenet pretrain u2net --preset u2net-tiny --data TRAIN.npz --test TEST.npz "
           "--out RUN",
           "nothing: the CPU check of the command",
           overrides={"model.arch": "tiny", "data.image_size": 16, "data.epoch_images": 32,
                      "train.epochs": 2, "train.batch_size": 8, "train.log_every": 1,
                      "train.eval_batch_size": 64}),
]}
