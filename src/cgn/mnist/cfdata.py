"""The MNIST counterfactual dataset on disk: shards that carry their own digests, and the reader.

Layout of ``DIR`` (written by :func:`cgn.mnist.counterfactuals.generate`)::

    manifest.json               what was generated, from which CGN (sha256), with which settings
    shard-00000.images.npy      uint8 [n, 32, 32, 3]
    shard-00000.labels.npz      shape, texture, background, seed, shape_seed (int64 [n])
    shard-00000.sha256.json     n and the sha256 of both files: written last, it marks the shard
                                complete; every reader checks the files against it

An interrupted run resumes at the first incomplete shard; a damaged shard is written again.
Shards from before digests are checked by their shape and by reading their labels.
"""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from cgn.errors import CGNError
from cgn.io import atomic_write, file_digest, read_json, save_npz_atomic, write_json_atomic

LABEL_COLUMNS = ("shape", "texture", "background", "seed", "shape_seed")  # stored per image
IMAGE_BYTES = 32 * 32 * 3 + len(LABEL_COLUMNS) * 8  # one image and its int64 columns on disk


def _shard_paths(out: Path, k: int) -> tuple[Path, Path]:
    return out / f"shard-{k:05d}.images.npy", out / f"shard-{k:05d}.labels.npz"


def _digest_path(out: Path, k: int) -> Path:
    return out / f"shard-{k:05d}.sha256.json"


# Shards this process has hashed, by their digests and their files' size and mtime: a set that is
# written, then read for training in the same process, is hashed once (3 GB for 1e6 images).
_verified: set[tuple] = set()


def _stamp(p: Path) -> tuple[int, int]:
    st = p.stat()
    return st.st_size, st.st_mtime_ns


def shard_state(out: Path, k: int, n: int) -> str:
    """``complete``, ``missing`` or ``damaged``. A shard written with digests
    (``shard-NNNNN.sha256.json``, the last file of a shard) is checked against them; an older one
    by its shape and by reading its labels."""
    img, lab = _shard_paths(out, k)
    if not (img.exists() and lab.exists()):
        return "missing"
    dig = _digest_path(out, k)
    if dig.exists():
        try:
            want = json.loads(dig.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            return "damaged"
        key = (str(img.resolve()), want.get(img.name), want.get(lab.name), _stamp(img), _stamp(lab))
        if want.get("n") == n and key in _verified:  # hashed already in this process, unchanged since
            return "complete"
        ok = want.get("n") == n and all(file_digest(p, "sha256") == want.get(p.name) for p in (img, lab))
        if ok:
            _verified.add(key)
        return "complete" if ok else "damaged"
    try:
        arr = np.load(img, mmap_mode="r", allow_pickle=False)
        with np.load(lab, allow_pickle=False) as z:
            lengths = {len(z[c]) for c in LABEL_COLUMNS}
    except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile):
        return "damaged"
    return "complete" if arr.shape == (n, 32, 32, 3) and lengths == {n} else "damaged"


def check_space(out: Path, n_left: int) -> None:
    """Refuse, before writing, a generation whose remaining images do not fit on the disk."""
    need = n_left * IMAGE_BYTES
    free = shutil.disk_usage(out).free
    if need > free:
        raise CGNError(f"{out}: {n_left:,} more images need {need / 1e9:.1f} GB, but only "
                       f"{free / 1e9:.1f} GB are free there; free space, choose another --out or a "
                       "smaller --n")


def write_shard(out: Path, k: int, images: np.ndarray, labels: dict[str, np.ndarray]) -> None:
    """Shard ``k``: images, then labels, then their digests -- written last, they mark the shard
    complete and let every reader check its bytes."""
    _digest_path(out, k).unlink(missing_ok=True)
    img_path, lab_path = _shard_paths(out, k)
    with atomic_write(img_path) as f:
        np.save(f, images)
    save_npz_atomic(lab_path, **labels)
    write_json_atomic(_digest_path(out, k), {"n": len(images), **{
        p.name: file_digest(p, "sha256") for p in (img_path, lab_path)}})


class CounterfactualSet(Dataset):
    """A generated dataset: ``images(index)`` (uint8, read row by row), the label and seed arrays
    ``labels[c]`` for ``c`` in :data:`LABEL_COLUMNS`, and the ``manifest``.

    A ``torch.utils.data.Dataset`` too: items are ``(image, label)``, the image float32
    [3, 32, 32] in [-1, 1] and the label its shape class (what a classifier learns)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        mpath = self.root / "manifest.json"
        if not mpath.is_file():
            raise CGNError(f"{self.root} is not a counterfactual dataset (no manifest.json); "
                           "create it with `cgn generate`")
        self.manifest = read_json(mpath, "counterfactual dataset manifest")
        cfg = self.manifest["config"]
        self.shards: list[_Shard] = []
        cols = {k: [] for k in LABEL_COLUMNS}
        for k in range(self.manifest["n_shards"]):
            n = min(cfg["n"], (k + 1) * cfg["shard_size"]) - k * cfg["shard_size"]
            state = shard_state(self.root, k, n)
            if state != "complete":
                raise CGNError(f"{self.root} is incomplete (shard {k} {state}); rerun the same "
                               "`cgn generate` command to resume it")
            img, lab = _shard_paths(self.root, k)
            self.shards.append(_Shard(img))
            with np.load(lab, allow_pickle=False) as z:
                for c in cols:
                    cols[c].append(z[c])
        self.labels = {c: np.concatenate(v) for c, v in cols.items()}
        self._starts = np.cumsum([0] + [s.n for s in self.shards])

    def __len__(self) -> int:
        return int(self._starts[-1])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.__getitems__([i])[0]

    def __getitems__(self, indices) -> list[tuple[torch.Tensor, int]]:
        from cgn.mnist.variants import image_items, item_positions
        idx = item_positions(indices, len(self))
        return image_items(self.images(idx), self.labels["shape"][idx])

    def __repr__(self) -> str:
        return f"CounterfactualSet({str(self.root)!r}, n={len(self)})"

    def images(self, index: np.ndarray) -> np.ndarray:
        """uint8 [len(index), 32, 32, 3] for arbitrary indices (reads only those rows)."""
        index = np.asarray(index, dtype=np.int64)
        out = np.empty((len(index), 32, 32, 3), dtype=np.uint8)
        shard = np.searchsorted(self._starts, index, side="right") - 1
        for s in np.unique(shard):
            sel = np.flatnonzero(shard == s)
            out[sel] = self.shards[s].rows(index[sel] - self._starts[s])
        return out


class _Shard:
    """One ``shard-NNNNN.images.npy`` (uint8 [n, 32, 32, 3]), read row by row with ``pread``.

    Not memory-mapped on purpose: a page of a mapping that was read stays in the process's
    resident set, and each random read maps a whole fault-around window (64 KiB) of the file, so
    an epoch of random batches over 1e6 images would make the full 3 GB resident. ``pread`` goes
    through the OS page cache (shared, reclaimable, not the process's memory) and copies only the
    rows asked for; consecutive rows are read with one call."""

    def __init__(self, path: Path):
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                           (2, 0): np.lib.format.read_array_header_2_0}.get(version)
            if read_header is None:
                raise CGNError(f"{path}: unsupported .npy version {version}; regenerate the dataset")
            shape, fortran, dtype = read_header(f)
            self.offset = f.tell()
        if dtype != np.uint8 or fortran or len(shape) != 4 or tuple(shape[1:]) != (32, 32, 3):
            raise CGNError(f"{path}: expected uint8 images [n, 32, 32, 3], found {dtype} {shape}; "
                           "regenerate the dataset with `cgn generate`")
        self.path, self.n = path, int(shape[0])
        self.row_bytes = 32 * 32 * 3
        self._fd: int | None = None
        self._pid = -1

    def _file(self) -> int:
        if self._fd is None or self._pid != os.getpid():  # a fresh descriptor in each process
            self._fd, self._pid = os.open(self.path, os.O_RDONLY), os.getpid()
        return self._fd

    def rows(self, local: np.ndarray) -> np.ndarray:
        """uint8 [len(local), 32, 32, 3]: rows ``local`` of this shard."""
        if len(local) and (local.min() < 0 or local.max() >= self.n):
            raise IndexError(f"row index out of range for {self.path} ({self.n} rows)")
        order = np.argsort(local, kind="stable")
        srt = local[order]
        out = np.empty((len(local), 32, 32, 3), dtype=np.uint8)
        fd = self._file()
        starts = np.flatnonzero(np.diff(srt, prepend=-2) != 1)  # beginnings of consecutive runs
        for a, b in zip(starts, np.append(starts[1:], len(srt))):
            buf = np.empty((b - a, 32, 32, 3), dtype=np.uint8)
            want, got = buf.nbytes, os.preadv(fd, [memoryview(buf).cast("B")], self.offset + int(srt[a]) * self.row_bytes)
            if got != want:
                raise CGNError(f"{self.path} is truncated; regenerate it with `cgn generate`")
            out[order[a:b]] = buf
        return out

    def __del__(self):
        if getattr(self, "_fd", None) is not None and self._pid == os.getpid():
            os.close(self._fd)
