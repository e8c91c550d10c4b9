"""A world split as the image source of ``cgn imagenet metrics`` (``--world-split DIR:SPLIT``).

The real images of a world get the same Inception Score, μ_mask and FID as a folder of generated
ones: the split's images go to the network in [0, 1] (the network resizes them), μ_mask is the
mean of the split's ground-truth masks (the world's mean object area), and ``DIR:SPLIT`` also
serves as ``--fid-reference``. With the world classifier as the network
(``--inception world``), ``--world-split WORLD:test`` gives the real test split's IS, the
number a BigGAN stand-in's IS is compared with.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from cgn.core.metrics import calc_metric, check_metric_names, metric_needs
from cgn.core.progress import progress
from cgn.errors import CGNError


def parse_world_split(text: str | os.PathLike, strict: bool = False) -> tuple[Path, str] | None:
    """``DIR:SPLIT`` -> (world folder, split); None when ``text`` is no such thing (an error
    with ``strict``)."""
    from cgn.imagenet.world_data import MANIFEST, read_manifest
    root, sep, split = str(text).rpartition(":")
    if not sep or not root or not (Path(root) / MANIFEST).is_file():
        if strict:
            raise CGNError(f"--world-split {text!r}: write it as DIR:SPLIT, DIR a world folder "
                           "(with world.json) and SPLIT one of its splits, e.g. worlds/wl32:test")
        return None
    splits = read_manifest(root)["splits"]
    if split not in splits:
        raise CGNError(f"{text!r}: the world has no split {split!r}; choose one of {', '.join(splits)}")
    return Path(root), split


@torch.no_grad()
def world_split_outputs(root, split: str, net: nn.Module, *, features: bool, batch_size: int = 50,
                        device: torch.device | str = "cpu", limit: int | None = None
                        ) -> tuple[np.ndarray, np.ndarray | None]:
    """(class probabilities [N, K], pool features [N, D] or None) of a world split's images."""
    from cgn.imagenet.world_data import WorldSplit
    if features and not hasattr(net, "features_and_logits"):
        raise CGNError("FID needs pool features, and this network has none")
    data = WorldSplit(root, split, value_range=(0.0, 1.0))
    n = len(data) if limit is None else min(limit, len(data))
    if n == 0:
        raise CGNError(f"world split {split} holds no images")
    net = net.to(device).eval()
    probs, feats = [], []
    for a in progress(range(0, n, batch_size), total=-(-n // batch_size), desc=f"world {split}"):
        x = data.batch(slice(a, min(a + batch_size, n)))["image"].to(device)
        if features:
            f, logits = net.features_and_logits(x)
            feats.append(f.double().cpu())
        else:
            logits = net(x)
        probs.append(torch.softmax(logits.double(), dim=1).cpu())
    return torch.cat(probs).numpy(), (torch.cat(feats).numpy() if features else None)


def world_reference_statistics(root, split: str, net: nn.Module, *, batch_size: int = 50,
                               device: torch.device | str = "cpu"):
    """FID statistics of a world split's images through ``net``."""
    from cgn.imagenet.fid import GaussianStats
    _, feats = world_split_outputs(root, split, net, features=True, batch_size=batch_size, device=device)
    return GaussianStats.of(feats, getattr(net, "identity", ""))


def evaluate_world_split(spec: str, *, classifier: nn.Module | None, classifier_description: str = "",
                         metrics: Sequence[str], splits: int = 10, limit: int | None = None,
                         batch_size: int = 50, device: torch.device | str = "cpu",
                         fid_reference: str | os.PathLike | None = None,
                         save_reference_stats: str | os.PathLike | None = None):
    """:func:`cgn.imagenet.quality.evaluate_folder` for the images of world split ``DIR:SPLIT``."""
    from cgn.imagenet.fid import GaussianStats
    from cgn.imagenet.quality import FOLDER_METRICS, FOLDER_OPTIONAL, FolderQuality, reference_statistics
    from cgn.imagenet.world_data import load_split_arrays
    root, split = parse_world_split(spec, strict=True)
    metrics = check_metric_names(metrics, FOLDER_METRICS + FOLDER_OPTIONAL, "folder quality")
    needs = {need for name in metrics for need in metric_needs(name)}
    if classifier is None and needs & {"probs", "features"}:
        raise CGNError("the Inception Score and FID need a classifier")
    masks, _ = load_split_arrays(root, split)
    n = len(masks["labels"]) if limit is None else min(limit, len(masks["labels"]))
    inputs: dict = {"masks": masks["masks"][:n].astype(np.float64) / 255.0}
    identity = getattr(classifier, "identity", "")
    if needs & {"probs", "features"}:
        probs, feats = world_split_outputs(root, split, classifier, features="features" in needs,
                                           batch_size=batch_size, device=device, limit=n)
        inputs["probs"] = probs
        inputs["features"] = GaussianStats.of(feats, identity) if feats is not None else None
    ref = None
    if "reference" in needs:
        if fid_reference is None:
            raise CGNError("FID needs a reference: give --fid-reference with a folder of real "
                           "images, an .npz of their statistics or a world split DIR:SPLIT")
        ref = inputs["reference"] = reference_statistics(fid_reference, classifier, batch_size=batch_size,
                                                         device=device, save_to=save_reference_stats)
    values = {name: calc_metric(name, splits=splits, **{k: inputs[k] for k in metric_needs(name)})
              for name in metrics}
    fid_ref = {"source": str(fid_reference), "n": ref.n} if ref is not None else None
    return FolderQuality(n, values.get("inception_score"), values.get("mu_mask"),
                         n if "mu_mask" in values else 0, classifier_description,
                         fid=values.get("fid"), fid_reference=fid_ref, extractor=identity)
