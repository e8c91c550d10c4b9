"""Run directories: one folder per run holding, in this order of creation,
``config.json`` (the resolved config), ``log.txt``, ``metrics.jsonl``, ``samples/`` and
``checkpoints/``, and ``tb/`` (TensorBoard event files: every number of every metrics line at its
step, and the sample grids a trainer passes to :meth:`RunDir.image`;
:mod:`cgn.core.tensorboard`).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shutil
import sys
from pathlib import Path
from typing import Any

import torch

from cgn import __version__
from cgn.config import ResumeDiff, check_resume
from cgn.core.lock import lock_dir
from cgn.core.tensorboard import TensorBoardLog
from cgn.errors import CGNError
from cgn.io import append_jsonl, read_json, read_jsonl, write_json_atomic


class RunDir:
    """``tensorboard=False``: metrics go to ``metrics.jsonl`` only; ``subdirs=False``: no
    ``samples/`` and ``checkpoints/`` are made (a run that keeps its files elsewhere)."""

    def __init__(self, root: str | os.PathLike, config: dict, *, resume: bool = False,
                 tensorboard: bool = True, subdirs: bool = True):
        self.root = Path(root)
        self.samples = self.root / "samples"
        self.checkpoints = self.root / "checkpoints"
        self.tensorboard = TensorBoardLog(self.root / "tb", log=self.log) if tensorboard else None
        cfg_path = self.root / "config.json"
        before = set(os.listdir(self.root)) if self.root.is_dir() else None
        lock_dir(self.root)  # one process per run directory
        if cfg_path.exists():
            if not resume:
                raise CGNError(f"run directory {self.root} already holds a run; pass --resume to "
                               "continue it or choose another --out")
        else:
            write_json_atomic(cfg_path, {"config": config, "environment": environment()})
            made = [p for p in (self.samples, self.checkpoints) if subdirs and not p.exists()]
            _fresh.append((self, before, made))
        if subdirs:
            self.samples.mkdir(parents=True, exist_ok=True)
            self.checkpoints.mkdir(parents=True, exist_ok=True)

    @property
    def config_path(self) -> Path:
        return self.root / "config.json"

    def stored_config(self) -> dict:
        try:
            return read_json(self.config_path, "run config")["config"]
        except (KeyError, TypeError):
            raise CGNError(f"{self.config_path} is damaged (not the JSON record cgn writes); restore "
                           "it, or start the run again in another --out") from None

    def check_resume(self, cls: type, new: dict, stored: dict | None = None,
                     where: str | None = None) -> ResumeDiff:
        """Refuse (one :class:`CGNError` line) a rerun whose config ``new`` changes a setting of
        the stored one (``config.json``, or ``stored``) that the resume rules of dataclass ``cls``
        keep; returns the differences (:func:`cgn.config.resume_diff`)."""
        return check_resume(cls, self.stored_config() if stored is None else stored, new,
                            where or f"{self.root} holds a run with other settings")

    def log(self, message: str, echo: bool = True) -> None:
        stamp = _dt.datetime.now().strftime("%Y-%m-%d %H:%M:%S")
        # One write(2) to a file opened with O_APPEND: lines that several processes log to the
        # same run (``cgn reproduce mnist --jobs N``) never interleave or overwrite each other.
        fd = os.open(self.root / "log.txt", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            os.write(fd, f"[{stamp}] {message}\n".encode())
        finally:
            os.close(fd)
        if echo:
            sys.stderr.write(message + "\n")
            sys.stderr.flush()

    def metric(self, record: dict[str, Any], key: str = "step") -> None:
        """Append a line to ``metrics.jsonl``; its numbers also go to TensorBoard at its ``key``."""
        append_jsonl(self.root / "metrics.jsonl", record)
        if self.tensorboard is not None and isinstance(record.get(key), int):
            self.tensorboard.scalars(record, record[key], skip=(key,))

    def image(self, tag: str, image: Any, step: int) -> None:
        """A sample grid (PIL image or uint8 ``[H, W, C]``) for TensorBoard; the PNG in
        ``samples/`` is the trainer's to write."""
        if self.tensorboard is not None:
            self.tensorboard.image(tag, image, step)

    def flush(self) -> None:
        """Write out pending TensorBoard events (at every checkpoint)."""
        if self.tensorboard is not None:
            self.tensorboard.flush()

    def close(self) -> None:
        """Close the TensorBoard event file (the end of a training session, or its interruption)."""
        if self.tensorboard is not None:
            self.tensorboard.close()

    def metrics(self) -> list[dict]:
        return read_jsonl(self.root / "metrics.jsonl")

    def truncate_metrics(self, max_step: int, key: str = "step") -> None:
        """On resume, drop metric lines written after the checkpoint being resumed from (at
        ``max_step``; -1 drops every line), and hide TensorBoard's events after it the same way."""
        path = self.root / "metrics.jsonl"
        if path.exists():
            rows = [r for r in read_jsonl(path) if r.get(key, 0) <= max_step]
            from cgn.io import write_text_atomic
            write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in rows))
        if self.tensorboard is not None:
            self.tensorboard.purge(max_step + 1)

    def latest_checkpoint(self) -> Path | None:
        p = self.checkpoints / "last.pt"
        return p if p.exists() else None


# Run directories this process started: (run, the names its folder held before or None when the
# folder is new, the sub-folders it made).
_fresh: list[tuple[RunDir, set[str] | None, list[Path]]] = []


def _started(run: RunDir, before: set[str]) -> bool:
    """Has the run produced anything worth keeping (a checkpoint, a metrics line, a result)?"""
    own = {"config.json", "log.txt", ".lock", "samples", "checkpoints", "tb"}
    return any(run.checkpoints.glob("*.pt")) or (run.root / "metrics.jsonl").exists() or any(
        name not in own and name not in before for name in os.listdir(run.root))


def discard_unstarted() -> None:
    """Remove what this process's run directories hold when they never started (a bad input
    found after the folder was made), so that the corrected rerun is not told to --resume."""
    while _fresh:
        run, before, made = _fresh.pop()
        if not run.root.is_dir() or _started(run, before or set()):
            continue
        if before is None:
            shutil.rmtree(run.root, ignore_errors=True)
            continue
        for name in ("config.json", "log.txt"):
            (run.root / name).unlink(missing_ok=True)
        for sub in made:
            shutil.rmtree(sub, ignore_errors=True)


def forget_started() -> None:
    """Forget the run directories this process made (a command ended): a later command's failure
    never touches them."""
    _fresh.clear()


def environment() -> dict:
    return {
        "cgn": __version__, "torch": torch.__version__, "python": platform.python_version(),
        "platform": platform.platform(), "cpu_count": os.cpu_count(),
        "cuda": torch.cuda.is_available(), "argv": sys.argv,
        "started": _dt.datetime.now().isoformat(timespec="seconds"),
    }
