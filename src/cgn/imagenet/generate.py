"""Sampling from a trained ImageNet CGN: counterfactual datasets, interpolation sheets and GIFs.

Datasets (modes ``random`` and ``fixed``) are written in the shared format of
:mod:`cgn.imagenet.cfdata` (``DIR/<split>/<index:07d>.png`` + ``labels.csv``). Every image has
its own seed, derived from (dataset seed, split, index) and stored in the CSV; the seed alone
fixes the image's noise and, in ``random`` mode, its three classes (shape, texture, background
drawn independently and uniformly). As in the authors' code, one noise vector feeds all three
mechanisms. :func:`regenerate` rebuilds an image from its row; with the default batch size of 1
the result is bit-identical (larger batches are faster but may differ in the last float bit,
i.e. rarely by one 8-bit level). ``--save-masks`` also writes each mask as an 8-bit PNG in
``DIR/<split>/masks/`` (for μ_mask). Generation resumes where it stopped; a
``generation.json`` per split records the settings and refuses a resume with other ones.

Interpolations run in class-embedding space: the class vector moves linearly from one one-hot
vector to another (BigGAN's class embedding is linear, so this interpolates the embeddings),
over one mechanism (shape / texture / background) or all of them, at fixed noise.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
import torch
from PIL import Image
from torchvision.utils import make_grid

from cgn.config import check_resume, from_dict
from cgn.core.checkpoint import FORMAT, torch_load
from cgn.core.progress import progress
from cgn.core.lock import lock_dir
from cgn.errors import CGNError
from cgn.imagenet.cfdata import CFDatasetWriter, image_name, split_dir
from cgn.imagenet.config import ImageNetCGNConfig, ModelConfig
from cgn.imagenet.model import CHECKPOINT_KIND, CGNOutput, ImageNetCGN, build_cgn, truncated_noise
from cgn.io import atomic_write, read_json, write_json_atomic

MECH_KEYS = {"shape": 0, "texture": 1, "background": 2}
INTERP_MODES = ("shape", "texture", "background", "all")
_SPLIT_CODE = {"train": 0, "val": 1}


# --------------------------------------------------------------------------------------------
# Loading a generator
# --------------------------------------------------------------------------------------------

def load_generator(cgn: str | os.PathLike, device: torch.device | str = "cpu",
                   truncation: float = 0.5) -> ImageNetCGN:
    """A CGN from one of our checkpoints (architecture from its config) or the authors'
    ``cgn.pth`` (BigGAN-deep-256 + full U²-Net), in eval mode on ``device``."""
    path = Path(cgn).expanduser()
    obj = torch_load(path, what="CGN weights")
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        if obj.get("kind") != CHECKPOINT_KIND:
            raise CGNError(f"{path} holds a '{obj.get('kind')}' checkpoint, not an ImageNet CGN")
        cfg = from_dict(ImageNetCGNConfig, obj["config"]).model
        # the architectures come from what the checkpoint records (a stand-in's from its files);
        # checkpoints written before they were recorded rebuild from the config's arch fields
        mcfg = from_dict(ModelConfig, {**asdict(cfg), "biggan": "", "u2net": "", "cgn": str(path)})
    else:
        mcfg = ModelConfig(cgn=str(path))
    return build_cgn(mcfg, truncation=truncation, loaded=obj).to(device).eval()  # read once


# --------------------------------------------------------------------------------------------
# Per-image seeds and rendering
# --------------------------------------------------------------------------------------------

def image_seed(seed: int, split: str, index: int) -> int:
    """The seed of image ``index`` of ``split`` in a dataset generated with ``seed``."""
    if split not in _SPLIT_CODE:
        raise CGNError(f"unknown split {split!r}; use train or val")
    s = np.random.SeedSequence([int(seed), _SPLIT_CODE[split], int(index)]).generate_state(2)
    return int(s[0]) << 31 | int(s[1]) >> 1


def image_latents(seed: int, z_dim: int, truncation: float, num_classes: int = 1000
                  ) -> tuple[list[int], torch.Tensor]:
    """(random classes [shape, texture, background], noise [1, z_dim]) of one image seed."""
    g = torch.Generator().manual_seed(int(seed))
    classes = torch.randint(num_classes, (3,), generator=g).tolist()
    return classes, truncated_noise(1, z_dim, truncation, g)


@torch.no_grad()
def render(model: ImageNetCGN, u: torch.Tensor, classes: torch.Tensor | Sequence[Sequence[int]],
           truncation: float, with_reference: bool = False) -> CGNOutput:
    """u: [B, z]; classes: [B, 3] (shape, texture, background) ints or [3, B, K] class vectors."""
    dev = model.device
    if isinstance(classes, torch.Tensor) and classes.dim() == 3:
        ys = [classes[i].to(dev) for i in range(3)]
    else:
        c = torch.as_tensor(classes, dtype=torch.long).view(-1, 3)
        ys = [model.class_vector(c[:, i]) for i in range(3)]
    return model(u.to(dev), *ys, truncation=truncation, with_reference=with_reference,
                 with_background_mask=False)


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] images → [0, 1] (the authors min-max normalise per batch; we do not)."""
    return ((x.float() + 1) / 2).clamp(0, 1)


def regenerate(model: ImageNetCGN, seed: int, shape_class: int, texture_class: int,
               background_class: int, truncation: float) -> torch.Tensor:
    """Rebuild one dataset image from its CSV row: [3, H, W] in [0, 1]."""
    _, u = image_latents(seed, model.z_dim, truncation, model.n_classes)
    out = render(model, u, [[shape_class, texture_class, background_class]], truncation)
    return to_unit(out.composite())[0].cpu()


# --------------------------------------------------------------------------------------------
# Datasets
# --------------------------------------------------------------------------------------------

@dataclass
class DatasetSpec:
    """The settings ``generation.json`` records; a resume keeps every one (the number of images
    and the batch size are not among them)."""
    mode: Literal["random", "fixed"]
    seed: int
    truncation: float
    classes: list[int] | None   # [shape, texture, background] in fixed mode
    source: str                 # the CGN weights
    save_masks: bool

    def check(self) -> None:
        if self.mode not in ("random", "fixed"):
            raise CGNError(f"unknown dataset mode {self.mode!r}; use random or fixed")
        if self.mode == "fixed" and (self.classes is None or len(self.classes) != 3):
            raise CGNError("fixed mode needs --classes SHAPE TEXTURE BACKGROUND")
        if self.classes is not None and not all(0 <= c < 1000 for c in self.classes):
            raise CGNError("classes must be class indices 0..999 (ImageNet's, or a world's)")
        if not 0 < self.truncation <= 1:
            raise CGNError("truncation must be in (0, 1]")


def generate_dataset(model: ImageNetCGN, out: str | os.PathLike, split: str, n: int,
                     spec: DatasetSpec, batch_size: int = 1) -> int:
    """Write images ``next_index .. n-1`` of ``split``; returns how many were written now."""
    spec.check()
    if n < 1 or batch_size < 1:
        raise CGNError("the number of images and the batch size must be >= 1")
    if spec.classes is not None:
        model.class_vector(spec.classes)  # classes the CGN lacks: one line, before anything is written
    d = split_dir(out, split)
    lock_dir(d)  # one writer per split: two processes would interleave their images
    meta_path = d / "generation.json"
    meta = asdict(spec)
    if meta_path.is_file():
        check_resume(DatasetSpec, read_json(meta_path, "generation record"), meta,
                     f"{d} was generated with other settings", "use the same settings to resume, or another --out")
    else:
        write_json_atomic(meta_path, meta)
    writer = CFDatasetWriter(out, split)
    start = writer.next_index
    if start >= n:
        return 0
    mask_dir = d / "masks"
    bar = progress(total=n - start, desc=f"generating {split}")
    for lo in range(start, n, batch_size):
        idx = list(range(lo, min(lo + batch_size, n)))
        seeds = [image_seed(spec.seed, split, i) for i in idx]
        lat = [image_latents(s, model.z_dim, spec.truncation, model.n_classes) for s in seeds]
        classes = [spec.classes if spec.mode == "fixed" else c for c, _ in lat]
        u = torch.cat([z for _, z in lat])
        out_b = render(model, u, classes, spec.truncation)
        x = to_unit(out_b.composite()).cpu()
        masks = out_b.mask.float().cpu()
        for j, i in enumerate(idx):
            if spec.save_masks:
                m8 = (masks[j, 0] * 255).round().to(torch.uint8).numpy()
                with atomic_write(mask_dir / image_name(i), "wb") as f:
                    Image.fromarray(m8, "L").save(f, format="PNG")
            writer.add(x[j], seed=seeds[j], shape_class=classes[j][0],
                       texture_class=classes[j][1], background_class=classes[j][2])
            bar.update(1)
    bar.close()
    return n - start


# --------------------------------------------------------------------------------------------
# Interpolations
# --------------------------------------------------------------------------------------------

def lerp_classes(model: ImageNetCGN, start: int, end: int, midpoints: int) -> torch.Tensor:
    """[midpoints + 2, K] class vectors from one-hot(start) to one-hot(end)."""
    a, b = model.class_vector([start]), model.class_vector([end])
    t = torch.linspace(0, 1, midpoints + 2, device=a.device, dtype=a.dtype)[:, None]
    return a * (1 - t) + b * t


def interpolate(model: ImageNetCGN, u: torch.Tensor, classes: Sequence[int], target: int,
                mechanism: str, midpoints: int, truncation: float) -> CGNOutput:
    """Move ``mechanism``'s class (or all three) from ``classes`` to ``target`` at fixed noise."""
    if mechanism not in INTERP_MODES:
        raise CGNError(f"unknown interpolation {mechanism!r}; use one of {', '.join(INTERP_MODES)}")
    k = midpoints + 2
    ys = []
    for name, i in MECH_KEYS.items():
        if mechanism in (name, "all"):
            ys.append(lerp_classes(model, classes[i], target, midpoints))
        else:
            ys.append(model.class_vector([classes[i]]).expand(k, -1))
    outs = [render(model, u.expand(1, -1), torch.stack([y[j:j + 1] for y in ys]), truncation)
            for j in range(k)]  # one image at a time: memory stays flat for many midpoints
    return CGNOutput(**{f: torch.cat([getattr(o, f) for o in outs])
                        for f in ("mask", "premask", "foreground", "background")}, background_mask=None)


def interpolation_sheet(out: CGNOutput, mechanism: str) -> torch.Tensor:
    """Row 1: the interpolated mechanism's output (mask, foreground or background; omitted for
    ``all``); last row: the composite. [3, H, W] in [0, 1]."""
    rows = []
    if mechanism == "shape":
        rows.append(out.mask.expand(-1, 3, -1, -1).float())
    elif mechanism == "texture":
        rows.append(to_unit(out.foreground))
    elif mechanism == "background":
        rows.append(to_unit(out.background))
    rows.append(to_unit(out.composite()))
    n = out.mask.shape[0]
    return make_grid(torch.cat(rows).cpu(), nrow=n, padding=2, pad_value=1.0)


def interpolation_frames(model: ImageNetCGN, u: torch.Tensor, classes: Sequence[int],
                         steps: Sequence[tuple[str, int]], midpoints: int,
                         truncation: float) -> list[torch.Tensor]:
    """Composite frames [3, H, W] in [0, 1] through a chain of interpolations, e.g. the teaser:
    start at ``classes``, then texture → 293, background → 147, shape → 330, all → back."""
    cur = list(classes)
    frames: list[torch.Tensor] = []
    for s, (mech, target) in enumerate(steps):
        out = interpolate(model, u, cur, target, mech, midpoints, truncation)
        x = to_unit(out.composite()).cpu()
        frames.extend(x if s == 0 else x[1:])           # don't repeat the joint frame
        for name, i in MECH_KEYS.items():
            if mech in (name, "all"):
                cur[i] = target
    return frames


def save_gif(path: str | os.PathLike, frames: Sequence[torch.Tensor], frame_ms: int = 40) -> None:
    imgs = [Image.fromarray((f.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy())
            for f in frames]
    with atomic_write(path, "wb") as fh:
        imgs[0].save(fh, format="GIF", save_all=True, append_images=imgs[1:], duration=frame_ms, loop=0)


def parse_steps(items: Sequence[str]) -> list[tuple[str, int]]:
    """``["texture:293", "background:147", "shape:330", "all:992"]`` → [(mechanism, class)]."""
    out = []
    for it in items:
        mech, _, cls = it.partition(":")
        if mech not in INTERP_MODES or not cls.isdigit() or not 0 <= int(cls) < 1000:
            raise CGNError(f"bad interpolation step {it!r}; write MECHANISM:CLASS with MECHANISM "
                           f"one of {', '.join(INTERP_MODES)} and CLASS in 0..999 (within the CGN's classes)")
        out.append((mech, int(cls)))
    if not out:
        raise CGNError("give at least one interpolation step, e.g. texture:293")
    return out
