"""The one classifier training loop of cgn (MNIST classifier and ImageNet ensemble alike).

Everything here is task-agnostic: the task supplies a model, a per-batch loss, an optimiser, a
per-epoch scheduler and its data; this module supplies the loop, exact resume, logging and
optional DistributedDataParallel (DDP). Its companions: :mod:`cgn.core.distributed` (the process
group), :mod:`cgn.core.batches` (the data order), :mod:`cgn.core.classifier_eval` (sample-exact
evaluation) and :mod:`cgn.core.stats` (the log window).

Quick reference
---------------
::

    from cgn.core.batches import BatchStream
    from cgn.core.classifier_eval import eval_loader, evaluate_accuracy
    from cgn.core.classifier_trainer import StepOutput, Trainer
    from cgn.core.distributed import init_distributed

    dist = init_distributed("auto")          # torchrun env -> DDP (gloo on CPU, nccl on GPU)
    data = BatchStream(train_set, batch_size=64, seed=cfg.seed, dist=dist)

    def loss_fn(model, batch) -> StepOutput:  # batch already on dist.device
        x, y = batch
        logp = model(x)
        loss = F.nll_loss(logp, y)
        return StepOutput(loss, {"acc": ((logp.argmax(1) == y).sum(), len(y))})

    def eval_fn(model, epoch) -> dict:        # called on every rank, model unwrapped, eval mode
        return evaluate_accuracy(model, eval_loader(test_set, 256, dist), topk=(1,),
                                 device=dist.device, dist=dist)

    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    trainer = Trainer(model, loss_fn, opt, data, epochs=10, out=run_dir, config=cfg_dict,
                      kind="mnist-classifier", resume=args.resume, dist=dist,
                      scheduler=torch.optim.lr_scheduler.StepLR(opt, 1, gamma=0.7),
                      eval_fn=eval_fn)
    result = trainer.fit()                   # {"step", "epoch", "metrics": last evaluation}

:class:`Trainer`
----------------
``fit()`` runs epochs of ``data.steps_per_epoch`` steps. One step: move the batch to the device,
``loss_fn(model, batch) -> StepOutput``, ``zero_grad``, ``backward``, ``step``. After each epoch:
``scheduler.step()``, ``eval_fn(model, epoch)`` (every ``eval_every`` epochs and after the last),
checkpoint. Options:

* ``out``/``config``/``kind``/``resume``: the run directory (:class:`cgn.core.rundir.RunDir`,
  created by rank 0) and checkpoint kind. Checkpoints (``checkpoints/last.pt``, written by rank
  0 through :func:`cgn.core.checkpoint.save_checkpoint`) hold the model, optimiser, scheduler,
  every rank's RNG state and the position (epoch, step in epoch); ``resume=True`` continues
  exactly (bit-identical on CPU) from the last one, at an epoch boundary or mid-epoch (the
  latter with the same world size). Without a checkpoint, ``resume=True`` starts afresh.
* ``checkpoint_every``: also checkpoint every N optimiser steps (0 = only at epoch ends).
* ``log_every``: every N steps rank 0 appends ``{"step", "epoch", "lr", "train/loss",
  "train/<stat>"...}`` to ``metrics.jsonl`` (means over the window and all ranks; a stat
  ``(sum, count)`` is logged as ``sum / count``); evaluations append ``{"step", "epoch",
  "eval/<name>"...}``. With ``tensorboard=True`` the same numbers go to TensorBoard
  (``<out>/tb``, :mod:`cgn.core.tensorboard`).
* ``train_mode(model)``: called after ``model.train()``, e.g. :func:`batchnorm_eval` to keep
  BatchNorm statistics frozen.
* ``extra_state``: a callable whose dict is stored in every checkpoint's ``extra``; after a
  resume, ``trainer.resumed_extra`` holds the ``extra`` of the checkpoint resumed from.
* ``max_steps``: stop (with a checkpoint) once the global step reaches it -- a time budget, or
  a simulated interruption in tests.
* ``dist``: with ``world_size > 1`` the model is wrapped in DDP; the loss must be a mean over
  the rank's batch (DDP averages gradients over ranks). ``trainer.module`` is the bare model.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from cgn.core.batches import BatchStream, ZipStream, to_device
from cgn.core.checkpoint import load_checkpoint, load_state_dict_strict, save_checkpoint
from cgn.core.distributed import DistInfo
from cgn.core.interrupt import StepBoundary
from cgn.core.progress import progress
from cgn.core.rundir import RunDir
from cgn.core.seeding import rng_state, set_rng_state
from cgn.core.stats import WindowStats, check_finite
from cgn.errors import CGNError


@dataclass
class StepOutput:
    """What a loss callable returns: the loss to minimise (a mean over the rank's batch) and
    optional statistics ``name -> (sum, count)`` (tensors or numbers) logged as sum / count."""
    loss: torch.Tensor
    stats: dict[str, tuple[Any, Any]] = field(default_factory=dict)


def batchnorm_eval(module: nn.Module) -> None:
    """Put every BatchNorm layer in eval mode (frozen running statistics), the rest untouched."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


class Trainer:
    """The training loop; see the module docstring for the contract of every argument."""

    def __init__(self, model: nn.Module, loss_fn: Callable[[nn.Module, Any], StepOutput],
                 optimizer: torch.optim.Optimizer, data: BatchStream | ZipStream, *, epochs: int,
                 out: str | os.PathLike, config: dict, kind: str, resume: bool = False,
                 scheduler: Any = None, dist: DistInfo | None = None,
                 eval_fn: Callable[[nn.Module, int], dict] | None = None, eval_every: int = 1,
                 log_every: int = 50, checkpoint_every: int = 0,
                 train_mode: Callable[[nn.Module], None] | None = None,
                 max_steps: int | None = None, tensorboard: bool = False,
                 extra_state: Callable[[], dict] | None = None):
        if epochs <= 0:
            raise CGNError(f"epochs must be positive, got {epochs}")
        if max_steps is not None and max_steps < 1:
            raise CGNError(f"max_steps must be at least 1, got {max_steps}")
        if data.steps_per_epoch <= 0:
            raise CGNError("the training data gives no batches (fewer images than one batch); "
                           "lower the batch size or use more training images")
        self.dist = dist or DistInfo(device=next(model.parameters()).device)
        self.module = model.to(self.dist.device)
        self.model: nn.Module = self.module
        if self.dist.enabled:
            ids = [self.dist.device] if self.dist.device.type == "cuda" else None
            self.model = nn.parallel.DistributedDataParallel(self.module, device_ids=ids)
        self.loss_fn, self.optimizer, self.scheduler, self.data = loss_fn, optimizer, scheduler, data
        self.epochs, self.kind, self.config = epochs, kind, config
        self.eval_fn, self.eval_every = eval_fn, max(1, eval_every)
        self.log_every, self.checkpoint_every = max(1, log_every), max(0, checkpoint_every)
        self.train_mode, self.max_steps, self.extra_state = train_mode, max_steps, extra_state
        self.out = Path(out)
        self.run: RunDir | None = None
        error = None
        if self.dist.is_main:
            try:
                self.run = RunDir(self.out, config, resume=resume, tensorboard=tensorboard)
            except CGNError as e:
                error = str(e)
        # every rank learns whether rank 0 could open the run (instead of waiting forever)
        error = self.dist.all_gather_object(error)[0]
        if error:
            raise CGNError(error)
        self.epoch, self.step_in_epoch, self.global_step = 0, 0, 0
        self.last_metrics: dict = {}
        self.resumed_extra: dict = {}  # the extra entries of the checkpoint resumed from
        self.last_loss: torch.Tensor | None = None  # the latest step's loss (divergence check)
        # the training statistics not yet logged: name -> [sum, count]; checkpointed so that a
        # resumed run writes the same log lines as an uninterrupted one
        self.window = WindowStats(self.log_every)
        if resume:
            self._try_resume()

    # -- checkpoints ---------------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path:
        return self.out / "checkpoints" / "last.pt"

    def _try_resume(self) -> None:
        path = self.checkpoint_path
        if not path.exists():
            if self.run is not None:
                self.run.log(f"--resume: no checkpoint in {path.parent}; starting from scratch")
                self.run.truncate_metrics(-1)  # no stale lines (nor TensorBoard events)
            return
        ckpt = load_checkpoint(path, kind=self.kind)
        ex = ckpt["extra"]
        if ex.get("step_in_epoch", 0) and ex.get("world_size") != self.dist.world_size:
            raise CGNError(f"{path} was written mid-epoch by {ex.get('world_size')} process(es); "
                           f"resume it with the same number (now {self.dist.world_size}) or "
                           "from an epoch-end checkpoint")
        if ex.get("steps_per_epoch") not in (None, self.data.steps_per_epoch) and ex.get("step_in_epoch"):
            raise CGNError(f"{path}: the data now gives {self.data.steps_per_epoch} steps per "
                           f"epoch, the run had {ex.get('steps_per_epoch')}; resume with the same "
                           "data and batch size")
        load_state_dict_strict(self.module, ckpt["model"], str(path))
        self.optimizer.load_state_dict(ckpt["optim"]["optimizer"])
        if self.scheduler is not None and "scheduler" in ex:
            self.scheduler.load_state_dict(ex["scheduler"])
        rngs = ex.get("rng_all") or [ckpt["rng"]]
        set_rng_state(rngs[self.dist.rank] if len(rngs) == self.dist.world_size else rngs[0])
        self.epoch, self.step_in_epoch = int(ex["epoch"]), int(ex["step_in_epoch"])
        self.global_step = int(ckpt["step"])
        self.last_metrics = ex.get("metrics", {})
        self.resumed_extra = dict(ex)
        windows = ex.get("log_window_all") or []
        if len(windows) == self.dist.world_size:
            self.window.load_state_dict(windows[self.dist.rank])
        if self.run is not None:
            self.run.truncate_metrics(self.global_step)
            self.run.log(f"resumed from {path}: epoch {self.epoch}, step {self.step_in_epoch} of "
                         f"the epoch, global step {self.global_step}")

    def save(self) -> None:
        """Write ``checkpoints/last.pt`` (rank 0; all ranks contribute their RNG state); a
        diverged model (non-finite loss) is never saved."""
        if self.last_loss is not None:
            # every rank decides alike (the sum over ranks), so none waits for one that stopped
            check_finite({"loss": self.dist.all_reduce_sum(self.last_loss.detach().float().reshape(1).clone())},
                         self.global_step, self.checkpoint_path)
        rngs = self.dist.all_gather_object(rng_state())
        windows = self.dist.all_gather_object(self.window.state_dict())
        if self.run is None:
            return
        extra = {"epoch": self.epoch, "step_in_epoch": self.step_in_epoch,
                 "steps_per_epoch": self.data.steps_per_epoch,
                 "world_size": self.dist.world_size, "rng_all": rngs,
                 "log_window_all": windows, "metrics": self.last_metrics}
        if self.scheduler is not None:
            extra["scheduler"] = self.scheduler.state_dict()
        if self.extra_state is not None:
            extra.update(self.extra_state())
        save_checkpoint(self.checkpoint_path, kind=self.kind, step=self.global_step,
                        config=self.config, model=self.module.state_dict(),
                        optim={"optimizer": self.optimizer.state_dict()}, rng=rngs[0], extra=extra)
        self.run.flush()

    # -- logging -------------------------------------------------------------------------------
    def emit(self, record: dict) -> None:
        """Append a record to metrics.jsonl (and TensorBoard) on rank 0."""
        if self.run is not None:
            self.run.metric(record)

    def _flush_window(self) -> None:
        if self.window.empty:
            return
        means = self.window.flush(self.dist).means
        check_finite(means, self.global_step, self.checkpoint_path)  # means over all ranks
        rec: dict[str, Any] = {"step": self.global_step,
                               "epoch": round(self.epoch + self.step_in_epoch /
                                              max(1, self.data.steps_per_epoch), 4),
                               "lr": self.optimizer.param_groups[0]["lr"]}
        rec.update({f"train/{name}": v for name, v in sorted(means.items())})
        self.emit(rec)

    # -- the loop ------------------------------------------------------------------------------
    def _set_train(self) -> None:
        self.model.train()
        if self.train_mode is not None:
            self.train_mode(self.module)

    def evaluate(self) -> dict:
        """Run ``eval_fn`` on the bare model in eval mode; returns its metrics."""
        if self.eval_fn is None:
            return {}
        self.module.eval()
        with torch.no_grad():
            metrics = self.eval_fn(self.module, self.epoch)
        return metrics

    def fit(self) -> dict:
        steps = self.data.steps_per_epoch
        if steps <= 0:
            raise CGNError("the training data gives no batches; check the dataset and batch size")
        if self.run is not None:
            self.run.log(f"training {self.kind}: {self.epochs} epochs x {steps} steps, world size "
                         f"{self.dist.world_size}, device {self.dist.device}")
        # Ctrl-C / SIGTERM end the step in flight, then checkpoint that exact state.
        try:
            with StepBoundary() as stop:
                return self._fit(steps, stop)
        finally:
            if self.run is not None:
                self.run.close()  # TensorBoard's events, also when stopped

    def _stop_requested(self, stop: StepBoundary) -> bool:
        """Whether any rank was asked to stop (all ranks then stop after the same step)."""
        if not self.dist.enabled:
            return stop.requested is not None
        flag = torch.tensor([1.0 if stop.requested else 0.0], device=self.dist.device)
        return bool(self.dist.all_reduce_sum(flag).item() > 0)

    def _fit(self, steps: int, stop: StepBoundary) -> dict:
        while self.epoch < self.epochs:
            if self.max_steps is not None and self.global_step >= self.max_steps:
                break
            self._set_train()
            bar = progress(total=steps, initial=self.step_in_epoch,
                           desc=f"epoch {self.epoch + 1}/{self.epochs}") if self.dist.is_main else None
            t0 = time.time()
            for batch in self.data.epoch(self.epoch, self.step_in_epoch):
                if self.step_in_epoch >= steps:
                    break
                batch = to_device(batch, self.dist.device)
                out = self.loss_fn(self.model, batch)
                self.optimizer.zero_grad(set_to_none=True)
                out.loss.backward()
                self.optimizer.step()
                self.step_in_epoch += 1
                self.global_step += 1
                self.last_loss = out.loss.detach()
                self.window.add({"loss": (out.loss, 1), **out.stats})
                if bar is not None:
                    bar.update(1)
                    if self.global_step % 10 == 0:
                        bar.set_postfix(loss=f"{out.loss.item():.4f}")
                if self.window.ready(self.global_step, last=self.step_in_epoch == steps):
                    self._flush_window()
                done = self.max_steps is not None and self.global_step >= self.max_steps
                halt = self._stop_requested(stop)
                if done or halt or (self.checkpoint_every and self.global_step % self.checkpoint_every == 0):
                    self.save()
                if halt:
                    if bar is not None:
                        bar.close()
                    self._stopped(stop)
                if done:
                    break
            if bar is not None:
                bar.close()
            if self.step_in_epoch < steps:  # stopped early by max_steps
                break
            # end of epoch: schedule, evaluate, checkpoint
            if self.scheduler is not None:
                self.scheduler.step()
            self.epoch += 1
            self.step_in_epoch = 0
            if self.eval_fn is not None and (self.epoch % self.eval_every == 0
                                             or self.epoch == self.epochs):
                self.last_metrics = self.evaluate()
                self.emit({"step": self.global_step, "epoch": self.epoch,
                            **{f"eval/{k}": v for k, v in self.last_metrics.items()}})
            if self.run is not None:
                self.run.log(f"epoch {self.epoch} done in {time.time() - t0:.1f}s"
                             + (f"; {_short(self.last_metrics)}" if self.last_metrics else ""),
                             echo=True)
            self.save()
            if self._stop_requested(stop):
                self._stopped(stop)
        self.dist.barrier()
        return {"step": self.global_step, "epoch": self.epoch, "metrics": self.last_metrics}

    def _stopped(self, stop: StepBoundary) -> None:
        if self.run is not None:
            self.run.log(f"stopped by {stop.requested or 'a signal on another rank'} after step "
                         f"{self.global_step}; checkpoint saved, rerun with --resume")
        stop.raise_()


def _short(metrics: dict, n: int = 6) -> str:
    items = list(metrics.items())[:n]
    return ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in items)

