"""The one distributed helper of cgn: which process this is, and the few collectives the trainers use.

``torchrun`` describes the process group in the environment (``WORLD_SIZE``, ``RANK``,
``LOCAL_RANK``); without it (or with ``WORLD_SIZE=1``) everything here is a single process and
every collective is the identity, so the same trainer code runs with and without DDP::

    dist = init_distributed("auto")   # DDP: gloo on CPUs, nccl on GPUs (cuda:LOCAL_RANK)
    try:
        ...                           # dist.device, dist.is_main, dist.all_reduce_sum(t), ...
    finally:
        shutdown_distributed(dist)

:func:`is_main_process` answers "am I rank 0?" from the environment alone, for code that runs
before the group exists or after it is torn down (e.g. printing a command's result once).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as tdist

from cgn.core.device import resolve_device
from cgn.errors import CGNError


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

    def all_reduce_mean(self, t: torch.Tensor) -> torch.Tensor:
        """The mean of a tensor over ranks, reduced on this rank's device (NCCL needs the GPU);
        a new tensor there, or ``t`` itself in one process."""
        if not self.enabled:
            return t
        work = t.to(self.device, copy=True)
        tdist.all_reduce(work, op=tdist.ReduceOp.SUM)
        return work / self.world_size

    def all_gather_object(self, obj: Any) -> list:
        """Every rank's ``obj`` (picklable), in rank order."""
        if not self.enabled:
            return [obj]
        out: list = [None] * self.world_size
        tdist.all_gather_object(out, obj)
        return out


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, str(default))
    try:
        return int(raw)
    except ValueError:
        raise CGNError(f"{name}={raw!r} is not an integer; launch with torchrun or unset it") from None


def is_main_process() -> bool:
    """True on rank 0 of a ``torchrun`` launch and in a plain single process."""
    return _env_int("RANK", 0) == 0


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the process group ``torchrun`` describes in the environment, if any.

    ``device`` as in :func:`cgn.core.device.resolve_device`; under DDP a CUDA device becomes
    ``cuda:LOCAL_RANK`` (backend nccl), a CPU run uses gloo.
    """
    world = _env_int("WORLD_SIZE", 1)
    dev = resolve_device(device)
    if world <= 1:
        return DistInfo(device=dev)
    rank = _env_int("RANK", 0)
    local = _env_int("LOCAL_RANK", 0)
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
    """Leave the process group that :func:`init_distributed` joined (no-op in one process)."""
    if info.enabled and tdist.is_initialized():
        tdist.destroy_process_group()
