"""The world's judges: one small CNN read four ways (docs/world.md, "Judges").

=====================  =============================================  =====================
judge                  input                                          output
=====================  =============================================  =====================
``world_classifier``   an image [B, 3, S, S] in [-1, 1]               its class (the shape's)
``shape_judge``        a mask [B, 1, S, S] in [0, 1]                  the shape class
``texture_judge``      a full-frame texture image [B, 3, S, S]        the texture class
``background_judge``   a background image without object [B, 3, S, S] the background class
=====================  =============================================  =====================

The world classifier plays Inception-v3's role for the Inception Score on a world
(:class:`WorldInception` wraps it for ``cgn imagenet metrics``, which feeds [0, 1] images); the
other three read the CGN's mechanisms: its mask, its texture (foreground) and its background.
Inputs are in the ranges in which the ImageNet CGN produces them (images as BigGAN draws them,
masks as U2-Net's saliency); the network normalises them with its first BatchNorm.

Architecture (:class:`JudgeNet`), width w (default 16), any image side::

    conv3x3(C -> w) BN ReLU -> conv3x3/2(w -> 2w) BN ReLU -> conv3x3(2w -> 2w) BN ReLU
    -> conv3x3/2(2w -> 4w) BN ReLU -> conv3x3/2(4w -> 4w) BN ReLU -> global mean -> Linear(4w -> K)

A judge file is a small dict loaded with ``weights_only=True``: ``format``, ``version``,
``judge``, ``arch`` (in_channels, num_classes, width), ``size`` (the world's image side),
``world`` (its folder and train split sha256), ``accuracy`` (held-out, a fraction) and
``state_dict``.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from cgn.errors import CGNError
from cgn.io import write_bytes_atomic

FORMAT, VERSION = "cgn-world-judge", 1
# judge -> (what it reads, what it names)
JUDGES: dict[str, tuple[str, str]] = {
    "world_classifier": ("image", "class"),
    "shape_judge": ("mask", "shape"),
    "texture_judge": ("image", "texture"),
    "background_judge": ("image", "background"),
}


def _block(cin: int, cout: int, stride: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True)]


class JudgeNet(nn.Module):
    """The judges' CNN (see the module docstring); ``forward`` returns logits [B, K]."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10, width: int = 16):
        super().__init__()
        if in_channels < 1 or num_classes < 2 or width < 1:
            raise CGNError(f"a judge needs >= 1 input channel, >= 2 classes and width >= 1, got "
                           f"{in_channels}, {num_classes}, {width}")
        w = width
        self.arch = {"in_channels": in_channels, "num_classes": num_classes, "width": width}
        self.features = nn.Sequential(
            *_block(in_channels, w, 1), *_block(w, 2 * w, 2), *_block(2 * w, 2 * w, 1),
            *_block(2 * w, 4 * w, 2), *_block(4 * w, 4 * w, 2),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())                       # [B, 4w]
        self.fc = nn.Linear(4 * w, num_classes)

    @property
    def num_classes(self) -> int:
        return self.arch["num_classes"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))

    def features_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.features(x)
        return f, self.fc(f)


def build_judge(judge: str, num_classes: int, width: int = 16) -> JudgeNet:
    if judge not in JUDGES:
        raise CGNError(f"unknown judge {judge!r}; choose one of {', '.join(JUDGES)}")
    return JudgeNet(1 if JUDGES[judge][0] == "mask" else 3, num_classes, width)


class LoadedJudge(JudgeNet):
    """A judge read from its file: the net plus what the file records."""
    judge: str
    size: int
    info: dict
    path: Path


def save_judge(path: str | os.PathLike, model: JudgeNet, *, judge: str, size: int, world: dict,
               accuracy: float | None) -> Path:
    """Write a judge file atomically (see the module docstring)."""
    state = {k: v.detach().to("cpu", torch.float32 if v.is_floating_point() else v.dtype).clone()
             for k, v in model.state_dict().items()}
    payload = {"format": FORMAT, "version": VERSION, "judge": judge, "arch": dict(model.arch),
               "size": int(size), "world": dict(world),
               "accuracy": None if accuracy is None else float(accuracy), "state_dict": state}
    buf = io.BytesIO()
    torch.save(payload, buf)
    write_bytes_atomic(path, buf.getvalue())
    return Path(path)


def load_judge(path: str | os.PathLike, judge: str | None = None) -> LoadedJudge:
    """A judge file as a model in eval mode; ``judge`` (a name of :data:`JUDGES`) checks which."""
    from cgn.core.checkpoint import load_state_dict_strict, torch_load
    p = Path(path).expanduser()
    want = judge or "judge"
    if p.is_dir():
        raise CGNError(f"{p} is a folder; give the {want} file in it (e.g. {p / (judge or 'world_classifier')}.pt, "
                       "written by cgn imagenet pretrain judges)")
    obj = torch_load(p, what=f"{want} file")
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise CGNError(f"{p} is not a world judge file (no '{FORMAT}' header); train the judges "
                       "with `cgn imagenet pretrain judges --world DIR --out RUN`")
    if judge is not None and obj.get("judge") != judge:
        raise CGNError(f"{p} holds the {obj.get('judge')}, not the {judge}; give "
                       f"RUN/{judge}.pt")
    try:
        arch = obj["arch"]
        model = LoadedJudge(int(arch["in_channels"]), int(arch["num_classes"]), int(arch["width"]))
        load_state_dict_strict(model, obj["state_dict"], f"judge file {p}")
    except (KeyError, TypeError):
        raise CGNError(f"{p} is a damaged judge file; train the judges again") from None
    model.judge, model.size, model.path = str(obj["judge"]), int(obj["size"]), p
    model.info = {k: obj.get(k) for k in ("judge", "size", "world", "accuracy")}
    return model.eval()


class WorldInception(nn.Module):
    """The world classifier in the Inception role of ``cgn imagenet metrics``: images in [0, 1]
    (any side; resized bilinearly to the world's) -> logits over the world's classes; pool
    features for FID through :meth:`features_and_logits`."""

    def __init__(self, classifier: LoadedJudge):
        super().__init__()
        from cgn.io import file_digest
        self.net = classifier.eval()
        self.input_size = classifier.size
        digest = file_digest(classifier.path)
        self.description = (f"world classifier {classifier.path} ({classifier.num_classes} "
                            f"classes, {classifier.size} px; sha256 {digest[:16]})")
        self.identity = f"world-classifier sha256:{digest}"

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        s = self.input_size
        if x.shape[-2:] != (s, s):
            x = F.interpolate(x, (s, s), mode="bilinear", align_corners=False, antialias=True)
        return x * 2.0 - 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self._prepare(x))

    def features_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.net.features_and_logits(self._prepare(x))


def load_world_inception(source: str) -> WorldInception:
    """``cgn imagenet metrics --inception world --classifier RUN/world_classifier.pt``."""
    if source in ("auto", "random", "", None):
        raise CGNError("--inception world needs --classifier RUN/world_classifier.pt (trained by "
                       "`cgn imagenet pretrain judges --world DIR --out RUN`)")
    return WorldInception(load_judge(source, "world_classifier"))
