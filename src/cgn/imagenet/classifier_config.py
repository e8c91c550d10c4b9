"""Config of the invariant classifier ensemble's training and evaluation
(docs/reference.md#classifier-ensemble and #evaluations).

Defaults are the authors' command (ResNet-50, ImageNet-pretrained, SGD lr 1e-3 momentum 0.9,
weight decay 1e-4, x0.1 every 15 epochs, 45 epochs, batch 32 per process, ``cf_ratio`` 1).
Presets name a documented command and the numbers it should reproduce. The world presets
(``world-32-classifier`` and its baseline) train a torchvision ResNet-18 from scratch on a 32-px
world's image folders (docs/world.md): no pretrained weights exist for a world, so BatchNorm
trains and the learning rate is the from-scratch one (see docs/imagenet_classifier.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from cgn.config import check, from_dict
from cgn.core import runcontrol
from cgn.presets import Preset

IN9_VARIANTS = ("original", "mixed_same", "mixed_rand")


@dataclass
class ModelConfig:
    arch: str = field(default="resnet50", metadata={
        "help": "torchvision classification architecture of the backbone ('tiny' = CPU test net)"})
    pretrained: bool = field(default=True, metadata={
        "help": "start from torchvision's ImageNet weights (downloaded once) unless weights_file"})
    weights_file: str = field(default="", metadata={
        "help": "local state dict of the full torchvision classifier (overrides pretrained)",
        "resume": "free"})
    freeze_batchnorm: bool = field(default=True, metadata={
        "help": "keep BatchNorm in eval mode while training (frozen running statistics), as the "
                "original fine-tunes a pretrained backbone; off for a backbone trained from scratch"})

    def __post_init__(self):
        check(bool(self.arch), "model.arch must name an architecture")


@dataclass
class DataConfig:
    train_dir: str = field(default="", metadata={
        "help": "ImageFolder of real training images (class folders named by wnid)", "resume": "free"})
    val_dir: str = field(default="", metadata={"help": "ImageFolder of real validation images",
                                               "resume": "free"})
    cf_dir: str = field(default="", metadata={
        "help": "counterfactual dataset (DIR/train, DIR/val with labels.csv); empty = baseline "
                "mode, real images only", "resume": "free"})
    cf_ratio: float = field(default=1.0, metadata={
        "help": "counterfactual batch = int(cf_ratio * batch_size) images next to each real batch"})
    class_index: str = field(default="", metadata={
        "help": "optional folder-name -> ImageNet index file for folders not named by wnid",
        "resume": "free"})
    image_size: int = field(default=224, metadata={"help": "training / evaluation crop size"})
    resize_size: int = field(default=256, metadata={
        "help": "evaluation resize before the centre crop"})
    workers: int = field(default=4, metadata={"help": "DataLoader worker processes", "resume": "free"})

    def __post_init__(self):
        check(self.cf_ratio > 0, f"data.cf_ratio must be > 0, got {self.cf_ratio}")
        check(self.image_size >= 8, f"data.image_size must be >= 8, got {self.image_size}")
        check(self.resize_size >= self.image_size,
              f"data.resize_size ({self.resize_size}) must be >= data.image_size ({self.image_size})")
        check(self.workers >= 0, f"data.workers must be >= 0, got {self.workers}")


@dataclass
class OptimConfig:
    epochs: int = field(default=45, metadata={"help": "training epochs"})
    batch_size: int = field(default=32, metadata={"help": "real images per step and process"})
    lr: float = field(default=1e-3, metadata={"help": "SGD learning rate"})
    momentum: float = field(default=0.9, metadata={"help": "SGD momentum"})
    weight_decay: float = field(default=1e-4, metadata={"help": "SGD weight decay"})
    lr_step_epochs: int = field(default=15, metadata={"help": "multiply the lr by lr_gamma every N epochs"})
    lr_gamma: float = field(default=0.1, metadata={"help": "lr decay factor"})

    def __post_init__(self):
        check(self.epochs > 0, f"optim.epochs must be > 0, got {self.epochs}")
        check(self.batch_size > 0, f"optim.batch_size must be > 0, got {self.batch_size}")
        check(self.lr > 0, f"optim.lr must be > 0, got {self.lr}")
        check(0 <= self.momentum < 1, f"optim.momentum must be in [0, 1), got {self.momentum}")
        check(self.weight_decay >= 0, f"optim.weight_decay must be >= 0, got {self.weight_decay}")
        check(self.lr_step_epochs > 0, f"optim.lr_step_epochs must be > 0, got {self.lr_step_epochs}")
        check(0 < self.lr_gamma <= 1, f"optim.lr_gamma must be in (0, 1], got {self.lr_gamma}")


@dataclass
class EvalConfig:
    cue_conflict_dir: str = field(default="", metadata={
        "help": "cue-conflict stimuli, DIR/<shape category>/<shape><k>-<texture><j>.png",
        "resume": "free"})
    in9_dir: str = field(default="", metadata={
        "help": "IN-9 backgrounds challenge: DIR/<variant>/val/<NN_class>/<image>", "resume": "free"})
    in9_variants: list[str] = field(default_factory=lambda: list(IN9_VARIANTS), metadata={
        "help": "IN-9 variants to evaluate (original, mixed_same, mixed_rand, ...)"})
    in9_normalization: Literal["in9", "imagenet"] = field(default="in9", metadata={
        "help": "IN-9 input normalisation: the challenge's statistics (as the original) or ImageNet's"})
    exclude_same_category: bool = field(default=True, metadata={
        "help": "shape bias: leave out cue-conflict images whose shape and texture categories coincide"})
    batch_size: int = field(default=64, metadata={"help": "evaluation batch size per process",
                                                  "resume": "free"})
    every: int = field(default=1, metadata={"help": "evaluate every N epochs (and after the last)"})
    before_training: bool = field(default=False, metadata={
        "help": "also evaluate the initial model (logged at epoch 0)"})

    def __post_init__(self):
        bad = [v for v in self.in9_variants if not v or "/" in v]
        check(not bad, f"eval.in9_variants: bad variant name(s) {bad}")
        check(self.batch_size > 0, f"eval.batch_size must be > 0, got {self.batch_size}")
        check(self.every > 0, f"eval.every must be > 0, got {self.every}")


@dataclass
class ClassifierTrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    seed: int = field(default=0, metadata={"help": "seed of initialisation, data order, augmentation"})
    device: str = runcontrol.device()
    threads: int = runcontrol.threads()
    log_every: int = runcontrol.log_every()
    checkpoint_every: int = runcontrol.checkpoint_every(2000)
    max_steps: int = field(default=0, metadata={"help": "stop after N steps in total (0 = no limit)",
                                                 "resume": "extend"})
    tensorboard: bool = field(default=True, metadata={"help": "also write TensorBoard scalars to OUT/tb",
                                                      "resume": "free"})

    def __post_init__(self):
        runcontrol.check(self)
        check(self.max_steps >= 0, f"max_steps must be >= 0, got {self.max_steps}")

    @property
    def baseline(self) -> bool:
        """True when trained on real images only (no counterfactual dataset)."""
        return not self.data.cf_dir


_COMMAND = "imagenet train-classifier"
# A 32-px world (docs/world.md): ResNet-18 as torchvision builds it, at the world's size (no
# resize: the evaluation transform is the identity), from scratch with training BatchNorm and
# the from-scratch lr 0.1 x 64 / 256 (He et al. 2016, scaled linearly with the batch); 3 epochs
# with one x0.1 step, chosen for the time budget (docs/imagenet_classifier.md, "On a world").
_WORLD_32 = {"model.arch": "resnet18", "model.pretrained": False, "model.freeze_batchnorm": False,
             "data.image_size": 32, "data.resize_size": 32, "data.workers": 0,
             "optim.epochs": 3, "optim.batch_size": 64, "optim.lr": 0.025, "optim.lr_step_epochs": 2,
             "eval.batch_size": 256, "checkpoint_every": 500}
PRESETS: dict[str, Preset] = {
    "paper": Preset(
        "paper", ClassifierTrainConfig, _COMMAND,
        overrides={},
        command="torchrun --nproc_per_node=NGPU -m cgn imagenet train-classifier --preset paper "
                "--train-dir IMAGENET/train --val-dir IMAGENET/val --cf-dir CF_DATA "
                "--cue-conflict CUE_CONFLICT --in9 BG_CHALLENGE --out RUN",
        reproduces="paper (IN + CGN, ResNet-50): shape bias of the shape / texture / background "
                   "head 54.8 / 16.7 / 22.9 %; ensemble top-1 / top-5 74.0 / 91.7; IN-9 original "
                   "94.2, mixed-same 83.4, mixed-rand 80.1, BG-gap 3.3"),
    "paper_baseline": Preset(
        "paper_baseline", ClassifierTrainConfig, _COMMAND,
        overrides={"data.cf_dir": ""},
        command="torchrun --nproc_per_node=NGPU -m cgn imagenet train-classifier --preset "
                "paper_baseline --train-dir IMAGENET/train --val-dir IMAGENET/val "
                "--cue-conflict CUE_CONFLICT --in9 BG_CHALLENGE --out RUN",
        reproduces="paper (IN only): IN-9 original 95.6, mixed-same 86.2, mixed-rand 78.9, "
                   "BG-gap 7.3"),
    "study_mini": Preset(
        "study_mini", ClassifierTrainConfig, _COMMAND,
        overrides={},
        command="cgn imagenet train-classifier --preset study_mini --train-dir "
                "IMAGENET_MINI/train --val-dir IMAGENET_MINI/val --cf-dir CF_DATA "
                "--cue-conflict CUE_CONFLICT --in9 BG_CHALLENGE --out RUN",
        reproduces="study, ImageNet-1k(mini) + CGN: train top-1 / top-5 90.32 / 97.24, val "
                   "top-1 11.36; shape bias shape / texture / background head 47.00 / 37.01 / "
                   "47.02 %"),
    "study_mini_baseline": Preset(
        "study_mini_baseline", ClassifierTrainConfig, _COMMAND,
        overrides={"data.cf_dir": ""},
        command="cgn imagenet train-classifier --preset study_mini_baseline --train-dir "
                "IMAGENET_MINI/train --val-dir IMAGENET_MINI/val --cue-conflict CUE_CONFLICT "
                "--in9 BG_CHALLENGE --out RUN",
        reproduces="study, ImageNet-1k(mini) only: train top-1 / top-5 91.27 / 97.35, val "
                   "top-1 73.12; shape bias 48.1 %"),
    "world-32-classifier": Preset(
        "world-32-classifier", ClassifierTrainConfig, _COMMAND, overrides=dict(_WORLD_32),
        command="cgn imagenet train-classifier --preset world-32-classifier --train-dir "
                "WORLD/folders/train --val-dir WORLD/folders/test --cf-dir CF_DATA --out RUN",
        reproduces="the world's classifier claims of issue 18 (the shape head's shape bias above "
                   "the baseline's and the other heads', a smaller BG-gap), measured by the world "
                   "pipeline"),
    "world-32-classifier-baseline": Preset(
        "world-32-classifier-baseline", ClassifierTrainConfig, _COMMAND,
        overrides={**_WORLD_32, "data.cf_dir": ""},
        command="cgn imagenet train-classifier --preset world-32-classifier-baseline --train-dir "
                "WORLD/folders/train --val-dir WORLD/folders/test --out RUN",
        reproduces="the baseline (real images only) of the world's classifier claims"),
    "smoke": Preset(
        "smoke", ClassifierTrainConfig, _COMMAND,
        overrides={"model.arch": "tiny", "model.pretrained": False, "data.image_size": 32,
                   "data.resize_size": 36, "data.workers": 0, "optim.epochs": 1,
                   "optim.batch_size": 8, "optim.lr": 0.01, "eval.batch_size": 16,
                   "log_every": 1, "checkpoint_every": 0},
        command="cgn imagenet train-classifier --preset smoke --train-dir SAMPLE_SUBSET --val-dir "
                "SAMPLE_SUBSET --cue-conflict CUE_CONFLICT_SUBSET --out RUN",
        reproduces="nothing: a one-epoch CPU check that training, resume and every evaluation run"),
}


def config_from_dict(d: dict) -> ClassifierTrainConfig:
    return from_dict(ClassifierTrainConfig, d)


__all__ = ["ClassifierTrainConfig", "ModelConfig", "DataConfig", "OptimConfig", "EvalConfig",
           "PRESETS", "config_from_dict", "IN9_VARIANTS"]
