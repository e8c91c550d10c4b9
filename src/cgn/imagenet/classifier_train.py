"""Training and evaluating the invariant classifier ensemble with the shared loop.

One step (per process):

    real batch (x [B,3,S,S], y [B])                     ImageNet-style ImageFolder, 1000-way y
    counterfactual batch (x_cf [C,3,S,S], y_s, y_t, y_b) C = int(cf_ratio * B), resampled per epoch
    out = model(cat(x, x_cf))                           one forward; BatchNorm is frozen (eval
                                                        mode), so batching them together changes
                                                        nothing (model.freeze_batchnorm off, for a
                                                        backbone trained from scratch: BatchNorm
                                                        normalises the joint batch)
    loss = CE(out.avg[:B], y)                                   real images: the averaged logits
         + CE(out.shape[B:], y_s) + CE(out.texture[B:], y_t) + CE(out.background[B:], y_b)

The gradient equals the original's (two backward passes whose gradients add). In *baseline
mode* (no counterfactual dataset) only the first term is used. SGD with momentum and weight
decay; the lr is multiplied by ``lr_gamma`` every ``lr_step_epochs`` epochs.

Counterfactual sampling per epoch follows the original: an epoch draws ``C * steps`` images
(per process) from the counterfactual training split, a fresh random selection every epoch,
repeating images when the split is smaller.

Reference: docs/reference.md#classifier-ensemble.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from cgn.config import to_dict
from cgn.core import runcontrol
from cgn.core.batches import BatchStream, ZipStream
from cgn.core.checkpoint import load_checkpoint, load_state_dict_strict
from cgn.core.classifier_eval import topk_correct
from cgn.core.classifier_trainer import StepOutput, Trainer, batchnorm_eval
from cgn.core.distributed import DistInfo
from cgn.core.precision import channels_last
from cgn.core.results import write_results
from cgn.core.seeding import seed_everything
from cgn.errors import CGNError
from cgn.imagenet.cfdata import CounterfactualDataset
from cgn.imagenet.classifier_config import ClassifierTrainConfig, config_from_dict
from cgn.imagenet.ensemble import HEADS, InvariantEnsemble, PlainClassifier, weights_arg
from cgn.imagenet.evaluate import evaluate_all
from cgn.imagenet.imagefolder import ImageNetFolder, train_transform

KIND = "imagenet-classifier"


def cf_batch_size(cfg: ClassifierTrainConfig) -> int:
    c = int(cfg.data.cf_ratio * cfg.optim.batch_size)
    if c < 1:
        raise CGNError(f"cf_ratio {cfg.data.cf_ratio} x batch size {cfg.optim.batch_size} gives "
                       "no counterfactual image per step; raise --cf-ratio")
    return c


def ensemble_loss(with_cf: bool):
    """The per-batch loss of the ensemble (see the module docstring)."""

    def loss_fn(model: nn.Module, batch) -> StepOutput:
        if not with_cf:
            x, y = batch
            out = model(x)
            loss = F.cross_entropy(out["avg"], y)
            return StepOutput(loss, {"real_top1": (100 * topk_correct(out["avg"], y, (1,))[0], len(y))})
        (x, y), (xc, ys, yt, yb) = batch
        n = len(x)
        out = model(torch.cat([x, xc]))                              # dict of [n + C, 1000]
        loss_real = F.cross_entropy(out["avg"][:n], y)
        labels = {"shape": ys, "texture": yt, "background": yb}
        losses = {h: F.cross_entropy(out[h][n:], labels[h]) for h in HEADS}
        loss = loss_real + sum(losses.values())
        stats = {"loss_real": (loss_real.detach(), 1),
                 "loss_cf": (sum(losses.values()).detach(), 1),
                 "real_top1": (100 * topk_correct(out["avg"][:n], y, (1,))[0], n)}
        for h in HEADS:
            stats[f"cf_{h}_top1"] = (100 * topk_correct(out[h][n:], labels[h], (1,))[0], len(xc))
        return StepOutput(loss, stats)

    return loss_fn


def build_data(cfg: ClassifierTrainConfig, dist: DistInfo) -> BatchStream | ZipStream:
    d = cfg.data
    if not d.train_dir:
        raise CGNError("no training images: pass --train-dir (an ImageFolder such as "
                       "ImageNet/train or ImageNet-1k(mini)/train)")
    tf = train_transform(d.image_size)
    real = BatchStream(ImageNetFolder(d.train_dir, tf, d.class_index or None),
                       cfg.optim.batch_size, seed=cfg.seed, dist=dist, workers=d.workers)
    if cfg.baseline:
        return real
    c = cf_batch_size(cfg)
    cf_set = CounterfactualDataset(d.cf_dir, "train", tf)
    if len(cf_set) == 0:
        raise CGNError(f"{d.cf_dir}/train holds no counterfactual images; generate them first")
    cf = BatchStream(cf_set, c, seed=cfg.seed + 1, dist=dist, workers=d.workers,
                     samples_per_epoch=c * real.steps_per_epoch * dist.world_size)
    return ZipStream(real, cf)


def build_model(cfg: ClassifierTrainConfig, pretrained: bool | None = None) -> InvariantEnsemble:
    m = cfg.model
    use = m.pretrained if pretrained is None else pretrained
    return InvariantEnsemble(m.arch, weights_arg(use, m.weights_file) if use else None)


def train_classifier(cfg: ClassifierTrainConfig, out: str | os.PathLike, *, resume: bool = False,
                     dist: DistInfo | None = None) -> dict:
    """Train (or resume) the ensemble into run directory ``out``; returns the final metrics."""
    dist = dist or DistInfo()
    runcontrol.set_threads(cfg.threads)
    seed_everything(cfg.seed)
    resuming = resume and (Path(out) / "checkpoints" / "last.pt").exists()
    # a resumed run gets its weights from the checkpoint: no download needed
    model = build_model(cfg, pretrained=False if resuming else None)
    channels_last(model)
    data = build_data(cfg, dist)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.optim.lr, momentum=cfg.optim.momentum,
                          weight_decay=cfg.optim.weight_decay)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.optim.lr_step_epochs,
                                            gamma=cfg.optim.lr_gamma)

    def eval_fn(module: nn.Module, epoch: int) -> dict:
        return evaluate_all(module, cfg, dist)

    trainer = Trainer(model, ensemble_loss(not cfg.baseline), opt, data,
                      epochs=cfg.optim.epochs, out=out, config=to_dict(cfg), kind=KIND,
                      resume=resume, scheduler=sched, dist=dist, eval_fn=eval_fn,
                      eval_every=cfg.eval.every, log_every=cfg.log_every,
                      checkpoint_every=cfg.checkpoint_every,
                      train_mode=batchnorm_eval if cfg.model.freeze_batchnorm else None,
                      max_steps=cfg.max_steps or None, tensorboard=cfg.tensorboard)
    if cfg.eval.before_training and trainer.global_step == 0:
        metrics = trainer.evaluate()
        trainer.emit({"step": 0, "epoch": 0, **{f"eval/{k}": v for k, v in metrics.items()}})
    result = trainer.fit()
    if dist.is_main:
        write_results(out, result)
    return result


def load_classifier(checkpoint: str | os.PathLike) -> tuple[InvariantEnsemble, ClassifierTrainConfig]:
    """The ensemble stored in a training checkpoint, with the config it was trained with."""
    ckpt = load_checkpoint(checkpoint, kind=KIND)
    cfg = config_from_dict(ckpt["config"])
    model = build_model(cfg, pretrained=False)
    load_state_dict_strict(model, ckpt["model"], str(checkpoint))
    return model, cfg


def plain_classifier(arch: str, weights: str | None) -> PlainClassifier:
    """A plain torchvision classifier (``weights``: 'imagenet', a file, or None = random)."""
    return PlainClassifier(arch, weights)


def evaluate_model(model: nn.Module, cfg: ClassifierTrainConfig, *, which=None,
                   dist: DistInfo | None = None, strict: bool = False) -> dict:
    """Evaluate a model on what ``cfg`` names (see :func:`cgn.imagenet.evaluate.evaluate_all`)."""
    dist = dist or DistInfo()
    model = model.to(dist.device).eval()
    with torch.no_grad():
        return evaluate_all(model, cfg, dist, which=which, strict=strict)
