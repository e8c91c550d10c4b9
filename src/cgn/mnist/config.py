"""Configs of the MNIST CGN (model, losses, optimiser, training) and the three presets.

The presets carry the original hyper-parameters (``mnists/experiments/cgn_*/cfg.yaml`` of the
authors' release; table in docs/reference.md#mnist-cgn-presets): 15 epochs of batch 16 on the 50k
(double-colored, wildlife) or 60k (colored) training images. Each also carries the *recipe*: the
overrides (``--recipe``) that train a usable CGN in under 30 minutes on 2 CPU cores;
docs/mnist_cgn.md has the measurements behind it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from cgn.config import check, from_dict
from cgn.core import runcontrol
from cgn.presets import Preset

VARIANT_NAMES = ("colored-mnist", "double-colored-mnist", "wildlife-mnist")


@dataclass
class ModelConfig:
    n_classes: int = field(default=10, metadata={"help": "number of classes (digits)"})
    latent_dim: int = field(default=32, metadata={"help": "noise dimension per mechanism"})
    ngf: int = field(default=32, metadata={"help": "generator width"})
    img_size: int = field(default=32, metadata={"help": "image side (a multiple of 4)"})
    init_type: Literal["orthogonal", "normal", "xavier", "kaiming"] = field(
        default="orthogonal", metadata={"help": "generator weight init"})
    init_gain: float = field(default=0.1, metadata={"help": "gain (std for normal) of the init; "
                                                            "BatchNorm weights ~ N(1, gain)"})
    disc: Literal["linear", "conv"] = field(default="linear", metadata={"help": "discriminator type"})
    ndf: int = field(default=512, metadata={"help": "discriminator width"})
    background_bias: Literal["zero", "data"] = field(default="zero", metadata={
        "help": "initial bias of the background mechanism's output BatchNorm: zero (the original) "
                "or data: atanh of the training images' per-channel median pixel, i.e. the "
                "background colour (docs/mnist_cgn.md, 'Colored MNIST')"})

    def __post_init__(self):
        check(self.background_bias in ("zero", "data"), "background_bias must be 'zero' or 'data'")
        check(self.n_classes >= 2, "n_classes must be >= 2")
        check(self.latent_dim >= 1 and self.ngf >= 1 and self.ndf >= 1, "widths must be >= 1")
        check(self.img_size >= 16 and self.img_size % 4 == 0, "img_size must be a multiple of 4, >= 16")
        check(self.init_gain > 0, "init_gain must be > 0")


@dataclass
class LossConfig:
    mask_weight: float = field(default=0.3, metadata={"help": "lambda of the mask binary entropy"})
    style_weights: list[float] = field(default_factory=lambda: [0.0, 0.05, 0.0, 0.05], metadata={
        "help": "w_i of the Gram style loss at relu1_2, relu2_2, relu3_3, relu4_3 (loss w_i^2*5000*L1)"})
    feature_extractor: str = field(default="auto", metadata={
        "help": "VGG16 weights for the style loss: auto (imagenet, else hed) | imagenet | hed | "
                "random | path to a torchvision file; the recipe pins hed"})
    vgg_weights: str | None = field(default=None, metadata={"help": "explicit torchvision VGG16 file"})
    vgg_seed: int = field(default=0, metadata={"help": "seed of the random-feature VGG16"})
    allow_download: bool = field(default=False, metadata={
        "help": "let 'auto'/'imagenet' try the torchvision download when no local file exists"})
    feature_scale: float = field(default=1.0, metadata={
        "help": "calibration of the VGG activations: features times this, so the style loss times "
                "its square (see docs/mnist_cgn.md, 'Feature extractor')"})
    # "free": like the thread count, it changes only the float rounding of the steps still to run
    precision: Literal["auto", "bf16", "fp32"] = field(default="fp32", metadata={"resume": "free",
        "help": "precision of the VGG forward of the style loss: bf16 autocast, fp32, or auto (bf16 "
                "only where it is faster: AMX CPUs, bf16 GPUs, AVX-512-BF16 CPUs where a probe measures it)"})
    ssim_weight: float = field(default=0.0, metadata={
        "help": "weight of the loss 1 - SSIM(generated, real) (the reproduction study's ablation; 0: off)"})
    border_weight: float = field(default=0.0, metadata={"help": "weight of the mask border loss"})
    border_width: int = field(default=3, metadata={"help": "frame width (px) of the border loss"})

    @staticmethod
    def upgrade_dict(d: dict) -> dict:
        """Configs written before ``precision`` had a ``bf16`` switch."""
        if "bf16" in d:
            d.setdefault("precision", "bf16" if d.pop("bf16") else "fp32")
        return d

    def __post_init__(self):
        check(self.mask_weight >= 0 and self.ssim_weight >= 0 and self.border_weight >= 0,
              "loss weights must be >= 0")
        check(1 <= len(self.style_weights) <= 5 and all(w >= 0 for w in self.style_weights),
              "style_weights: 1 to 5 non-negative numbers")
        check(1 <= self.border_width <= 8, "border_width must be in 1..8")
        check(self.feature_scale > 0, "feature_scale must be > 0")


@dataclass
class OptimConfig:
    lr: float = field(default=2e-4, metadata={"help": "Adam learning rate (generator and D)"})
    betas: list[float] = field(default_factory=lambda: [0.5, 0.999], metadata={"help": "Adam betas"})

    def __post_init__(self):
        check(self.lr > 0, "lr must be > 0")
        check(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "betas: two numbers in [0, 1)")


@dataclass
class TrainConfig:
    dataset: Literal["colored-mnist", "double-colored-mnist", "wildlife-mnist"] = field(
        default="double-colored-mnist", metadata={"help": "training data (cgn.mnist.variants)"})
    data_seed: int = field(default=0, metadata={"help": "seed the dataset was built with"})
    textures: str | None = field(default=None, metadata={
        "help": "wildlife texture folder (object/, background/); none: the built-in procedural set"})
    epochs: int = field(default=15, metadata={"help": "passes over the training set", "resume": "extend"})
    max_steps: int | None = field(default=None, metadata={
        "help": "stop after this many generator steps (overrides epochs when set)", "resume": "extend"})
    batch_size: int = field(default=16, metadata={"help": "batch size"})
    limit_train: int | None = field(default=None, metadata={
        "help": "use only the first N training images (quick probes and tests)"})
    seed: int = field(default=0, metadata={"help": "seed of init, labels, noise, shuffling, dropout"})
    device: str = runcontrol.device()
    threads: int = runcontrol.threads()
    log_every: int = field(default=50, metadata={"help": "steps between metrics.jsonl lines"})
    sample_every: int = field(default=1000, metadata={"help": "steps between sample grids"})
    timeline_every: int = field(default=250, metadata={"help": "steps between mask-timeline frames"})
    checkpoint_every: int = field(default=500, metadata={"help": "steps between checkpoints"})
    ema_decay: float = field(default=0.0, metadata={
        "help": "decay of an exponential moving average of the generator's weights; when > 0 the "
                "average is what the run samples from and saves as its CGN (0: none)"})
    ema_start: int = field(default=0, metadata={
        "help": "generator steps before the average starts (it copies the generator until then)"})
    # "free" like loss.precision: it changes only the float rounding of the steps still to run
    gan_precision: Literal["fp32", "bf16"] = field(default="fp32", metadata={"resume": "free",
        "help": "precision of the generator's and discriminator's passes: fp32, or bf16 autocast "
                "(parameters, optimisers and losses stay fp32). Faster where bf16 is native; not "
                "validated for quality on every preset, so no 'auto' (docs/speed.md)"})
    eval_samples: int = field(default=1000, metadata={"help": "samples for the final mask statistics"})
    shape_judge: bool = field(default=True, metadata={
        "help": "report shape_accuracy: a fixed MNIST digit classifier applied to the final masks"})

    def __post_init__(self):
        check(self.epochs >= 1, "epochs must be >= 1")
        check(self.max_steps is None or self.max_steps >= 1, "max_steps must be >= 1")
        check(self.batch_size >= 2, "batch_size must be >= 2 (BatchNorm)")
        check(self.limit_train is None or self.limit_train >= self.batch_size,
              "limit_train must be >= batch_size")
        for name in ("log_every", "sample_every", "timeline_every", "checkpoint_every"):
            check(getattr(self, name) >= 1, f"{name} must be >= 1")
        check(self.eval_samples >= 10, "eval_samples must be >= 10")
        check(0 <= self.ema_decay < 1, "ema_decay must be in [0, 1)")
        check(self.ema_start >= 0, "ema_start must be >= 0")
        runcontrol.check(self)


@dataclass
class CGNTrainConfig:
    preset: str = field(default="double-colored-mnist", metadata={"help": "preset it started from"})
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def _preset(name: str, mask: float, style: list[float], disc: str, init: str, gain: float,
            ndf: int, recipe: dict, reproduces: str, recipe_reproduces: str) -> Preset:
    overrides = {"model.init_type": init, "model.init_gain": gain, "model.disc": disc,
                 "model.ndf": ndf, "loss.mask_weight": mask, "loss.style_weights": style,
                 "train.dataset": name}
    return Preset(name, CGNTrainConfig, "train-cgn", f"cgn train-cgn --preset {name}", reproduces,
                  overrides, recipe, recipe_reproduces)


# The recipe: see docs/mnist_cgn.md ("Recipe") for the measurements that chose it. It pins the
# style features it was measured with (HED's VGG16): a machine that also has torchvision's VGG16
# file still trains the same recipe.
_RECIPE_COMMON = {"loss.precision": "auto", "loss.border_weight": 1.0, "loss.feature_extractor": "hed"}

PRESETS: dict[str, Preset] = {p.name: p for p in [
    _preset("colored-mnist", 0.1, [0.05, 0.1, 0.01, 0.0], "linear", "orthogonal", 0.1, 512,
            {**_RECIPE_COMMON, "train.max_steps": 12000, "model.background_bias": "data"},
            "the authors' colored-MNIST CGN: masks of mean ~0.1-0.25 per class, digits in the "
            "class colours of docs/reference.md#colored-mnist (15 epochs, ~4 h on 2 CPU cores at "
            "0.32 s/step originally)",
            "non-collapsed masks (mean 0.1-0.35) and clean grids in < 30 min on 2 cores"),
    _preset("double-colored-mnist", 0.3, [0.0, 0.05, 0.0, 0.05], "linear", "orthogonal", 0.2, 512,
            {**_RECIPE_COMMON, "train.max_steps": 8000, "loss.feature_scale": 4.0},
            "the authors' double-colored CGN: fg/bg colours of docs/reference.md#double-colored-mnist "
            "per label, masks of mean ~0.1-0.25 (15 epochs)",
            "non-collapsed masks (mean 0.1-0.35), label colours, clean grids in < 30 min on 2 cores"),
    _preset("wildlife-mnist", 0.3, [0.01, 0.05, 0.0, 0.01], "conv", "normal", 0.03, 32,
            {**_RECIPE_COMMON, "train.max_steps": 6000, "loss.feature_scale": 16.0},
            "the authors' wildlife CGN: striped digits on veined backgrounds by label (15 epochs)",
            "non-collapsed masks (mean 0.1-0.35) and clean grids in < 30 min on 2 cores"),
]}


def config_from_dict(d: dict) -> CGNTrainConfig:
    return from_dict(CGNTrainConfig, d)
