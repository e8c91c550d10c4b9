"""Self-describing checkpoints.

A checkpoint is a dict saved with ``torch.save`` and always loaded with ``weights_only=True``::

    {"format": "cgn-checkpoint", "version": <cgn version>, "kind": "mnist-cgn" | ...,
     "step": int, "config": {...resolved config...}, "model": state_dict,
     "optim": {name: optimizer state_dict}, "rng": {...}, "extra": {...},
     "digest": sha256 of everything above}

Writes are atomic (temporary file + rename), so an interrupted save never corrupts the last
good checkpoint. ``digest`` (:func:`state_digest`: every key, tensor dtype, shape and byte, and
every other value) is checked on load, so a damaged file is an error instead of a silently
different model; files written before digests existed load with a warning.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from cgn import __version__
from cgn.errors import CGNError, warn
from cgn.io import write_bytes_atomic

FORMAT = "cgn-checkpoint"


def state_digest(obj: Any) -> str:
    """sha256 over a nested structure of dicts, lists, tensors and plain values (keys in order,
    tensors by dtype, shape and bytes): the same state gives the same digest on any machine."""
    h = hashlib.sha256()

    def walk(o: Any) -> None:
        if isinstance(o, torch.Tensor):
            t = o.detach().cpu().contiguous()
            h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(o, dict):
            h.update(f"D{len(o)}".encode())
            for k, v in o.items():
                h.update(json.dumps(k if isinstance(k, (str, int, float, bool)) or k is None
                                    else repr(k)).encode())
                walk(v)
        elif isinstance(o, (list, tuple)):
            h.update(f"L{len(o)}".encode())
            for v in o:
                walk(v)
        else:
            h.update(f"V{type(o).__name__}:{o!r}".encode())

    walk(obj)
    return h.hexdigest()


def save_checkpoint(path: str | os.PathLike, *, kind: str, step: int, config: dict,
                    model: dict, optim: dict | None = None, rng: dict | None = None,
                    extra: dict | None = None) -> None:
    payload = {"format": FORMAT, "version": __version__, "kind": kind, "step": int(step),
               "config": config, "model": model, "optim": optim or {}, "rng": rng or {},
               "extra": extra or {}}
    payload["digest"] = state_digest(payload)
    buf = io.BytesIO()
    torch.save(payload, buf)
    write_bytes_atomic(path, buf.getvalue())


def torch_load(path: str | os.PathLike, what: str = "checkpoint") -> Any:
    """``torch.load(..., weights_only=True, map_location='cpu')`` with one-line errors."""
    path = Path(path)
    if not path.is_file():
        raise CGNError(f"{what} {path} does not exist; check the path")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "GLOBAL" in str(e):  # the weights-only unpickler met a class or function
            raise CGNError(f"{what} {path} holds Python objects other than tensors and plain values, "
                           "so it was not loaded (unpickling them could run code); re-save it as a "
                           "state dict, or use a file from a source you trust that cgn can read") from None
        raise CGNError(f"{what} {path} is not a readable PyTorch file; it may be truncated or "
                       "corrupt: re-create or re-download it") from None
    except (zipfile.BadZipFile, RuntimeError, EOFError, ValueError, AttributeError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CGNError(f"{what} {path} is not a readable PyTorch file ({first[:160]}); "
                       "it may be truncated or corrupt: re-create or re-download it") from None


def load_checkpoint(path: str | os.PathLike, kind: str | tuple[str, ...] | None = None) -> dict:
    """Load a cgn checkpoint; check its format and (optionally) its kind."""
    ckpt = torch_load(path)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CGNError(f"{path} is not a cgn checkpoint (no '{FORMAT}' header); "
                       "for the authors' files use the option that loads the reference format")
    missing = [k for k in ("kind", "step", "config", "model") if k not in ckpt]
    if missing:
        raise CGNError(f"{path} is a damaged cgn checkpoint (no {', '.join(missing)}); "
                       "re-create it or resume from another checkpoint")
    stored = ckpt.pop("digest", None)
    if stored is None:
        warn(f"{path} carries no digest (written by an older cgn); its contents cannot be checked")
    elif state_digest(ckpt) != stored:
        raise CGNError(f"{path} is damaged: its contents do not match the digest stored in it; "
                       "re-create it, resume from another checkpoint or re-download it")
    kinds = (kind,) if isinstance(kind, str) else kind
    if kinds and ckpt.get("kind") not in kinds:
        raise CGNError(f"{path} holds a '{ckpt.get('kind')}' checkpoint, but a "
                       f"{' or '.join(repr(k) for k in kinds)} checkpoint is needed here")
    return ckpt


def load_state_dict_strict(module: torch.nn.Module, state: dict, source: str) -> None:
    """``load_state_dict(strict=True)`` that reports missing/unexpected/mis-shaped keys in one line."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
              if k in state and hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s) e.g. {missing[:3]}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s) e.g. {unexpected[:3]}")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatch(es) e.g. {shapes[:2]}")
        raise CGNError(f"{source} does not fit this model: {'; '.join(parts)}; "
                       "check that the file and the chosen preset/architecture match")
    module.load_state_dict(state, strict=True)
