"""The authors' MNIST CGN checkpoints, loaded strictly into :class:`cgn.mnist.model.MnistCGN`.

The released files (``{colored,double_colored,wildlife}_mnist.pth``) are plain state dicts saved
from a GPU, with keys

    label_emb.weight                  the shared label embedding
    f_shape.<i>.*                     the shape mechanism           -> shape.layers.<i>.*
    f_text1.<i>.*                     the texture mechanism         -> texture.layers.<i>.*
    f_text2.<i>.*                     the background mechanism      -> background.layers.<i>.*

Our mechanisms keep the authors' layer order, so only the prefixes change. BatchNorm entries
carry running statistics (used in eval mode). Every key and every shape must match: anything
missing, extra or mis-shaped is a :class:`CGNError` naming the problem.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from cgn.core.checkpoint import FORMAT, torch_load
from cgn.errors import CGNError, warn
from cgn.io import file_digest
from cgn.mnist.config import ModelConfig
from cgn.mnist.model import MnistCGN

PREFIXES = {  # authors' prefix -> ours
    "label_emb.": "label_emb.",
    "f_shape.": "shape.layers.",
    "f_text1.": "texture.layers.",
    "f_text2.": "background.layers.",
}

# md5 of the released files (data/cgn_reference/README): name -> dataset
KNOWN_MD5 = {
    "6711f40b8c984b0b5221c0104ff14e10": "colored-mnist",
    "1fc47ee2b93cb9d0f7fb29ff0b2dbffa": "double-colored-mnist",
    "eaff11c34cac57ca23f406904e4237b4": "wildlife-mnist",
}
# The release's file names: a file with one of these names and another digest is damaged.
RELEASED_NAMES = {"colored_mnist.pth": "colored-mnist",
                  "double_colored_mnist.pth": "double-colored-mnist",
                  "wildlife_mnist.pth": "wildlife-mnist"}


def check_reference_digest(path: Path) -> tuple[str, str]:
    """(md5, dataset) of an authors' file, checked before anything is unpickled: a released file
    name with another digest is damaged (an error); any other unknown file loads with a warning."""
    if not path.is_file():
        raise CGNError(f"reference checkpoint {path} does not exist; check the path")
    md5 = file_digest(path, "md5")
    dataset = KNOWN_MD5.get(md5)
    if dataset is None and path.name in RELEASED_NAMES:
        expected = next(k for k, v in KNOWN_MD5.items() if v == RELEASED_NAMES[path.name])
        raise CGNError(f"{path} is damaged: md5 {md5}, the released {path.name} has {expected}; "
                       f"download it again (cgn download)")
    if dataset is None:
        warn(f"{path} is not one of the authors' released MNIST CGNs (md5 {md5}); loading it "
             "unchecked")
    return md5, dataset or "unknown"


def is_reference_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` holds one of the authors' plain state dicts rather than a cgn checkpoint:
    a released file name or digest, or else a file without the cgn checkpoint header. A file
    that cannot be read counts as a cgn checkpoint, whose loader then names the problem."""
    path = Path(path)
    if path.name in RELEASED_NAMES or (path.is_file() and file_digest(path, "md5") in KNOWN_MD5):
        return True
    try:
        state = torch_load(path)
    except CGNError:
        return False
    return not (isinstance(state, dict) and state.get("format") == FORMAT)


def from_reference(state: dict[str, torch.Tensor], source: str = "state dict") -> dict[str, torch.Tensor]:
    """Rename the authors' keys to ours; unknown prefixes are an error."""
    out = {}
    for key, value in state.items():
        for theirs, ours in PREFIXES.items():
            if key.startswith(theirs):
                out[ours + key[len(theirs):]] = value
                break
        else:
            raise CGNError(f"{source}: key {key!r} is not part of the authors' MNIST CGN layout "
                           f"(expected prefixes {', '.join(PREFIXES)}); is this an MNIST CGN file?")
    return out


def to_reference(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our state dict with the authors' key names (loads into their code)."""
    out = {}
    for key, value in state.items():
        for theirs, ours in PREFIXES.items():
            if key.startswith(ours):
                out[theirs + key[len(ours):]] = value
                break
        else:
            raise ValueError(f"key {key!r} has no counterpart in the authors' layout")
    return out


def load_reference(path: str | os.PathLike, cfg: ModelConfig | None = None) -> tuple[MnistCGN, dict]:
    """Load one of the authors' MNIST CGN state dicts; returns (model in eval mode, info)."""
    path = Path(path)
    md5, dataset = check_reference_digest(path)
    state = torch_load(path, what="reference checkpoint")
    if isinstance(state, dict) and state.get("format") == FORMAT:
        raise CGNError(f"{path} is a cgn checkpoint, not the authors' format; drop --reference-format")
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise CGNError(f"{path} is not a plain state dict (name -> tensor); the authors' MNIST "
                       "CGN files are, e.g. double_colored_mnist.pth")
    model = MnistCGN(cfg or ModelConfig())
    state = {k: v.to("cpu") for k, v in from_reference(state, str(path)).items()}
    model.load_weights(state, f"reference checkpoint {path}")
    info = {"format": "reference", "path": str(path), "md5": md5, "dataset": dataset}
    return model.eval(), info
