"""Self-describing checkpoints.

A checkpoint is a dict saved with ``torch.save`` and always loaded with ``weights_only=True``::

    {"format": "cgn-checkpoint", "version": <cgn version>, "kind": "mnist-cgn" | ...,
     "step": int, "config": {...resolved config...}, "model": state_dict,
     "optim": {name: optimizer state_dict}, "rng": {...}, "extra": {...}}

Writes are atomic (temporary file + rename), so an interrupted save never corrupts the last
good checkpoint.
"""

from __future__ import annotations

import io
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from cgn import __version__
from cgn.errors import CGNError
from cgn.io import write_bytes_atomic

FORMAT = "cgn-checkpoint"


def save_checkpoint(path: str | os.PathLike, *, kind: str, step: int, config: dict,
                    model: dict, optim: dict | None = None, rng: dict | None = None,
                    extra: dict | None = None) -> None:
    payload = {"format": FORMAT, "version": __version__, "kind": kind, "step": int(step),
               "config": config, "model": model, "optim": optim or {}, "rng": rng or {},
               "extra": extra or {}}
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
    except (pickle.UnpicklingError, zipfile.BadZipFile, RuntimeError, EOFError, ValueError,
            AttributeError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CGNError(f"{what} {path} is not a readable PyTorch file ({first[:160]}); "
                       "it may be truncated or corrupt: re-create or re-download it") from None


def load_checkpoint(path: str | os.PathLike, kind: str | tuple[str, ...] | None = None) -> dict:
    """Load a cgn checkpoint; check its format and (optionally) its kind."""
    ckpt = torch_load(path)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CGNError(f"{path} is not a cgn checkpoint (no '{FORMAT}' header); "
                       "for the authors' files use the option that loads the reference format")
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
