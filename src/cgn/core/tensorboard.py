"""TensorBoard event files beside a run's ``metrics.jsonl`` (``tensorboard --logdir RUN``).

:class:`TensorBoardLog` is what :class:`cgn.core.rundir.RunDir` writes through: every number of a
metrics line becomes a scalar at that line's step, and sample grids become images. It opens its
``SummaryWriter`` on the first write, so a run directory that never logs a metric gets no event
file, and a resume can first say where the run continues:

* ``purge(step)`` (called by ``RunDir.truncate_metrics``): the next event file starts with
  TensorBoard's restart marker, which hides every event at ``step`` or later from the earlier
  sessions -- the same cut that ``metrics.jsonl`` gets, so a resumed run shows one curve.
  TensorBoard reads a folder's event files in the order of their names, which begin with the
  creation second; a writer opened in the same second as the newest file waits for the next
  one (at most a second), so that the marker is always read after the events it hides.
* Without the ``tensorboard`` package nothing is written and one line says so (once per run).

Only the process that holds the run directory writes (rank 0 under DDP: the other ranks have no
``RunDir``). Nothing here draws random numbers.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

OFF_MESSAGE = ("TensorBoard logs are off: the tensorboard package is not installed "
               "(pip install tensorboard); metrics.jsonl has every curve")


class TensorBoardLog:
    """Scalars and images of one run, in the event files of ``log_dir``."""

    def __init__(self, log_dir: str | Path, log: Callable[[str], None] | None = None):
        self.log_dir = Path(log_dir)
        self._log = log
        self._writer: Any = None
        self._off = False
        self._purge_from: int | None = None

    def purge(self, step: int) -> None:
        """Hide the events of earlier sessions at ``step`` or later (a resume from ``step - 1``)."""
        self.close()
        self._purge_from = max(0, int(step))

    def _open(self):
        if self._writer is not None or self._off:
            return self._writer
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            self._off = True
            if self._log is not None:
                self._log(OFF_MESSAGE)
            return None
        _wait_for_a_new_second(self.log_dir)
        self._writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=self._purge_from)
        self._purge_from = None
        return self._writer

    def scalars(self, record: Mapping[str, Any], step: int, skip: tuple[str, ...] = ()) -> None:
        """Every number of ``record`` (except the keys in ``skip``) as a scalar at ``step``."""
        values = {k: float(v) for k, v in record.items()
                  if k not in skip and isinstance(v, (int, float)) and not isinstance(v, bool)}
        writer = self._open() if values else None
        if writer is None:
            return
        for tag, v in values.items():
            writer.add_scalar(tag, v, int(step))

    def image(self, tag: str, image: Any, step: int) -> None:
        """A picture at ``step``: a PIL image or a uint8 array ``[H, W]`` / ``[H, W, C]``."""
        writer = self._open()
        if writer is None:
            return
        arr = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image)
        if arr.ndim == 2:
            arr = arr[:, :, None]
        writer.add_image(tag, np.ascontiguousarray(arr, dtype=np.uint8), int(step), dataformats="HWC")

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        """Flush and close the event file (a later write opens a new one)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _wait_for_a_new_second(log_dir: Path) -> None:
    """Sleep until the current second is later than the one in every event file name there."""
    stamps = []
    for p in log_dir.glob("events.out.tfevents.*"):
        part = p.name.split(".")[3] if p.name.count(".") >= 3 else ""
        if part.isdigit():
            stamps.append(int(part))
    if stamps:
        wait = max(stamps) + 1 - time.time()
        if wait > 0:
            time.sleep(wait)
