"""The invariant classifier ensemble: one backbone, three fresh heads.

    x [B,3,H,W] -> backbone (a torchvision classifier without its last Linear) -> features [B,D]
    features -> shape head, texture head, background head (fresh Linear D->1000 each)
    avg           = (shape + texture + background) / 3      the ensemble's prediction
    shape_texture = (shape + texture) / 2                   the prediction without background

``forward`` returns a dict of logits ``[B, 1000]`` under the keys of :data:`PREDICTIONS`.
:class:`PlainClassifier` wraps an ordinary torchvision classifier in the same dict interface
(every key holds its one prediction), so all evaluations and explanations take either.

The backbone is any torchvision classification architecture (``torchvision.models.get_model``
names: resnet50, vgg16, efficientnet_b0, convnext_tiny, vit_b_16, ...): its last ``Linear``
with 1000 outputs is the classifier that is cut off (an Identity takes its place, so dropout or
pooling before it stay in the backbone). ``tiny`` is a small CNN of the same interface for CPU
smoke tests; it is not meant for results.

Pretrained weights: ``weights="imagenet"`` takes torchvision's default ImageNet weights for the
architecture (downloaded once into ``$TORCH_HOME``); a file path loads a full-model state dict
(e.g. torchvision's ``resnet50-0676ba61.pth``) saved on a connected machine; ``None`` is random
initialisation (``--no-pretrained``).

Reference: docs/reference.md#classifier-ensemble.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torchvision
from torch import nn

from cgn.core.checkpoint import load_state_dict_strict, torch_load
from cgn.errors import CGNError

NUM_CLASSES = 1000
HEADS = ("shape", "texture", "background")
PREDICTIONS = ("shape", "texture", "background", "avg", "shape_texture")
# What each head is trained against on counterfactual images (labels.csv columns).
HEAD_LABELS = {"shape": "shape_class", "texture": "texture_class", "background": "background_class"}


class TinyConvNet(nn.Module):
    """A small CNN (about 0.1M parameters) with a torchvision-like ``fc`` classifier, for CPU
    smoke tests only."""

    def __init__(self, num_classes: int = NUM_CLASSES, width: int = 16):
        super().__init__()
        w = width
        self.features = nn.Sequential(                                   # [B,3,H,W]
            nn.Conv2d(3, w, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(True),
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(2 * w),
            nn.ReLU(True),                                               # [B,2w,H/4,W/4]
            nn.Conv2d(2 * w, 4 * w, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(4 * w),
            nn.ReLU(True),                                               # [B,4w,H/8,W/8]
            nn.AdaptiveAvgPool2d(1), nn.Flatten())                       # [B,4w]
        self.fc = nn.Linear(4 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def available_architectures() -> list[str]:
    return ["tiny"] + sorted(torchvision.models.list_models(module=torchvision.models))


def build_classifier(arch: str, weights: str | os.PathLike | None = None) -> nn.Module:
    """A full 1000-way classifier of architecture ``arch`` with the requested weights."""
    if arch == "tiny":
        model: nn.Module = TinyConvNet()
        if weights == "imagenet":
            raise CGNError("the 'tiny' test architecture has no ImageNet weights; use "
                           "--no-pretrained or a real architecture such as resnet50")
    else:
        if arch not in torchvision.models.list_models(module=torchvision.models):
            raise CGNError(f"unknown architecture {arch!r}; use a torchvision classification "
                           "model name (resnet50, vgg16, efficientnet_b0, ...) or 'tiny'")
        tv_weights = None
        if weights == "imagenet":
            tv_weights = torchvision.models.get_model_weights(arch).DEFAULT
        try:
            model = torchvision.models.get_model(arch, weights=tv_weights)
        except (OSError, RuntimeError) as e:  # no network, broken cache file
            raise CGNError(f"could not get ImageNet weights for {arch} ({str(e)[:120]}); on a "
                           "machine without internet pass --weights FILE (a state dict saved "
                           "elsewhere) or --no-pretrained") from None
    if weights not in (None, "imagenet"):
        state = torch_load(weights, what="backbone weights")
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
        if not isinstance(state, dict):
            raise CGNError(f"{weights} does not hold a state dict of a {arch} classifier")
        load_state_dict_strict(model, state, f"backbone weights {weights}")
    for aux in ("AuxLogits", "aux1", "aux2"):
        if hasattr(model, aux):  # inception/googlenet: drop auxiliary classifiers
            setattr(model, aux, None)
            if hasattr(model, "aux_logits"):
                model.aux_logits = False
    return model


def _cut_classifier(model: nn.Module) -> int:
    """Replace the model's last ``Linear(D, 1000)`` by an Identity; return D."""
    last = None
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear) and m.out_features == NUM_CLASSES:
            last = name
    if last is None:
        raise CGNError("this architecture has no Linear(.., 1000) classifier to replace by "
                       "three heads; choose another torchvision model")
    parent = model
    *path, leaf = last.split(".")
    for p in path:
        parent = getattr(parent, p)
    dim = getattr(parent, leaf).in_features
    setattr(parent, leaf, nn.Identity())
    return dim


class InvariantEnsemble(nn.Module):
    """Backbone + shape / texture / background heads."""

    def __init__(self, arch: str = "resnet50", weights: str | os.PathLike | None = "imagenet"):
        super().__init__()
        self.arch = arch
        self.backbone = build_classifier(arch, weights)
        dim = _cut_classifier(self.backbone)
        # three fresh heads, default Linear initialisation
        self.heads = nn.ModuleDict({h: nn.Linear(dim, NUM_CLASSES) for h in HEADS})

    def features(self, x: torch.Tensor) -> torch.Tensor:
        f = self.backbone(x)                                             # [B, D]
        if isinstance(f, tuple):  # (inception in train mode) first element is the output
            f = f[0]
        return f.flatten(1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.features(x)                                             # [B, D]
        out = {h: self.heads[h](f) for h in HEADS}                       # [B, 1000] each
        out["avg"] = (out["shape"] + out["texture"] + out["background"]) / 3
        out["shape_texture"] = (out["shape"] + out["texture"]) / 2
        return out


class PlainClassifier(nn.Module):
    """An ordinary classifier in the ensemble's dict interface (all keys = its logits)."""

    def __init__(self, arch: str = "resnet50", weights: str | os.PathLike | None = "imagenet"):
        super().__init__()
        self.arch = arch
        self.net = build_classifier(arch, weights)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        y = self.net(x)
        if isinstance(y, tuple):
            y = y[0]
        return {k: y for k in PREDICTIONS}


def weights_arg(pretrained: bool, weights_file: str) -> str | None:
    """Config fields -> the ``weights`` argument: a file wins, then 'imagenet', else None."""
    if weights_file:
        if not Path(weights_file).is_file():
            raise CGNError(f"weights file {weights_file} does not exist; check --weights")
        return weights_file
    return "imagenet" if pretrained else None
