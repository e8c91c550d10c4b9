"""Device selection: ``auto`` picks CUDA when present, else the CPU. Never hard-coded."""

from __future__ import annotations

import torch

from cgn.errors import CGNError


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise CGNError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CGNError(f"device {name!r} asked for, but no CUDA GPU is visible; use --device cpu")
    return dev
