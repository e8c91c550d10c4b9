"""Where the ImageNet CGN's pretrained weights come from.

``--biggan``, ``--u2net``, ``--cgn`` (and ``--vgg16`` for the style losses) take local paths.
Without one, the file that ``cgn download <asset>`` puts under ``cgn_home()`` is used when it is
there; otherwise the command says which asset to download. Random weights are used only where
asked for explicitly (``--random-init``, or the ``tiny`` preset), and every run records which
weights it used.
"""

from __future__ import annotations

from pathlib import Path

from cgn.download import download_root, get_asset
from cgn.errors import CGNError

# option -> (asset name, the path inside the asset that the option takes)
WEIGHT_ASSETS = {
    "biggan": ("biggan-deep-256", "weights/biggan-deep-256"),
    "u2net": ("u2net", "weights/u2net.pth"),
    "cgn": ("cgn-imagenet", "weights/cgn.pth"),
    "vgg16": ("vgg16", "weights/vgg16-397923af.pth"),
    "fixed_noise": ("imagenet-sheet-noise", "weights/imagenet_u_fixed.pth"),
    "inception_tf": ("inception-tf", "weights/weights-inception-2015-12-05-6726825d.pth"),
}


def default_weight_path(kind: str, directory: str | None = None) -> Path:
    asset, rel = WEIGHT_ASSETS[kind]
    get_asset(asset)  # the registry must know it
    return download_root(directory) / rel


def resolve_weight(value: str | None, kind: str, *, required: bool,
                   directory: str | None = None) -> str:
    """An explicit path (must exist), else the downloaded default (if present), else "" when
    not ``required``; a required weight that is nowhere raises a one-line CGNError."""
    if value:
        p = Path(value).expanduser()
        if not p.exists():
            raise CGNError(f"--{kind} {p} does not exist; give the path of the file/folder or run "
                           f"`cgn download {WEIGHT_ASSETS[kind][0]}`")
        return str(p)
    d = default_weight_path(kind, directory)
    if d.exists():
        return str(d)
    if required:
        raise CGNError(f"no {kind} weights: pass --{kind} PATH, or run `cgn download "
                       f"{WEIGHT_ASSETS[kind][0]}` (expected at {d}); --random-init trains from "
                       "random weights (pipeline checks only)")
    return ""
