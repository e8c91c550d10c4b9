"""Config and presets of ``cgn imagenet pretrain judges`` (the world's four judges).

All four judges (:mod:`cgn.imagenet.world_judges`) are trained with the same settings, one
after the other, each with the shared training loop: cross-entropy, Adam (lr 1e-3, betas (0.9,
0.999)), the held-out accuracy on the world's test split after every epoch.

Presets
-------
``judges-32``
    Width 16, 3 epochs of 20,000 images (batch 64) per judge, on a 32 px world::

        cgn imagenet pretrain judges --world WORLD --out runs/judges

    Expected: each judge reads its factor on the held-out test split with accuracy >= 0.95.
``judges-tiny``
    Width 4, 1 epoch of 256 images of batch 32: the CPU check of the command (no expected
    numbers).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cgn.config import check
from cgn.core import runcontrol
from cgn.presets import Preset

COMMAND = "imagenet pretrain judges"


@dataclass
class JudgesConfig:
    preset: str = field(default="", metadata={"help": "preset this config came from (empty: none)"})
    world: str = field(default="", metadata={
        "help": "world folder (cgn imagenet world build): train split to train, test split to test"})
    textures: str = field(default="", metadata={
        "help": "wildlife worlds built with --textures DIR: the same folder (empty: the built-in "
                "procedural set)"})
    width: int = field(default=16, metadata={"help": "channel width w of the judges' CNN"})
    epochs: int = field(default=3, metadata={"help": "epochs per judge", "resume": "extend"})
    epoch_images: int = field(default=0, metadata={
        "help": "images drawn per epoch (0 = the training split once)"})
    batch_size: int = field(default=64, metadata={"help": "images per step"})
    lr: float = field(default=1e-3, metadata={"help": "Adam learning rate"})
    seed: int = field(default=0, metadata={"help": "seed of initialisation and data order"})
    limit_train: int = field(default=0, metadata={"help": "use the first N training images (0 = all)"})
    limit_test: int = field(default=0, metadata={"help": "use the first N test images (0 = all)",
                                                 "resume": "free"})
    eval_batch_size: int = runcontrol.eval_batch_size()
    log_every: int = runcontrol.log_every()
    checkpoint_every: int = runcontrol.checkpoint_every()
    device: str = runcontrol.device()
    threads: int = runcontrol.threads()

    def __post_init__(self):
        check(self.width >= 1 and self.epochs >= 1, "width and epochs must be >= 1")
        check(self.batch_size >= 2, "batch_size must be >= 2 (BatchNorm)")
        check(self.lr > 0, "lr must be > 0")
        for name in ("epoch_images", "limit_train", "limit_test"):
            check(getattr(self, name) >= 0, f"{name} must be >= 0")
        runcontrol.check(self)
        check(self.limit_train == 0 or self.limit_train >= self.batch_size,
              "limit_train must be 0 or >= batch_size")


PRESETS: dict[str, Preset] = {p.name: p for p in [
    Preset("judges-32", JudgesConfig, COMMAND,
           "cgn imagenet pretrain judges --world WORLD --out runs/judges",
           "each judge's held-out accuracy on the test split >= 0.95",
           overrides={"width": 16, "epochs": 3, "epoch_images": 20000, "batch_size": 64}),
    Preset("judges-tiny", JudgesConfig, COMMAND,
           "cgn imagenet pretrain judges --preset judges-tiny --world WORLD --out RUN",
           "nothing: the CPU check of the command",
           overrides={"width": 4, "epochs": 1, "epoch_images": 256, "batch_size": 32,
                      "log_every": 1, "eval_batch_size": 128}),
]}
