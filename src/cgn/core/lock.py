"""One process per output folder.

:func:`lock_dir` takes an exclusive ``flock`` on ``<folder>/.lock`` and writes the holder's pid
and command into it. A second process on the same folder (two ``cgn generate`` started at once,
two ``train-cgn --resume``) gets one clear line instead of mixing its files with the first one's.
The kernel drops the lock when its process ends, however it ends, so a lock left by a killed
process is stale by construction and never blocks a rerun; the new holder also removes the
temporary files a killed writer left behind.

Worker processes that a command starts on its own folder (``cgn reproduce mnist --jobs N``) use
the parent's lock: the parent calls :func:`share_with_children` before starting them.
"""
from __future__ import annotations

import fcntl
import os
import sys
from pathlib import Path

from cgn.errors import CGNError

LOCK_NAME = ".lock"
_ENV = "CGN_SHARED_LOCKS"       # folders whose lock the parent process holds for its workers
_held: dict[Path, int] = {}     # folder -> open file descriptor holding its lock
_created: list[Path] = []       # folders this process made to lock them


def lock_dir(folder: str | os.PathLike) -> None:
    """Lock ``folder`` (created if needed) for this process; a no-op when already held here."""
    folder = Path(folder).resolve()
    if folder in _held or str(folder) in os.environ.get(_ENV, "").split(os.pathsep):
        return
    if folder.exists() and not folder.is_dir():
        raise CGNError(f"{folder} is a file, not a folder; choose another output folder")
    if not folder.exists():
        _created.append(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as e:
        raise CGNError(f"cannot create {path} ({e.strerror}); choose a writable output folder") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise CGNError(f"{folder} is in use by {holder}; wait for it to finish or choose another "
                       "output folder") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} ({' '.join(['cgn', *sys.argv[1:]])[:300]})\n".encode(), 0)
    _held[folder] = fd
    remove_stale_temporaries(folder)


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete the ``.<name>.<random>.tmp`` files (:func:`cgn.io.atomic_write`) that a killed writer
    left in ``folder`` or its sub-folders; only the lock holder writes there, so none is live."""
    stale = [*folder.glob(".*.tmp"), *folder.glob("*/.*.tmp")]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def unlock_dir(folder: str | os.PathLike) -> None:
    fd = _held.pop(Path(folder).resolve(), None)
    if fd is not None:
        os.close(fd)  # closing the descriptor releases the flock


def share_with_children(folder: str | os.PathLike) -> None:
    """Let processes started from now on work in ``folder`` under this process's lock."""
    folder = str(Path(folder).resolve())
    shared = [p for p in os.environ.get(_ENV, "").split(os.pathsep) if p]
    if folder not in shared:
        os.environ[_ENV] = os.pathsep.join([*shared, folder])


def release_all() -> None:
    """Drop every lock this process holds (the CLI calls it when a command ends)."""
    for folder in list(_held):
        unlock_dir(folder)
    _created.clear()


def discard_unused() -> None:
    """Remove the folders this process made that hold nothing but their lock (a start that
    failed on its input), so that nothing is left behind."""
    while _created:
        folder = _created.pop()
        if folder.is_dir() and {p.name for p in folder.iterdir()} <= {LOCK_NAME}:
            unlock_dir(folder)
            (folder / LOCK_NAME).unlink(missing_ok=True)
            folder.rmdir()
