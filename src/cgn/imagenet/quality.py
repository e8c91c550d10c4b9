"""Quality metrics of the ImageNet CGN: Inception Score and μ_mask.

- **Inception Score** ``IS = exp(E_x KL(p(y|x) || p(y)))``, computed on each of ``splits``
  (default 10) consecutive equal parts of the images (``p(y)`` = the part's mean prediction),
  reported as mean ± standard deviation (population std) over the parts, as in Salimans et al.
  The paper: CGN 130.2, BigGAN 202.9; the study found 2,000 images give close values.
- **μ_mask**: the mean mask value (paper: 0.3 for the CGN).

Both are registered in :mod:`cgn.core.metrics`. The classifier is pluggable (any module mapping
``[B, 3, H, W]`` images in [0, 1] to 1000 logits); the default is torchvision's Inception-v3 with
its ImageNet weights from a local file (``inception_v3_google-0cc3c7bd.pth`` in
``$CGN_HOME/weights`` or the torch hub cache, or an explicit path) or, when allowed, the usual
download. Note: the published IS numbers use the TF Inception graph; torchvision's port gives
close but not identical values. A random Inception-v3 is offered only to exercise the pipeline;
its scores mean nothing and are labelled as such.

Reference: docs/reference.md#inception-score-and-mask-mean.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cgn.core.metrics import calc_metric, check_metric_names, metric_needs, register_metric
from cgn.core.progress import progress
from cgn.errors import CGNError
from cgn.imagenet.imagefolder import read_image
from cgn.paths import cgn_home

INCEPTION_FILE = "inception_v3_google-0cc3c7bd.pth"
INCEPTION_URL = "https://download.pytorch.org/models/inception_v3_google-0cc3c7bd.pth"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".JPEG", ".webp")
FOLDER_METRICS = ("inception_score", "mu_mask")  # what evaluate_folder computes, by default all


@register_metric("inception_score", help="Inception Score of class probabilities: (mean, std) over splits")
def inception_score(probs: np.ndarray | torch.Tensor, splits: int = 10) -> tuple[float, float]:
    """probs: [N, K] rows of class probabilities (each sums to 1). Returns (mean, std).

    The N rows are cut into ``splits`` consecutive parts of ``N // splits`` rows (a remainder is
    dropped, as in the reference implementation).
    """
    p = probs.detach().cpu().double().numpy() if isinstance(probs, torch.Tensor) else np.asarray(probs, np.float64)
    if p.ndim != 2 or p.shape[0] < splits or splits < 1:
        raise CGNError(f"inception score needs [N, K] probabilities with N >= splits ({splits}); "
                       f"got shape {p.shape}")
    if (p < 0).any() or not np.allclose(p.sum(1), 1, atol=1e-4):
        raise CGNError("inception score needs probabilities (rows >= 0 summing to 1), not logits")
    size = p.shape[0] // splits
    scores = []
    for k in range(splits):
        part = p[k * size:(k + 1) * size]
        py = part.mean(0, keepdims=True)
        with np.errstate(divide="ignore", invalid="ignore"):
            kl = np.where(part > 0, part * (np.log(part) - np.log(py)), 0.0).sum(1)
        scores.append(float(np.exp(kl.mean())))
    return float(np.mean(scores)), float(np.std(scores))


@register_metric("mu_mask", help="mean mask value over all pixels and images")
def mu_mask(masks: torch.Tensor | np.ndarray | Iterable) -> float:
    """Mean mask value; masks in [0, 1] ([N, 1, H, W] or any shape), or an iterable of such."""
    if isinstance(masks, (torch.Tensor, np.ndarray)):
        return float(torch.as_tensor(masks).double().mean())
    total, count = 0.0, 0
    for m in masks:
        t = torch.as_tensor(m).double()
        total += float(t.sum())
        count += t.numel()
    if count == 0:
        raise CGNError("mu_mask: no masks given")
    return total / count


# --------------------------------------------------------------------------------------------
# Classifier
# --------------------------------------------------------------------------------------------

class ImageNetClassifier(nn.Module):
    """Wraps a 1000-way network: [0, 1] images → resize → ImageNet normalisation → logits."""

    def __init__(self, net: nn.Module, input_size: int = 299, description: str = ""):
        super().__init__()
        self.net = net.eval()
        self.input_size = input_size
        self.description = description
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.input_size or x.shape[-2] != self.input_size:
            x = F.interpolate(x, (self.input_size, self.input_size), mode="bilinear", align_corners=False)
        out = self.net((x - self.mean) / self.std)
        return out.logits if hasattr(out, "logits") else out


def load_inception(source: str = "auto", allow_download: bool = False) -> ImageNetClassifier:
    """torchvision Inception-v3: ``imagenet`` (local file or, if allowed, download), ``random``
    (pipeline checks only), ``auto`` (imagenet if available, else an error), or a file path."""
    from torchvision.models import inception_v3

    def build() -> nn.Module:
        # transform_input=True: the torchvision weights expect it (ImageNet-normalised input is
        # re-mapped to the [-1, 1] scaling the Google weights were trained with).
        return inception_v3(weights=None, aux_logits=True, transform_input=True, init_weights=False)

    if source == "random":
        torch.manual_seed(0)
        net = inception_v3(weights=None, aux_logits=True, transform_input=True, init_weights=True)
        return ImageNetClassifier(net, description="inception-v3 RANDOM weights (not a quality measure)")
    path: Path | None = None
    if source not in ("auto", "imagenet"):
        path = Path(source).expanduser()
        if not path.is_file():
            raise CGNError(f"Inception weights {path} do not exist; give the torchvision file "
                           f"{INCEPTION_FILE} or use --classifier imagenet with the download allowed")
    else:
        cands = [cgn_home() / "weights" / INCEPTION_FILE, Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE]
        path = next((p for p in cands if p.is_file()), None)
    if path is not None:
        from cgn.core.checkpoint import load_state_dict_strict, torch_load
        net = build()
        load_state_dict_strict(net, torch_load(path, what="Inception-v3 weights"), f"Inception weights {path}")
        from cgn.io import file_digest
        kind = "torchvision ImageNet" if path.name == INCEPTION_FILE else "weights from"
        return ImageNetClassifier(net, description=f"inception-v3 {kind} {path} "
                                                   f"(sha256 {file_digest(path)[:16]})")
    if allow_download:
        state = torch.hub.load_state_dict_from_url(INCEPTION_URL, progress=False, check_hash=True,
                                                   map_location="cpu", weights_only=True)
        net = build()
        net.load_state_dict(state)
        return ImageNetClassifier(net, description="inception-v3 torchvision ImageNet (download)")
    raise CGNError(f"Inception-v3 ImageNet weights not found; put {INCEPTION_FILE} into "
                   f"{cgn_home() / 'weights'} (cgn download inception-v3), pass a file with "
                   "--classifier, or allow the download with --download")


@torch.no_grad()
def class_probabilities(images: Iterable[torch.Tensor], classifier: Callable[[torch.Tensor], torch.Tensor],
                        device: torch.device | str = "cpu", total: int | None = None) -> np.ndarray:
    """Softmax of the classifier over batches of [B, 3, H, W] images in [0, 1] → [N, 1000]."""
    out = []
    for x in progress(images, total=total, desc="classifying"):
        out.append(torch.softmax(classifier(x.to(device)).double(), dim=1).cpu())
    if not out:
        raise CGNError("no images to classify")
    return torch.cat(out).numpy()


# --------------------------------------------------------------------------------------------
# Folders
# --------------------------------------------------------------------------------------------

def folder_images(folder: str | os.PathLike) -> list[Path]:
    """Image files of a generated folder, sorted, excluding ``masks/``."""
    root = Path(folder)
    if not root.is_dir():
        raise CGNError(f"{root} is not a folder of generated images")
    files = sorted(p for p in root.rglob("*") if p.suffix in IMAGE_SUFFIXES and p.is_file()
                   and "masks" not in p.relative_to(root).parts)
    if not files:
        raise CGNError(f"{root} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return files


def _load_rgb(path: Path) -> torch.Tensor:
    arr = np.asarray(read_image(path), dtype=np.uint8).copy()
    return torch.from_numpy(arr).permute(2, 0, 1).float() / 255


def _load_mask(path: Path) -> np.ndarray:
    return np.asarray(read_image(path, "L"), dtype=np.float64) / 255


def iter_batches(files: Sequence[Path], batch_size: int) -> Iterable[torch.Tensor]:
    for i in range(0, len(files), batch_size):
        imgs = [_load_rgb(p) for p in files[i:i + batch_size]]
        if len({t.shape for t in imgs}) > 1:
            imgs = [F.interpolate(t[None], imgs[0].shape[-2:], mode="bilinear", align_corners=False)[0]
                    for t in imgs]
        yield torch.stack(imgs)


@dataclass
class FolderQuality:
    n_images: int
    inception_score: tuple[float, float] | None
    mu_mask: float | None
    n_masks: int
    classifier: str

    def as_dict(self) -> dict:
        d = {"n_images": self.n_images, "classifier": self.classifier, "n_masks": self.n_masks}
        if self.inception_score is not None:
            d["inception_score"] = {"mean": self.inception_score[0], "std": self.inception_score[1]}
        if self.mu_mask is not None:
            d["mu_mask"] = self.mu_mask
        return d


def needs_classifier(metrics: Sequence[str]) -> bool:
    """Whether any of ``metrics`` needs class probabilities, i.e. a classifier to be loaded."""
    return any("probs" in metric_needs(m) for m in metrics)


def evaluate_folder(folder: str | os.PathLike, *, classifier: nn.Module | None = None,
                    classifier_description: str = "", metrics: Sequence[str] = FOLDER_METRICS,
                    splits: int = 10, limit: int | None = None, batch_size: int = 50,
                    device: torch.device | str = "cpu") -> FolderQuality:
    """IS over the folder's images and μ_mask over its ``masks/`` (when present)."""
    metrics = check_metric_names(metrics, FOLDER_METRICS, "folder quality")
    files = folder_images(folder)[:limit]
    needs = {need for name in metrics for need in metric_needs(name)}
    mask_files = (sorted(p for p in Path(folder).rglob("*.png") if p.parent.name == "masks")[:limit]
                  if "masks" in needs else [])

    def probs() -> np.ndarray:
        if classifier is None:
            raise CGNError("the Inception Score needs a classifier")
        clf = classifier.to(device).eval()
        return class_probabilities(iter_batches(files, batch_size), clf, device,
                                   total=-(-len(files) // batch_size))

    def masks() -> Iterable[np.ndarray] | None:
        if not mask_files and needs == {"masks"}:  # nothing else asked for
            raise CGNError(f"{folder} has no masks/ folder; generate with --save-masks")
        return (_load_mask(p) for p in mask_files) if mask_files else None

    inputs = {"probs": probs, "masks": masks}
    values = {}
    for name in metrics:
        data = {need: inputs[need]() for need in metric_needs(name)}
        if all(v is not None for v in data.values()):  # no masks: no μ_mask
            values[name] = calc_metric(name, splits=splits, **data)
    return FolderQuality(len(files), values.get("inception_score"), values.get("mu_mask"),
                         len(mask_files) if "mu_mask" in values else 0, classifier_description)
