"""Atomic file writes, digests and small JSON helpers.

Every file cgn writes goes through :func:`atomic_write`: the content lands in a temporary file in
the same folder and is renamed into place, so an interrupted run never leaves a half-written
file behind and never clobbers a good one.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np


_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[Any]:
    """Open a temporary sibling of ``path`` for writing; rename it over ``path`` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the file the usual permissions
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_write(path, "wb") as f:
        f.write(data)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_write(path, "w") as f:
        f.write(text)


def portable_paths(value: Any) -> Any:
    """``value`` (a config or record) with each absolute path cut to its last part: a shipped
    file names no folder of the machine it was made on."""
    if isinstance(value, dict):
        return {k: portable_paths(v) for k, v in value.items()}
    if isinstance(value, list):
        return [portable_paths(v) for v in value]
    return Path(value).name if isinstance(value, str) and os.path.isabs(value) else value


def finite_json(obj: Any) -> Any:
    """``obj`` with every NaN / infinity replaced by ``None``: JSON has no such numbers, and a
    file holding them (Python's ``NaN``) is not valid JSON for any other reader."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_json(v) for v in obj]
    return obj


def read_json(path: str | os.PathLike, what: str = "file") -> Any:
    """A JSON file cgn wrote (manifest, config, results); a damaged one is a :class:`CGNError`."""
    from cgn.errors import CGNError
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CGNError(f"{what} {path} does not exist; check the path") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CGNError(f"{what} {path} is damaged (not valid JSON); restore it, or start again in "
                       "another output folder") from None


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    write_text_atomic(path, json.dumps(finite_json(obj), indent=2, sort_keys=False) + "\n")


def append_jsonl(path: str | os.PathLike, record: dict) -> None:
    """Append one JSON line (a single small write; lines are never rewritten)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(finite_json(record)) + "\n")


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """The records of a JSON-lines file. A last line without its newline is an append that was
    cut off (kill -9, full disk) and is dropped; a damaged line elsewhere is a :class:`CGNError`."""
    from cgn.errors import CGNError
    path = Path(path)
    if not path.exists():
        return []
    text = path.read_text(errors="replace")
    lines = text.split("\n")
    if not text.endswith("\n"):
        lines = lines[:-1]  # the unfinished append (or "" for an empty file)
    out = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            raise CGNError(f"{path}: line {i} is not valid JSON (the file is damaged); repair or "
                           "delete that line, or start a new run") from None
    return out


def save_npz_atomic(path: str | os.PathLike, compress: bool = False, **arrays: np.ndarray) -> None:
    """Write an ``.npz`` atomically (numpy appends ``.npz`` to bare names; we never do)."""
    buf = io.BytesIO()
    (np.savez_compressed if compress else np.savez)(buf, **arrays)
    write_bytes_atomic(path, buf.getvalue())


def file_digest(path: str | os.PathLike, algo: str = "sha256", chunk: int = 1 << 20) -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
