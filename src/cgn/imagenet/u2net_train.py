"""Training the U²-Net stand-in on a world's ground-truth masks, with the shared training loop.

One step (per process), batch of B images x [B, 3, S, S] in [-1, 1] and masks m [B, 1, S, S]::

    logits = U2Net(x, all_logits=True)        fused, side1 .. side6, each [B, 1, S, S]
    loss   = sum_k BCE(sigmoid(logits_k), m)  the seven terms with weight 1 (deep supervision)
    Adam(lr 1e-3, betas (0.9, 0.999), eps 1e-8)

BCE is computed from the logits (``binary_cross_entropy_with_logits``): the same loss as the
release's ``BCELoss`` on the sigmoid, without its log clamp. The loop, exact resume (model,
Adam, every RNG, the position in the epoch, the log window), clean stops, progress bars and
``metrics.jsonl`` are :class:`cgn.core.classifier_trainer.Trainer`'s; evaluations are the
registered metric ``mask_iou`` (:mod:`cgn.imagenet.saliency`).

Run directory: ``config.json``, ``log.txt``, ``metrics.jsonl`` (``train/loss`` (the sum),
``train/bce_fused``, ``train/iou``, ``train/mae`` per log window; ``eval/iou``, ``eval/mae``,
``eval/n`` per evaluation), ``checkpoints/last.pt`` and, when done, the weights in the public
release's layout (``u2netp.pth`` for the small arch, ``u2net.pth`` for the full one: a plain state
dict with the release's key names and no ``num_batches_tracked`` counters, which the release
files lack too) and ``results.json``.
"""

from __future__ import annotations

import io
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from cgn.config import to_dict
from cgn.core import runcontrol
from cgn.core.batches import BatchStream
from cgn.core.classifier_trainer import StepOutput, Trainer
from cgn.core.distributed import DistInfo, init_distributed, shutdown_distributed
from cgn.core.metrics import calc_metric
from cgn.core.results import write_results
from cgn.core.seeding import seed_everything
from cgn.errors import CGNError
from cgn.imagenet.saliency import MaskedImages, load_masked_split, mask_counts, stacked
from cgn.imagenet.u2net import RELEASE_FILES, U2Net, U2NetConfig
from cgn.imagenet.u2net_config import U2NetTrainConfig
from cgn.io import write_bytes_atomic

KIND = "u2net-pretrain"


def deep_supervision_loss(logits: list[torch.Tensor], target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The U²-Net loss: the sum of the BCE of every output (fused first), and the fused term."""
    terms = [F.binary_cross_entropy_with_logits(z, target) for z in logits]
    return torch.stack(terms).sum(), terms[0]


def step_loss(model: nn.Module, batch) -> StepOutput:
    x, m = batch
    logits = model(x, all_logits=True)
    loss, fused = deep_supervision_loss(logits, m)
    with torch.no_grad():
        c = mask_counts(torch.sigmoid(logits[0]), m)
    return StepOutput(loss, {"bce_fused": (fused.detach(), 1), "iou": (c["iou"], c["n"]),
                             "mae": (c["mae"], c["n"])})


def release_file(arch: str) -> str:
    """The weights' file name: the public release's for its layouts."""
    return RELEASE_FILES.get(arch, f"u2net-{arch}.pth")


def release_state_dict(model: U2Net) -> dict[str, torch.Tensor]:
    """The model's weights as the release stores them: the same key names, float32, no
    BatchNorm ``num_batches_tracked`` counters (``U2Net.from_pretrained`` fills those in)."""
    return {k: v.detach().to("cpu", torch.float32).clone().contiguous()
            for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}


def export_release(model: U2Net, path: str | os.PathLike) -> Path:
    """Write :func:`release_state_dict` with ``torch.save``, atomically."""
    buf = io.BytesIO()
    torch.save(release_state_dict(model), buf)
    write_bytes_atomic(path, buf.getvalue())
    return Path(path)


def build_sets(cfg: U2NetTrainConfig) -> tuple[MaskedImages, MaskedImages]:
    """The training and test splits, served at the config's resolution."""
    d, t = cfg.data, cfg.train
    if not d.train or not d.test:
        raise CGNError("a U2-Net stand-in needs a training and a test split: pass --data TRAIN.npz "
                       "and --test TEST.npz")
    images, masks = load_masked_split(d.train, t.limit_train)
    test_images, test_masks = load_masked_split(d.test, t.limit_test)
    size = d.image_size
    if not size:
        shapes = {tuple(images.shape[1:3]), tuple(test_images.shape[1:3])}
        if len(shapes) != 1 or images.shape[1] != images.shape[2]:
            raise CGNError(f"training images are {images.shape[1]}x{images.shape[2]}, test images "
                           f"{test_images.shape[1]}x{test_images.shape[2]}; pass --image-size S "
                           "(the CGN's GAN resolution) to train and test at S x S")
        size = int(images.shape[1])
    if len(images) < t.batch_size:
        raise CGNError(f"{d.train} holds {len(images)} images, fewer than one batch of "
                       f"{t.batch_size}; lower --batch-size")
    return (MaskedImages(images, masks, size, d.flip), MaskedImages(test_images, test_masks, size))


def train_u2net(cfg: U2NetTrainConfig, out: str | os.PathLike, *, resume: bool = False,
                dist: DistInfo | None = None) -> dict:
    """Train (or resume) into run directory ``out``; returns the results (also results.json)."""
    own = dist is None
    dist = dist or init_distributed(cfg.train.device)
    try:
        return _train(cfg, Path(out), resume, dist)
    finally:
        if own:
            shutdown_distributed(dist)


def _train(cfg: U2NetTrainConfig, out: Path, resume: bool, dist: DistInfo) -> dict:
    t = cfg.train
    runcontrol.set_threads(t.threads)
    train_set, test_set = build_sets(cfg)
    seed_everything(t.seed)
    model = U2Net(U2NetConfig(arch=cfg.model.arch, align_corners=cfg.model.align_corners))
    data = BatchStream(train_set, t.batch_size, seed=t.seed, dist=dist, collate_fn=stacked,
                       samples_per_epoch=cfg.data.epoch_images or None)
    o = cfg.optim
    opt = torch.optim.Adam(model.parameters(), lr=o.lr, betas=tuple(o.betas), eps=o.eps,
                           weight_decay=o.weight_decay)
    periodic = test_set.head(t.eval_images) if t.eval_images else test_set

    def evaluate(module: nn.Module, full: bool) -> dict:
        return calc_metric("mask_iou", model=module, mask_set=test_set if full else periodic,
                           batch_size=t.eval_batch_size, dist=dist)

    clock = {"before": 0.0, "start": time.perf_counter()}  # training seconds over all sessions
    seconds = lambda: clock["before"] + time.perf_counter() - clock["start"]  # noqa: E731
    trainer = Trainer(model, step_loss, opt, data, epochs=t.epochs, out=out, config=to_dict(cfg),
                      kind=KIND, resume=resume, dist=dist,
                      eval_fn=lambda m, epoch: evaluate(m, epoch >= t.epochs),
                      eval_every=t.eval_every, log_every=t.log_every,
                      checkpoint_every=t.checkpoint_every, max_steps=t.max_steps or None,
                      extra_state=lambda: {"train_seconds": seconds()})
    clock["before"] = float(trainer.resumed_extra.get("train_seconds", 0.0))
    clock["start"] = time.perf_counter()
    fit = trainer.fit()
    train_seconds = seconds()
    final = fit["metrics"]
    if not (trainer.epoch == t.epochs and trainer.step_in_epoch == 0 and final):
        final = _final_eval(trainer, evaluate)
    if not dist.is_main:
        return {}
    weights = export_release(model, out / release_file(cfg.model.arch))
    results = {
        "iou": final["iou"], "mae": final["mae"], "test_images": final["n"],
        "steps": fit["step"], "epochs": round(trainer.epoch + trainer.step_in_epoch
                                              / max(1, data.steps_per_epoch), 4),
        "arch": cfg.model.arch, "image_size": train_set.size, "align_corners": cfg.model.align_corners,
        "input": "images in [-1, 1], as the ImageNet CGN feeds its U2-Net",
        "train_images": len(train_set), "preset": cfg.preset, "weights": str(weights.resolve()),
        "train_seconds": round(train_seconds, 1),
        "sec_per_step": round(train_seconds / max(1, fit["step"]), 4),
        "threads": torch.get_num_threads(), "device": str(dist.device),
    }
    write_results(out, results)
    if trainer.run is not None:
        trainer.run.log(f"done: {fit['step']} steps, test mean IoU {final['iou']:.4f}, MAE "
                        f"{final['mae']:.4f} ({final['n']} images); weights {weights}")
    return results


def _final_eval(trainer: Trainer, evaluate) -> dict:
    """The evaluation on the whole test split after a run that ended between epochs."""
    trainer.module.eval()
    with torch.no_grad():
        metrics = evaluate(trainer.module, True)
    trainer.emit({"step": trainer.global_step, "epoch": trainer.epoch,
                  **{f"eval/{k}": v for k, v in metrics.items()}})
    return metrics
