"""The one classifier training loop of cgn (MNIST classifier and ImageNet ensemble alike).

Everything here is task-agnostic: the task supplies a model, a per-batch loss, an optimiser, a
per-epoch scheduler and its data; this module supplies the loop, exact resume, logging, optional
DistributedDataParallel (DDP) and sample-exact evaluation.

Quick reference
---------------
::

    from cgn.core.classifier_training import (BatchStream, StepOutput, Trainer,
                                              evaluate_accuracy, eval_loader, init_distributed)

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

Pieces
------
- :func:`init_distributed` / :class:`DistInfo`: process group from the ``torchrun`` environment
  (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``); a single process when ``WORLD_SIZE`` is unset or 1.
- :class:`EpochSampler` + :class:`SeededItems` + :class:`BatchStream`: the data order of epoch
  ``e`` is a pure function of ``(seed, e)``: a permutation (several, concatenated, when an epoch
  draws more samples than the set holds), padded to a multiple of the world size and dealt out
  round-robin, so that the union of the ranks' ``k``-th batches is the same contiguous chunk of
  the epoch sequence whatever the number of processes. Every position also carries its own seed;
  :class:`SeededItems` seeds torch's RNG with it around the item's transform, so augmentations
  do not depend on worker processes or on where a resumed run restarted.
  ``BatchStream.epoch(e, start_step)`` skips the first ``start_step`` batches without loading
  them. :class:`ZipStream` runs several streams in lock-step (e.g. real + counterfactual).
- :class:`Trainer`: ``fit()`` runs epochs of ``data.steps_per_epoch`` steps. One step: move the
  batch to the device, ``loss_fn(model, batch) -> StepOutput``, ``zero_grad``, ``backward``,
  ``step``. After each epoch: ``scheduler.step()``, ``eval_fn(model, epoch)`` (every
  ``eval_every`` epochs and after the last), checkpoint. Options:

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
    "eval/<name>"...}``. With ``tensorboard=True`` the same scalars go to ``<out>/tb``.
  * ``train_mode(model)``: called after ``model.train()``, e.g. :func:`batchnorm_eval` to keep
    BatchNorm statistics frozen.
  * ``max_steps``: stop (with a checkpoint) once the global step reaches it -- a time budget, or
    a simulated interruption in tests.
  * ``dist``: with ``world_size > 1`` the model is wrapped in DDP; the loss must be a mean over
    the rank's batch (DDP averages gradients over ranks). ``trainer.module`` is the bare model.
- :func:`evaluate_accuracy`, :func:`evaluate_counts`, :func:`eval_loader`: evaluation that
  counts every sample exactly once -- no padding, partial last batches counted by their real size
  -- and sums the counts over DDP ranks before dividing.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import torch
import torch.distributed as tdist
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from cgn.core.checkpoint import load_checkpoint, load_state_dict_strict, save_checkpoint
from cgn.core.device import resolve_device
from cgn.core.progress import progress
from cgn.core.rundir import RunDir
from cgn.core.seeding import generator, rng_state, set_rng_state
from cgn.errors import CGNError

# --------------------------------------------------------------------------------------------
# Distributed setup
# --------------------------------------------------------------------------------------------


@dataclass
class DistInfo:
    """Where this process stands: rank, world size and its device."""
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            tdist.barrier()

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        """Sum a tensor over ranks (in place, returned for convenience)."""
        if self.enabled:
            tdist.all_reduce(t, op=tdist.ReduceOp.SUM)
        return t

    def all_gather_object(self, obj: Any) -> list:
        if not self.enabled:
            return [obj]
        out: list = [None] * self.world_size
        tdist.all_gather_object(out, obj)
        return out


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the process group ``torchrun`` describes in the environment, if any.

    ``device`` as in :func:`cgn.core.device.resolve_device`; under DDP a CUDA device becomes
    ``cuda:LOCAL_RANK`` (backend nccl), a CPU run uses gloo.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    dev = resolve_device(device)
    if world <= 1:
        return DistInfo(device=dev)
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if dev.type == "cuda":
        if local >= torch.cuda.device_count():
            raise CGNError(f"LOCAL_RANK {local} but only {torch.cuda.device_count()} GPU(s) "
                           "visible; start torchrun with --nproc_per_node <= the GPU count")
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
        backend = "nccl"
    else:
        backend = "gloo"
    if not tdist.is_initialized():
        tdist.init_process_group(backend=backend, rank=rank, world_size=world)
    return DistInfo(device=dev, rank=rank, world_size=world, local_rank=local, backend=backend)


def shutdown_distributed(info: DistInfo) -> None:
    if info.enabled and tdist.is_initialized():
        tdist.destroy_process_group()


# --------------------------------------------------------------------------------------------
# Data order: deterministic per epoch, sharded, resumable at any batch
# --------------------------------------------------------------------------------------------


class EpochSampler(Sampler):
    """Yields ``(item_seed, index)`` pairs for one rank; see the module docstring.

    n_items: size of the dataset; samples_per_epoch: how many items an epoch draws (default
    ``n_items``; more than ``n_items`` concatenates fresh permutations); shuffle=False keeps the
    natural order (repeated as needed).
    """

    def __init__(self, n_items: int, *, seed: int, batch_size: int, shuffle: bool = True,
                 samples_per_epoch: int | None = None, rank: int = 0, world_size: int = 1):
        if n_items <= 0:
            raise CGNError("the training set is empty; check the dataset folder")
        self.n_items = int(n_items)
        self.seed = int(seed)
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.samples = int(samples_per_epoch if samples_per_epoch is not None else n_items)
        if self.samples <= 0:
            raise CGNError(f"samples per epoch must be positive, got {self.samples}")
        self.rank, self.world_size = rank, world_size
        self.per_rank = math.ceil(self.samples / world_size)
        self.epoch, self.start_batch = 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = int(epoch), int(start_batch)

    def sequence(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole epoch (all ranks, padded): item indices [T] and per-position seeds [T]."""
        g = generator(self.seed * 1_000_003 + epoch)
        reps = math.ceil(self.samples / self.n_items)
        if self.shuffle:
            order = torch.cat([torch.randperm(self.n_items, generator=g) for _ in range(reps)])
        else:
            order = torch.arange(self.n_items).repeat(reps)
        order = order[: self.samples]
        total = self.per_rank * self.world_size
        if total > self.samples:  # pad by wrapping around, as every rank needs as many items
            order = torch.cat([order, order[: total - self.samples]])
        seeds = torch.randint(0, 2**62, (total,), generator=g)
        return order, seeds

    def _mine(self) -> tuple[torch.Tensor, torch.Tensor]:
        order, seeds = self.sequence(self.epoch)
        sl = slice(self.rank, None, self.world_size)
        skip = self.start_batch * self.batch_size
        return order[sl][skip:], seeds[sl][skip:]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order, seeds = self._mine()
        return iter(zip(seeds.tolist(), order.tolist()))

    def __len__(self) -> int:
        return max(0, self.per_rank - self.start_batch * self.batch_size)

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.per_rank / self.batch_size)


class SeededItems(Dataset):
    """Wraps a dataset so that item ``(seed, index)`` is loaded with torch's RNG seeded by
    ``seed`` (random transforms become a function of the epoch position), leaving the caller's
    RNG untouched."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]):
        seed, index = key
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)  # CPU only: fork_rng(devices=[]) restores only it
            return self.dataset[index]

    def __getattr__(self, name: str):
        # Batched access: a dataset with ``__getitems__(indices)`` (e.g. in-memory arrays) gets
        # the whole batch at once, with torch's RNG seeded by the batch's first position seed.
        if name == "__getitems__" and hasattr(self.dataset, "__getitems__"):
            def getitems(keys: list[tuple[int, int]]):
                with torch.random.fork_rng(devices=[]):
                    torch.default_generator.manual_seed(keys[0][0])
                    return self.dataset.__getitems__([k[1] for k in keys])
            return getitems
        raise AttributeError(name)


class BatchStream:
    """Batches of one dataset for the Trainer: ``steps_per_epoch`` and ``epoch(e, start_step)``.

    batch_size is per process. workers: DataLoader worker processes. drop_last is not offered:
    the last batch of an epoch may be smaller (every sample is seen once per epoch).
    """

    def __init__(self, dataset: Dataset, batch_size: int, *, seed: int, shuffle: bool = True,
                 samples_per_epoch: int | None = None, dist: DistInfo | None = None,
                 workers: int = 0, collate_fn: Callable | None = None):
        if batch_size <= 0:
            raise CGNError(f"batch size must be positive, got {batch_size}")
        dist = dist or DistInfo()
        self.dataset = SeededItems(dataset)
        self.batch_size = batch_size
        self.workers = workers
        self.collate_fn = collate_fn
        self.pin = dist.device.type == "cuda"
        self.sampler = EpochSampler(len(dataset), seed=seed, batch_size=batch_size,  # type: ignore[arg-type]
                                    shuffle=shuffle, samples_per_epoch=samples_per_epoch,
                                    rank=dist.rank, world_size=dist.world_size)

    @property
    def steps_per_epoch(self) -> int:
        return self.sampler.steps_per_epoch

    def epoch(self, epoch: int, start_step: int = 0) -> Iterable:
        self.sampler.set_epoch(epoch, start_step)
        # the loader's own generator (worker seeds) keeps the global RNG untouched
        g = generator(self.sampler.seed * 1_000_003 + epoch + 7_919)
        return DataLoader(self.dataset, batch_size=self.batch_size, sampler=self.sampler,
                          num_workers=self.workers, pin_memory=self.pin,
                          collate_fn=self.collate_fn, persistent_workers=False, generator=g)


class ZipStream:
    """Several streams in lock-step; an epoch has the first stream's number of steps (the
    others must have at least as many). Yields tuples of batches."""

    def __init__(self, *streams: BatchStream):
        if not streams:
            raise ValueError("ZipStream needs at least one stream")
        self.streams = streams
        steps = [s.steps_per_epoch for s in streams]
        if min(steps[1:], default=steps[0]) < steps[0]:
            raise ValueError(f"secondary streams have fewer steps per epoch ({steps}) than the "
                             "first; give them more samples per epoch")

    @property
    def steps_per_epoch(self) -> int:
        return self.streams[0].steps_per_epoch

    def epoch(self, epoch: int, start_step: int = 0) -> Iterable:
        return zip(*(s.epoch(epoch, start_step) for s in self.streams))


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


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


def to_device(batch: Any, device: torch.device) -> Any:
    """Move tensors in nested tuples/lists/dicts to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


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
                self.run = RunDir(self.out, config, resume=resume)
            except CGNError as e:
                error = str(e)
        # every rank learns whether rank 0 could open the run (instead of waiting forever)
        error = self.dist.all_gather_object(error)[0]
        if error:
            raise CGNError(error)
        self.epoch, self.step_in_epoch, self.global_step = 0, 0, 0
        self.last_metrics: dict = {}
        # the training statistics not yet logged: name -> [sum, count]; checkpointed so that a
        # resumed run writes the same log lines as an uninterrupted one
        self._window: dict[str, list] = {}
        if resume:
            self._try_resume()
        self.tb = self._open_tensorboard() if tensorboard and self.dist.is_main else None

    # -- checkpoints ---------------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path:
        return self.out / "checkpoints" / "last.pt"

    def _try_resume(self) -> None:
        path = self.checkpoint_path
        if not path.exists():
            if self.run is not None:
                self.run.log(f"--resume: no checkpoint in {path.parent}; starting from scratch")
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
        windows = ex.get("log_window_all") or []
        if len(windows) == self.dist.world_size:
            self._window = {k: list(v) for k, v in windows[self.dist.rank].items()}
        if self.run is not None:
            self.run.truncate_metrics(self.global_step)
            self.run.log(f"resumed from {path}: epoch {self.epoch}, step {self.step_in_epoch} of "
                         f"the epoch, global step {self.global_step}")

    def save(self) -> None:
        """Write ``checkpoints/last.pt`` (rank 0; all ranks contribute their RNG state)."""
        rngs = self.dist.all_gather_object(rng_state())
        windows = self.dist.all_gather_object(
            {k: [float(v[0]), float(v[1])] for k, v in self._window.items()})
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

    # -- logging -------------------------------------------------------------------------------
    def _open_tensorboard(self):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            if self.run is not None:
                self.run.log("tensorboard is not installed (pip install tensorboard); logging "
                             "to metrics.jsonl only")
            return None
        return SummaryWriter(log_dir=str(self.out / "tb"), purge_step=self.global_step or None)

    def emit(self, record: dict) -> None:
        """Append a record to metrics.jsonl (and TensorBoard) on rank 0."""
        if self.run is None:
            return
        self.run.metric(record)
        if self.tb is not None:
            for k, v in record.items():
                if k not in ("step", "epoch") and isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, record["step"])
            self.tb.flush()

    def _flush_window(self) -> None:
        window, self._window = self._window, {}
        if not window:
            return
        names = sorted(window)
        t = torch.tensor([float(window[k][0]) for k in names] + [float(window[k][1]) for k in names],
                         dtype=torch.float64, device=self.dist.device)
        self.dist.all_reduce_sum(t)
        k = len(names)
        rec: dict[str, Any] = {"step": self.global_step,
                               "epoch": round(self.epoch + self.step_in_epoch /
                                              max(1, self.data.steps_per_epoch), 4),
                               "lr": self.optimizer.param_groups[0]["lr"]}
        for i, name in enumerate(names):
            cnt = t[k + i].item()
            rec[f"train/{name}"] = t[i].item() / cnt if cnt else float("nan")
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
                for name, (s, c) in [("loss", (out.loss, 1)), *out.stats.items()]:
                    acc = self._window.setdefault(name, [0.0, 0.0])
                    acc[0] += s.detach() if isinstance(s, torch.Tensor) else s
                    acc[1] += c.detach() if isinstance(c, torch.Tensor) else c
                if bar is not None:
                    bar.update(1)
                    if self.global_step % 10 == 0:
                        bar.set_postfix(loss=f"{out.loss.item():.4f}")
                if self.global_step % self.log_every == 0 or self.step_in_epoch == steps:
                    self._flush_window()
                stop = self.max_steps is not None and self.global_step >= self.max_steps
                if stop or (self.checkpoint_every and self.global_step % self.checkpoint_every == 0):
                    self.save()
                if stop:
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
        if self.tb is not None:
            self.tb.close()
        self.dist.barrier()
        return {"step": self.global_step, "epoch": self.epoch, "metrics": self.last_metrics}


def _short(metrics: dict, n: int = 6) -> str:
    items = list(metrics.items())[:n]
    return ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in items)


# --------------------------------------------------------------------------------------------
# Evaluation: every sample counted once, summed over ranks
# --------------------------------------------------------------------------------------------


class ShardSampler(Sampler):
    """Indices ``rank, rank + W, ...`` of ``range(n)``: a partition of the set, no padding."""

    def __init__(self, n: int, rank: int = 0, world_size: int = 1):
        self.n, self.rank, self.world_size = n, rank, world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.n, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world_size))


def eval_loader(dataset: Dataset, batch_size: int, dist: DistInfo | None = None,
                workers: int = 0, collate_fn: Callable | None = None) -> DataLoader:
    """A loader over this rank's share of ``dataset`` (the shares partition the set)."""
    dist = dist or DistInfo()
    return DataLoader(dataset, batch_size=batch_size,
                      sampler=ShardSampler(len(dataset), dist.rank, dist.world_size),  # type: ignore[arg-type]
                      num_workers=workers, pin_memory=dist.device.type == "cuda",
                      collate_fn=collate_fn)


def topk_correct(logits: torch.Tensor, target: torch.Tensor, topk: Sequence[int]) -> torch.Tensor:
    """Number of rows whose target is among the ``k`` largest logits, for each k: [len(topk)]."""
    maxk = min(max(topk), logits.shape[1])
    pred = logits.topk(maxk, dim=1).indices                     # [B, maxk]
    hit = pred.eq(target.view(-1, 1))                           # [B, maxk]
    return torch.stack([hit[:, :min(k, maxk)].any(dim=1).sum() for k in topk])


@torch.no_grad()
def evaluate_counts(model: nn.Module, loader: Iterable,
                    count_fn: Callable[[nn.Module, Any], Mapping[str, torch.Tensor]],
                    device: torch.device | None = None, dist: DistInfo | None = None,
                    desc: str = "eval") -> dict[str, float]:
    """Sum ``count_fn(model, batch)`` (a dict of scalar counts) over the loader and over ranks.

    Every rank must call this (the sums are all-reduced); give each rank its own share of the
    data (:func:`eval_loader`).
    """
    dist = dist or DistInfo()
    device = device or dist.device
    totals: dict[str, torch.Tensor] = {}
    n_batches = len(loader) if hasattr(loader, "__len__") else None  # type: ignore[arg-type]
    it = progress(loader, total=n_batches, desc=desc) if dist.is_main else loader
    for batch in it:
        counts = count_fn(model, to_device(batch, device))
        for k, v in counts.items():
            v = torch.as_tensor(v, dtype=torch.float64, device=device).detach()
            totals[k] = totals[k] + v if k in totals else v
    # every rank must reduce the same keys, even a rank whose share was empty
    keys = sorted(set().union(*dist.all_gather_object(sorted(totals))))
    vec = torch.stack([totals.get(k, torch.zeros((), dtype=torch.float64, device=device))
                       for k in keys]) if keys else torch.zeros(0, dtype=torch.float64, device=device)
    dist.all_reduce_sum(vec)
    return {k: float(v) for k, v in zip(keys, vec.tolist())}


def _default_predict(model: nn.Module, batch: Any) -> Any:
    return model(batch[0])


def _default_target(batch: Any) -> Any:
    return batch[1]


@torch.no_grad()
def evaluate_accuracy(model: nn.Module, loader: Iterable, topk: Sequence[int] = (1, 5), *,
                      predict: Callable[[nn.Module, Any], Any] = _default_predict,
                      target: Callable[[Any], Any] = _default_target,
                      device: torch.device | None = None, dist: DistInfo | None = None,
                      desc: str = "accuracy") -> dict:
    """Top-k accuracy (percent) over every sample of the loader (and of all ranks).

    ``predict(model, batch)`` returns logits ``[B, C]`` -- or a dict of them, one per
    prediction head; ``target(batch)`` returns labels ``[B]`` -- or a dict with the same keys.
    Returns ``{"top1": .., "top5": .., "n": N}``, or ``{head: {...}}`` for dict predictions.
    """
    def count(m: nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        logits, y = predict(m, batch), target(batch)
        single = not isinstance(logits, Mapping)
        lg = {"": logits} if single else logits
        ys = {k: y for k in lg} if not isinstance(y, Mapping) else y
        out = {}
        for k, v in lg.items():
            c = topk_correct(v, ys[k], topk)
            for kk, ci in zip(topk, c):
                out[f"{k}\0top{kk}"] = ci
            out[f"{k}\0n"] = torch.tensor(len(ys[k]))
        return out

    sums = evaluate_counts(model, loader, count, device=device, dist=dist, desc=desc)
    heads = sorted({k.split("\0")[0] for k in sums})
    if not heads:
        raise CGNError("evaluation data set is empty; check the folder")
    res: dict[str, dict] = {}
    for h in heads:
        n = sums[f"{h}\0n"]
        if n == 0:
            raise CGNError("evaluation data set is empty; check the folder")
        res[h] = {f"top{k}": 100.0 * sums[f"{h}\0top{k}"] / n for k in topk}
        res[h]["n"] = int(n)
    return res[""] if heads == [""] else res
