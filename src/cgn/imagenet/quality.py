"""Quality metrics of the ImageNet CGN: Inception Score, FID and μ_mask.

- **Inception Score** ``IS = exp(E_x KL(p(y|x) || p(y)))``, computed on each of ``splits``
  (default 10) consecutive equal parts of the images (``p(y)`` = the part's mean prediction),
  reported as mean ± standard deviation (population std) over the parts, as in Salimans et al.
  The paper: CGN 130.2, BigGAN 202.9; the study found 2,000 images give close values.
- **FID** against a reference folder or its cached statistics (:mod:`cgn.imagenet.fid`).
- **μ_mask**: the mean mask value (paper: 0.3 for the CGN).

All are registered in :mod:`cgn.core.metrics`. The network is pluggable (any module mapping
``[B, 3, H, W]`` images in [0, 1] to logits; for FID also ``features_and_logits``). Two are
built in (:func:`load_extractor`):

- ``tf`` (the default): the TF Inception graph of 2015-12-05 that the published IS and FID
  numbers use (:mod:`cgn.imagenet.inception_tf`; torch-fidelity's weight file);
- ``torchvision``: torchvision's Inception-v3 with its ImageNet weights
  (``inception_v3_google-0cc3c7bd.pth``), another network whose IS/FID differ from the
  published ones.

Weights come from a local file (``$CGN_HOME/weights``, the torch hub cache, or a path) or, when
allowed, the usual download. Random weights are offered only to exercise the pipeline; their
scores mean nothing and are labelled as such.

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
from cgn.errors import CGNError, warn
from cgn.imagenet.fid import GaussianStats, check_same_extractor, load_stats  # registers "fid"
from cgn.imagenet.imagefolder import read_image
from cgn.paths import cgn_home

INCEPTION_FILE = "inception_v3_google-0cc3c7bd.pth"
INCEPTION_URL = "https://download.pytorch.org/models/inception_v3_google-0cc3c7bd.pth"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".JPEG", ".webp")
FOLDER_METRICS = ("inception_score", "mu_mask")  # what evaluate_folder computes by default
FOLDER_OPTIONAL = ("fid",)                        # on request (it needs a reference)
EXTRACTORS = ("tf", "torchvision", "world")       # load_extractor's kinds; the first is the default


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

    def __init__(self, net: nn.Module, input_size: int = 299, description: str = "", identity: str = ""):
        super().__init__()
        self.net = net.eval()
        self.input_size = input_size
        self.description = description
        self.identity = identity
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.input_size or x.shape[-2] != self.input_size:
            x = F.interpolate(x, (self.input_size, self.input_size), mode="bilinear", align_corners=False)
        out = self.net((x - self.mean) / self.std)
        return out.logits if hasattr(out, "logits") else out

    def features_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the 2048-d output of the network's global average pool, the logits)."""
        pool = getattr(self.net, "avgpool", None)
        if pool is None:
            raise CGNError("this classifier has no avgpool layer to take FID features from")
        seen = []
        handle = pool.register_forward_hook(lambda _m, _i, out: seen.append(out.flatten(1)))
        try:
            logits = self(x)
        finally:
            handle.remove()
        return seen[-1], logits


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
        return ImageNetClassifier(net, description="inception-v3 RANDOM weights (not a quality measure)",
                                  identity="inception-torchvision random seed 0")
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
        digest = file_digest(path)
        return ImageNetClassifier(net, description=f"inception-v3 {kind} {path} (sha256 {digest[:16]})",
                                  identity=f"inception-torchvision sha256:{digest}")
    if allow_download:  # into torch hub's cache, its sha256 prefix checked; then loaded from there
        target = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE
        target.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(INCEPTION_URL, str(target), hash_prefix=INCEPTION_FILE[-12:-4],
                                       progress=False)
        return load_inception(str(target))
    raise CGNError(f"Inception-v3 ImageNet weights not found; put {INCEPTION_FILE} into "
                   f"{cgn_home() / 'weights'} (cgn download inception-v3), pass a file with "
                   "--classifier, or allow the download with --download")


def load_extractor(kind: str = EXTRACTORS[0], source: str = "auto", allow_download: bool = False) -> nn.Module:
    """The Inception network of ``kind`` (``tf``: the TF graph of the published IS/FID numbers;
    ``torchvision``; ``world``: a world classifier), its weights from ``source`` (``auto``,
    ``random`` or a file path; ``world``: the file only)."""
    if kind == "tf":
        from cgn.imagenet.inception_tf import load_tf_inception
        return load_tf_inception(source, allow_download)
    if kind == "torchvision":
        return load_inception(source, allow_download)
    if kind == "world":  # a world's classifier (cgn imagenet pretrain judges); source: its file
        from cgn.imagenet.world_judges import load_world_inception
        return load_world_inception(source)
    raise CGNError(f"unknown Inception {kind!r}; choose from {', '.join(EXTRACTORS)}")


@torch.no_grad()
def class_probabilities(images: Iterable[torch.Tensor], classifier: Callable[[torch.Tensor], torch.Tensor],
                        device: torch.device | str = "cpu", total: int | None = None) -> np.ndarray:
    """Softmax of the classifier over batches of [B, 3, H, W] images in [0, 1] → [N, K]."""
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


def _image_groups(files: Sequence[Path], batch_size: int) -> Iterable[torch.Tensor]:
    """Batches of images; a batch whose images differ in size goes one image at a time, so
    that each is resized by the network's own preprocessing (as the reference tools do)."""
    for i in range(0, len(files), batch_size):
        imgs = [_load_rgb(p) for p in files[i:i + batch_size]]
        if len({t.shape for t in imgs}) == 1:
            yield torch.stack(imgs)
        else:
            yield from (t[None] for t in imgs)


@torch.no_grad()
def network_outputs(files: Sequence[Path], net: nn.Module, *, features: bool, batch_size: int = 50,
                    device: torch.device | str = "cpu", desc: str = "classifying"
                    ) -> tuple[np.ndarray, np.ndarray | None]:
    """(class probabilities [N, K], pool features [N, D] or None) of image files, in one pass."""
    if features and not hasattr(net, "features_and_logits"):
        raise CGNError("FID needs pool features, and this classifier has no features_and_logits; "
                       "use --inception tf or torchvision")
    net = net.to(device).eval()
    probs, feats = [], []
    for x in progress(_image_groups(files, batch_size), total=-(-len(files) // batch_size), desc=desc):
        x = x.to(device)
        if features:
            f, logits = net.features_and_logits(x)
            feats.append(f.double().cpu())
        else:
            logits = net(x)
        probs.append(torch.softmax(logits.double(), dim=1).cpu())
    if not probs:
        raise CGNError("no images to classify")
    return torch.cat(probs).numpy(), (torch.cat(feats).numpy() if features else None)


def reference_statistics(reference: str | os.PathLike, net: nn.Module, *, batch_size: int = 50,
                         device: torch.device | str = "cpu", save_to: str | os.PathLike | None = None):
    """FID statistics of ``reference``: an ``.npz`` (checked to come from the same network) or
    a folder of images (its pool features through ``net``; cached at ``save_to`` if given)."""
    from cgn.imagenet.world_quality import parse_world_split, world_reference_statistics
    ref, world = Path(reference), parse_world_split(reference)
    identity = getattr(net, "identity", "")
    if world is not None:  # a world split DIR:SPLIT
        stats = world_reference_statistics(*world, net, batch_size=batch_size, device=device)
    elif ref.is_file():
        stats = load_stats(ref)
        check_same_extractor(GaussianStats(stats.mu, stats.sigma, 0, identity), stats,
                             f"the FID reference statistics {ref}")
    elif ref.is_dir():
        _, feats = network_outputs(folder_images(ref), net, features=True, batch_size=batch_size,
                                   device=device, desc="reference features")
        stats = GaussianStats.of(feats, identity)
    else:
        raise CGNError(f"FID reference {ref} does not exist; give a folder of real images or an .npz "
                       "written by --save-reference-stats")
    if save_to:
        stats.save(save_to)
    return stats


@dataclass
class FolderQuality:
    n_images: int
    inception_score: tuple[float, float] | None
    mu_mask: float | None
    n_masks: int
    classifier: str
    fid: float | None = None
    fid_reference: dict | None = None   # {"source", "n"}: what FID was measured against
    extractor: str = ""                 # the network's identity (kind and weight sha256)

    def as_dict(self) -> dict:
        d = {"n_images": self.n_images, "classifier": self.classifier, "n_masks": self.n_masks}
        if self.extractor:
            d["extractor"] = self.extractor
        if self.inception_score is not None:
            d["inception_score"] = {"mean": self.inception_score[0], "std": self.inception_score[1]}
        if self.fid is not None:
            d["fid"] = self.fid
            d["fid_reference"] = self.fid_reference
        if self.mu_mask is not None:
            d["mu_mask"] = self.mu_mask
        return d


def needs_classifier(metrics: Sequence[str]) -> bool:
    """Whether any of ``metrics`` needs a network (class probabilities or pool features)."""
    return any({"probs", "features"} & set(metric_needs(m)) for m in metrics)


def evaluate_folder(folder: str | os.PathLike, *, classifier: nn.Module | None = None,
                    classifier_description: str = "", metrics: Sequence[str] = FOLDER_METRICS,
                    splits: int = 10, limit: int | None = None, batch_size: int = 50,
                    device: torch.device | str = "cpu", fid_reference: str | os.PathLike | None = None,
                    save_reference_stats: str | os.PathLike | None = None) -> FolderQuality:
    """IS (and FID against ``fid_reference``, a folder or an .npz) over the folder's images, and
    μ_mask over its ``masks/`` (when present); one pass of the network serves IS and FID."""
    metrics = check_metric_names(metrics, FOLDER_METRICS + FOLDER_OPTIONAL, "folder quality")
    if "fid" in metrics and fid_reference is None:
        raise CGNError("FID needs a reference: give --fid-reference with a folder of real images or "
                       "an .npz of their statistics")
    files = folder_images(folder)[:limit]
    needs = {need for name in metrics for need in metric_needs(name)}
    mask_files = (sorted(p for p in Path(folder).rglob("*.png") if p.parent.name == "masks")[:limit]
                  if "masks" in needs else [])
    if classifier is None and needs & {"probs", "features"}:
        raise CGNError("the Inception Score and FID need a classifier")
    identity = getattr(classifier, "identity", "")
    outputs: dict = {}

    def network_pass() -> dict:
        if not outputs:
            outputs["probs"], feats = network_outputs(files, classifier, features="features" in needs,
                                                      batch_size=batch_size, device=device)
            outputs["features"] = GaussianStats.of(feats, identity) if feats is not None else None
        return outputs

    def masks() -> Iterable[np.ndarray] | None:
        if not mask_files and needs == {"masks"}:  # nothing else asked for
            raise CGNError(f"{folder} has no masks/ folder; generate with --save-masks")
        return (_load_mask(p) for p in mask_files) if mask_files else None

    ref_stats = None
    if "reference" in needs:
        ref_stats = reference_statistics(fid_reference, classifier, batch_size=batch_size, device=device,
                                         save_to=save_reference_stats)
    inputs = {"probs": lambda: network_pass()["probs"], "features": lambda: network_pass()["features"],
              "masks": masks, "reference": lambda: ref_stats}
    values = {}
    for name in metrics:
        data = {need: inputs[need]() for need in metric_needs(name)}
        if all(v is not None for v in data.values()):  # no masks: no μ_mask
            values[name] = calc_metric(name, splits=splits, **data)
    fid_ref = None
    if "fid" in values:
        fid_ref = {"source": str(Path(fid_reference).resolve()), "n": ref_stats.n}
        dim, n = ref_stats.mu.size, min(len(files), ref_stats.n or len(files))
        if n < dim:
            warn(f"FID from {n} images per side (< {dim} feature dimensions) is biased upwards; "
                 "published values use 50,000 generated images")
    return FolderQuality(len(files), values.get("inception_score"), values.get("mu_mask"),
                         len(mask_files) if "mu_mask" in values else 0, classifier_description,
                         fid=values.get("fid"), fid_reference=fid_ref, extractor=identity)
