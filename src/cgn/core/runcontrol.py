"""Run-control fields: how a run executes, not what it computes.

``device``, ``threads``, ``log_every``, ``checkpoint_every`` and ``eval_batch_size`` recur in the
trainers' configs, flat in some (``JudgesConfig.threads``) and under ``train.`` in others
(``U2NetTrainConfig.train.threads``). Each is declared here once, with its help text, its
resume rule (``"free"``: a resume may change it, :mod:`cgn.config`) and its lower bound; a config
takes the ones it has by a field declaration, so field paths and flags stay what they are::

    @dataclass
    class TrainConfig:
        ...
        device: str = runcontrol.device()
        threads: int = runcontrol.threads()

        def __post_init__(self):
            runcontrol.check(self)

``checkpoint_every`` comes in two forms: ``epochs=True`` for trainers that also save at each
epoch end (0 = only there), ``epochs=False`` for step-based ones (>= 1).

:func:`set_threads` applies a ``threads`` value, a config's or a plain ``--threads`` flag's
(:func:`cgn.cliargs.add_threads_option`), in every command that computes.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from cgn.config import check as _check
from cgn.errors import CGNError

DEVICE_HELP = "auto (a GPU when there is one, else the CPU) | cpu | cuda[:N]"
THREADS_HELP = "torch CPU threads (0: torch's default)"
_MIN = "min"  # metadata key: the field's lower bound, checked by check()


def _field(default: Any, help: str, minimum: int | None, resume: str | None = "free") -> Any:
    meta: dict[str, Any] = {"help": help}
    if resume is not None:
        meta["resume"] = resume
    if minimum is not None:
        meta[_MIN] = minimum
    return dataclasses.field(default=default, metadata=meta)


def device(default: str = "auto") -> Any:
    """``device``: where the run computes (a resume may move it)."""
    return _field(default, DEVICE_HELP, None)


def threads() -> Any:
    """``threads``: torch CPU threads, 0 = torch's default."""
    return _field(0, THREADS_HELP, 0)


def worker_threads() -> Any:
    """``threads`` of a pipeline that may run its tasks in ``jobs`` worker processes
    (``cgn reproduce``): torch CPU threads per process."""
    return _field(0, "torch CPU threads per process (0: torch's default; with jobs > 1: the CPU "
                     "count divided by the number of worker processes)", 0)


def set_threads(n: int, flag: str = "--threads") -> None:
    """Use ``n`` torch CPU threads from now on (``torch.set_num_threads``); 0 leaves torch's
    default. Call it before the model is built. A negative ``n`` is a one-line error. Every
    command that computes calls it, so it also keeps freed memory for the next step
    (:func:`cgn.core.allocator.keep_freed_memory`)."""
    if n < 0:
        raise CGNError(f"{flag} {n}: give the number of torch CPU threads, or 0 for torch's default")
    from cgn.core.allocator import keep_freed_memory
    keep_freed_memory()
    if n:
        import torch
        torch.set_num_threads(n)


def log_every(default: int = 50) -> Any:
    return _field(default, "steps between metrics.jsonl lines", 1)


def checkpoint_every(default: int = 500, *, epochs: bool = True) -> Any:
    if epochs:
        return _field(default, "checkpoint every N steps besides each epoch end (0 = epoch ends only)", 0)
    return _field(default, "steps between checkpoints", 1)


def eval_batch_size(default: int = 256) -> Any:
    return _field(default, "images per evaluation batch", 1)


def check(cfg: Any) -> None:
    """Validate the run-control fields of dataclass instance ``cfg`` (for ``__post_init__``):
    ``ValueError("NAME must be >= N")`` for the first field below its bound."""
    for f in dataclasses.fields(cfg):
        if _MIN in f.metadata:
            _check(getattr(cfg, f.name) >= f.metadata[_MIN], f"{f.name} must be >= {f.metadata[_MIN]}")

