"""Pretrained MNIST CGNs shipped with cgn, and the small weights-only format they use.

A shipped CGN is a cgn checkpoint of kind ``mnist-cgn-weights``: the generator's state dict in
float16 (BatchNorm counters stay integers), the resolved training config, and a provenance
record (the command, the steps, the style features, the shape judge and the OOD accuracy it
gave). No optimiser, discriminator or RNG state, so it is about 1.3 MB instead of 8 MB. It loads
wherever a checkpoint is taken, by file or by name::

    cgn sample --cgn colored-mnist --shape 3 --texture 7 --background 1 --out cf.npz
    cgn generate --cgn wildlife-mnist --n 1e5 --out cf/
    cgn reproduce mnist --cgn pretrained
    cgn.load_cgn("double-colored-mnist")

Files live in the package (``cgn/mnist/weights/``) and their sha256 is written below: a file
that does not match is refused before it is unpickled.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from cgn.errors import CGNError
from cgn.io import portable_paths

WEIGHTS_KIND = "mnist-cgn-weights"
WEIGHTS_DIR = Path(__file__).with_name("weights")


@dataclass(frozen=True)
class ShippedCGN:
    name: str      # the dataset it was trained on, which is also its name
    file: str      # file name in WEIGHTS_DIR
    sha256: str
    # OOD test accuracy (%) of the paper's classifier on real + counterfactuals of this file,
    # and the command that measured it (recorded here, since the file cannot hold its own result)
    ood_accuracy: float | None = None
    ood_command: str = ""


# Filled in by scripts/ship_pretrained.py, which exports a finished run and prints this entry.
SHIPPED: dict[str, ShippedCGN] = {
    # 28,000 steps of the recipe with an EMA of the generator (39 min on 2 AMX cores; 96.96 % OOD
    # with 1e6 counterfactuals from its float32 checkpoint); recorded: the README's main job
    "colored-mnist": ShippedCGN("colored-mnist", "colored-mnist.pt",
                                "88d5bc2048cce3ef108c15696d1c6b56701ff3ea67d7a84491ba973da786628a",
                                ood_accuracy=96.09, ood_command="cgn reproduce mnist --quick --out runs/quick"),
    # 24,000 steps of the recipe with an EMA of the generator (45 min on 2 AMX cores)
    "double-colored-mnist": ShippedCGN("double-colored-mnist", "double-colored-mnist.pt",
                                       "5b4f9f41fca9616cd0907d5bdf5e89614246466513c11e43b971ffe17ac0f073",
                                       ood_accuracy=90.25, ood_command="cgn reproduce mnist --dataset double-colored-mnist --cgn pretrained --size 1e6 "
                                       "--train-set real+cf --out runs/pretrained-double-colored-mnist"),
    # 15,000 steps of the recipe with an EMA of the generator (46 min on 2 AMX cores), the DTD textures
    "wildlife-mnist": ShippedCGN("wildlife-mnist", "wildlife-mnist.pt",
                                 "170f3874cb1480fdf6cba2e2f5cfd14cf7dd72c80b0c922dda393d7fabfaa8df",
                                 ood_accuracy=85.89, ood_command="cgn reproduce mnist --dataset wildlife-mnist --cgn pretrained --size 1e6 "
                                 "--train-set real+cf --textures data/textures --out runs/pretrained-wildlife-mnist"),
}


def names() -> list[str]:
    return sorted(SHIPPED)


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def shipped_path(name: str, registry: dict[str, ShippedCGN] | None = None,
                 directory: Path | None = None) -> Path:
    """The verified file of the shipped CGN ``name`` (a one-line error for an unknown name, a
    missing file or a file whose sha256 differs from the one recorded in code)."""
    registry = SHIPPED if registry is None else registry
    directory = WEIGHTS_DIR if directory is None else directory
    entry = registry.get(name)
    if entry is None:
        known = ", ".join(sorted(registry)) or "none in this installation"
        raise CGNError(f"no pretrained CGN named {name!r} (shipped: {known}); give a checkpoint file instead")
    path = directory / entry.file
    if not path.is_file():
        raise CGNError(f"the pretrained CGN {name!r} ({path}) is missing from this installation; "
                       "reinstall cgn")
    digest = file_sha256(path)
    if digest != entry.sha256:
        raise CGNError(f"the pretrained CGN file {path} is damaged (sha256 {digest[:16]}…, expected "
                       f"{entry.sha256[:16]}…); reinstall cgn")
    return path


def resolve(spec: str | os.PathLike, registry: dict[str, ShippedCGN] | None = None,
            directory: Path | None = None) -> Path:
    """A checkpoint path for ``spec``: an existing file as it is, otherwise a shipped name."""
    path = Path(spec)
    if path.exists() or os.sep in str(spec) or str(spec).endswith((".pt", ".pth")):
        return path
    return shipped_path(str(spec), registry, directory)


def export_weights(checkpoint: str | os.PathLike, out: str | os.PathLike, *, provenance: dict,
                   dtype: torch.dtype = torch.float16) -> dict:
    """Write the weights-only file of a ``cgn train-cgn`` checkpoint; return what was written
    (sha256, bytes, the largest absolute change the cast made to any weight)."""
    from cgn.core.checkpoint import load_checkpoint, save_checkpoint
    from cgn.mnist.model import CHECKPOINT_KIND

    ckpt = load_checkpoint(checkpoint, kind=(CHECKPOINT_KIND, WEIGHTS_KIND))
    state = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in ckpt["model"].items()}
    cast_error = max(float((state[k].float() - v.float()).abs().max()) for k, v in ckpt["model"].items()
                     if v.is_floating_point())
    extra = {"feature_extractor": ckpt.get("extra", {}).get("feature_extractor", ""),
             "provenance": {**provenance, "weights_dtype": str(dtype).replace("torch.", ""),
                            "source_step": int(ckpt["step"])}}
    save_checkpoint(out, kind=WEIGHTS_KIND, step=ckpt["step"], config=portable_paths(ckpt["config"]), model=state,
                    extra=extra)
    return {"sha256": file_sha256(out), "bytes": Path(out).stat().st_size, "max_cast_error": cast_error}


def provenance(name: str) -> dict:
    """How the shipped CGN ``name`` was made (the record stored in its file) and the OOD accuracy
    measured with it (recorded in :data:`SHIPPED`)."""
    from cgn.core.checkpoint import load_checkpoint
    record = load_checkpoint(shipped_path(name), kind=WEIGHTS_KIND).get("extra", {}).get("provenance", {})
    entry = SHIPPED[name]
    return {**record, "ood_accuracy": entry.ood_accuracy, "ood_command": entry.ood_command}
