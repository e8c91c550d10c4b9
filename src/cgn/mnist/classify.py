"""Invariant classifiers on MNIST: training sets, training, OOD evaluation.

Training sets (``train_set``):
  real      the variant's training split only ("Original")
  real+gan  real + plain CGN samples (``cgn generate --no-counterfactual``)
  real+cf   real + counterfactuals (``cgn generate``)
  cf        counterfactuals only

Recipe (the paper's): Adadelta lr 1.0, StepLR γ 0.7 per epoch, batch 64, 10 epochs, NLL loss.
The training loop is the shared one (:mod:`cgn.core.classifier_trainer`). Reported: accuracy
on a fixed random subset of the training set (``train_eval_size`` images, eval mode) and on the
variant's fixed OOD test split.

Reference: docs/reference.md#mnist-counterfactuals-and-classifier.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from cgn.config import check
from cgn.core.batches import BatchStream
from cgn.core.checkpoint import load_checkpoint, load_state_dict_strict
from cgn.core.classifier_eval import eval_loader, evaluate_accuracy
from cgn.core import runcontrol
from cgn.core.classifier_trainer import StepOutput, Trainer
from cgn.core.device import resolve_device
from cgn.core.precision import Probe, resolve_precision
from cgn.core.seeding import seed_everything
from cgn.errors import CGNError
from cgn.mnist import variants
from cgn.mnist.classifier import CHECKPOINT_KIND, MnistClassifier
from cgn.mnist.cfdata import CounterfactualSet

TRAIN_SETS = ("real", "real+gan", "real+cf", "cf")


@dataclass
class ClassifierConfig:
    dataset: Literal["colored-mnist", "double-colored-mnist", "wildlife-mnist"] = field(
        default="colored-mnist", metadata={
            "help": "MNIST variant: its train split is the real data, its test split the OOD test set"})
    train_set: Literal["real", "real+gan", "real+cf", "cf"] = field(default="real", metadata={
        "help": "training set: real images, real + plain GAN samples, real + counterfactuals, or "
                "counterfactuals only"})
    generated: str | None = field(default=None, metadata={
        "help": "folder written by cgn generate (every train set but real needs one)"})
    epochs: int = field(default=10, metadata={"help": "training epochs"})
    batch_size: int = field(default=64, metadata={"help": "batch size"})
    lr: float = field(default=1.0, metadata={"help": "Adadelta learning rate"})
    gamma: float = field(default=0.7, metadata={"help": "StepLR factor of the learning rate per epoch"})
    seed: int = field(default=0, metadata={"help": "seed of the initialisation and the data order"})
    data_seed: int = field(default=0, metadata={
        "help": "seed the variant's splits are built with (fixes the OOD test set)"})
    textures: str | None = field(default=None, metadata={
        "help": "wildlife texture folder (object/, background/); none: the built-in procedural set"})
    official_test: bool = field(default=False, metadata={
        "help": "double-colored / wildlife: train on all 60k images and test on the official 10k "
                "test split (off: train on [:50000], test on [50000:60000] as the original)"})
    train_eval_size: int = field(default=10_000, metadata={
        "help": "training images scored for the train accuracy"})
    precision: Literal["auto", "bf16", "fp32"] = field(default="auto", metadata={
        "help": "auto: bf16 autocast where it is faster (AMX CPUs, bf16 GPUs, AVX-512-BF16 CPUs where "
                "a probe measures it), else fp32"})
    threads: int = runcontrol.threads()
    limit_real: int | None = field(default=None, metadata={
        "help": "use only the first N real training images (smoke tests, probes)"})
    limit_test: int | None = field(default=None, metadata={
        "help": "score only the first N OOD test images (smoke tests, probes; not comparable "
                "with full-test numbers)"})
    device: str = runcontrol.device()

    def __post_init__(self):
        check(self.dataset in variants.VARIANTS, f"unknown dataset {self.dataset!r}; choose one of "
              f"{', '.join(variants.VARIANTS)}")
        check(self.train_set in TRAIN_SETS, f"train_set must be one of {TRAIN_SETS}")
        check(self.train_set == "real" or self.generated is not None,
              f"train set {self.train_set!r} needs generated images: pass --generated DIR "
              "(from `cgn generate`)")
        check(self.epochs >= 1 and self.batch_size >= 1, "epochs and batch_size must be >= 1")
        check(self.lr > 0 and 0 < self.gamma <= 1, "lr must be > 0 and gamma in (0, 1]")
        check(self.limit_real is None or self.limit_real >= 1, "limit_real must be >= 1")
        check(self.limit_test is None or self.limit_test >= 1, "limit_test must be >= 1")
        check(self.precision in ("auto", "bf16", "fp32"), "precision must be auto, bf16 or fp32")
        runcontrol.check(self)


class ArrayImages(Dataset):
    """(image in [-1, 1], label) pairs from uint8 image sources, read a whole batch at a time.

    ``sources``: ``(fetch, labels)`` pairs, concatenated; ``fetch(indices)`` returns uint8
    [n, 32, 32, 3] (an in-memory array or a memory-mapped counterfactual set).
    """

    def __init__(self, sources: list[tuple]):
        self.fetches = [f for f, _ in sources]
        self.labels = torch.cat([torch.as_tensor(np.asarray(y), dtype=torch.int64) for _, y in sources])
        self.starts = np.cumsum([0] + [len(y) for _, y in sources])

    def __len__(self) -> int:
        return len(self.labels)

    def raw(self, indices) -> np.ndarray:
        """uint8 [n, 32, 32, 3] images of ``indices``."""
        idx = np.asarray(indices, dtype=np.int64)
        images = np.empty((len(idx), 32, 32, 3), dtype=np.uint8)
        src = np.searchsorted(self.starts, idx, side="right") - 1
        for k in np.unique(src):
            sel = src == k
            images[sel] = self.fetches[k](idx[sel] - self.starts[k])
        return images

    def __getitems__(self, indices) -> tuple[torch.Tensor, torch.Tensor]:
        idx = np.asarray(indices, dtype=np.int64)
        x = variants.to_tensor(self.raw(idx)).contiguous()  # NCHW: see MnistClassifier.forward
        return x, self.labels[torch.from_numpy(idx)]

    def __getitem__(self, i: int):
        x, y = self.__getitems__([i])
        return x[0], y[0]

    @staticmethod
    def arrays(images: np.ndarray, labels: np.ndarray) -> tuple:
        return (lambda idx: images[idx], labels)

    @staticmethod
    def generated(ds: CounterfactualSet) -> tuple:
        return (ds.images, ds.labels["shape"])


def _batch(b):
    """Collate for batches that ``ArrayImages.__getitems__`` already stacked."""
    return b


def _split(cfg: ClassifierConfig, split: str) -> dict:
    return variants.load_split(cfg.dataset, split, seed=cfg.data_seed, textures=cfg.textures,
                               official_test=cfg.official_test)


def training_set(cfg: ClassifierConfig) -> tuple[Dataset, dict]:
    parts, info = [], {"train_set": cfg.train_set}
    if cfg.train_set in ("real", "real+gan", "real+cf"):
        real = _split(cfg, "train")
        n = len(real["labels"]) if cfg.limit_real is None else min(cfg.limit_real, len(real["labels"]))
        parts.append(ArrayImages.arrays(real["images"][:n], real["labels"][:n]))
        info["n_real"] = n
    if cfg.train_set != "real":
        gen = CounterfactualSet(cfg.generated)
        want_cf = cfg.train_set in ("real+cf", "cf")
        if gen.manifest["config"]["counterfactual"] != want_cf:
            kind = "counterfactual" if want_cf else "plain (--no-counterfactual)"
            raise CGNError(f"train set {cfg.train_set!r} needs {kind} samples, but {cfg.generated} "
                           "holds the other kind; generate the right one with `cgn generate`")
        ds_name = gen.manifest.get("generator", {}).get("dataset")
        if ds_name and ds_name != cfg.dataset:
            raise CGNError(f"{cfg.generated} was generated by a {ds_name} CGN, not {cfg.dataset}")
        parts.append(ArrayImages.generated(gen))
        info["n_generated"] = len(gen)
        info["generator"] = gen.manifest.get("generator", {})
    return ArrayImages(parts), info


def accuracy(model: torch.nn.Module, dataset: Dataset, device: torch.device | str = "cpu",
             batch_size: int = 1000) -> float:
    """Top-1 accuracy (percent) of ``model`` in eval mode on a data set of (image, label) items,
    images [3, 32, 32] in [-1, 1]: an :class:`ArrayImages`, a
    :class:`cgn.mnist.variants.MnistVariant`, a :class:`CounterfactualSet` or any such Dataset."""
    from cgn.core.sampling import eval_mode
    loader = eval_loader(dataset, batch_size, collate_fn=_batch if isinstance(dataset, ArrayImages) else None)
    with eval_mode(model):
        return evaluate_accuracy(model, loader, topk=(1,), device=torch.device(device))["top1"]


def _log_probs(model: MnistClassifier, x: torch.Tensor, bf16: bool) -> torch.Tensor:
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
        return model(x).float()


def _probe_step(bf16: bool):
    """One training step (batch 64, random images) of a fresh classifier, for ``auto``."""
    model = MnistClassifier().to(memory_format=torch.channels_last)
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0, foreach=True)
    x, y = torch.rand(64, 3, 32, 32) * 2 - 1, torch.randint(10, (64,))

    def step() -> None:
        loss = F.nll_loss(_log_probs(model, x, bf16), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


STEP_PROBE = Probe("mnist-classifier-step", _probe_step, calls=5)


def _accuracy(model, dataset: Dataset, device) -> float:
    return accuracy(model, dataset, device)


def train_classifier(cfg: ClassifierConfig, out: str | Path, resume: bool = False,
                     max_steps: int | None = None) -> dict:
    """Train (or resume) and evaluate; writes ``results.json`` in ``out`` and returns it."""
    device = resolve_device(cfg.device)
    runcontrol.set_threads(cfg.threads)  # before the precision probe, which times at this thread count
    precision = resolve_precision(cfg.precision, device, probe=STEP_PROBE)
    seed_everything(cfg.seed)
    train, info = training_set(cfg)
    test = _split(cfg, "test")
    n_test = len(test["labels"]) if cfg.limit_test is None else min(cfg.limit_test, len(test["labels"]))
    test_ds = ArrayImages([ArrayImages.arrays(test["images"][:n_test], test["labels"][:n_test])])
    rng = np.random.default_rng(cfg.seed)
    sub = np.sort(rng.choice(len(train), size=min(cfg.train_eval_size, len(train)), replace=False))
    train_eval = ArrayImages([(lambda idx: train.raw(sub[idx]), train.labels[torch.from_numpy(sub)])])

    model = MnistClassifier().to(device).to(memory_format=torch.channels_last)
    # foreach: one kernel per update op over all parameters (the default on GPUs, not on CPUs);
    # the same update, and 1.2x faster steps on 2 AVX-512 cores
    opt = torch.optim.Adadelta(model.parameters(), lr=cfg.lr, foreach=True)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=cfg.gamma)

    def loss_fn(m, batch) -> StepOutput:
        x, y = batch
        logp = _log_probs(m, x, precision.bf16)
        return StepOutput(F.nll_loss(logp, y), {"acc": ((logp.argmax(1) == y).sum(), len(y))})

    def eval_fn(m, epoch) -> dict:
        return {"test_acc": _accuracy(m, test_ds, device)}

    stream = BatchStream(train, cfg.batch_size, seed=cfg.seed, collate_fn=_batch)
    trainer = Trainer(model, loss_fn, opt, stream,
                      epochs=cfg.epochs, out=out, config=asdict(cfg), kind=CHECKPOINT_KIND,
                      resume=resume, scheduler=sched, eval_fn=eval_fn, log_every=200,
                      max_steps=max_steps)
    if trainer.run is not None:
        trainer.run.log(f"precision: {precision.name} ({precision.reason})", echo=False)
    fit = trainer.fit()
    if trainer.epoch < cfg.epochs:
        return {"interrupted_at_step": fit["step"]}
    model.eval()
    result = {
        "dataset": cfg.dataset, "train_set": cfg.train_set,
        "train_acc": _accuracy(model, train_eval, device),
        "test_acc": _accuracy(model, test_ds, device),
        "n_train": len(train), "n_test": len(test_ds), "epochs": cfg.epochs, **info,
        "texture_set": test["meta"]["texture_set"], "precision": precision.as_dict(),
    }
    from cgn.core.results import write_results
    write_results(out, result)
    return result


def load_classifier(path: str | Path, device="cpu") -> tuple[MnistClassifier, dict]:
    """(model in eval mode, its config) from a checkpoint or a run directory (its
    ``checkpoints/last.pt``)."""
    if Path(path).is_dir():
        path = Path(path) / "checkpoints" / "last.pt"
    ckpt = load_checkpoint(path, kind=CHECKPOINT_KIND)
    model = MnistClassifier()
    load_state_dict_strict(model, ckpt["model"], f"classifier checkpoint {path}")
    return model.to(device).eval(), ckpt["config"]


@torch.no_grad()
def predict_file(model: MnistClassifier, images: np.ndarray, batch_size: int = 1000,
                 device="cpu") -> np.ndarray:
    """Predicted classes (int64 [N]) for uint8 images [N, 32, 32, 3]."""
    preds = []
    for a in range(0, len(images), batch_size):
        x = variants.to_tensor(images[a:a + batch_size]).to(device)
        preds.append(model(x).argmax(1).cpu())
    return torch.cat(preds).numpy().astype(np.int64)


def config_json(cfg: ClassifierConfig) -> str:
    return json.dumps(asdict(cfg), indent=2)
