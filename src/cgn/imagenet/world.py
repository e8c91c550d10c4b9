"""A miniature ImageNet with ground truth: the *world* (docs/world.md).

Shape, texture and background are each a class, correlated in training like objects and their
contexts in ImageNet, and every image carries its ground-truth object mask. A world folder::

    DIR/world.json          manifest: sources, seeds, sizes, sha256 and mean object area per split
    DIR/train.npz           shape, texture and background of one class (as in ImageNet)
    DIR/test.npz            the same correlations, other images; also IN-9 "Original"
    DIR/cue_conflict.npz    shape of class a, texture of class b != a, background of c not in {a, b}
    DIR/mixed_same.npz      IN-9 Mixed-Same: background of another test image of the same class
    DIR/mixed_rand.npz      IN-9 Mixed-Rand: background of a test image of a random class
    DIR/decorrelated.npz    shape, texture and background classes drawn independently (for judges)

Every split file is in the ``cgn data build`` contract plus provenance: ``images`` uint8
[N, S, S, 3], ``labels`` (= the shape class), ``fg_class`` (texture class), ``bg_class``
(background class), ``masks`` uint8 [N, S, S] (255 = object), ``object_index`` /
``texture_index`` / ``background_index`` (the row of the source split, train for train and
decorrelated, test otherwise, whose shape / texture / background was used; -1: a fresh texture
crop) and, for Wildlife MNIST, the texture crop offsets ``fg_offset`` / ``bg_offset`` [N, 2].

Wildlife MNIST is built from its generative factors (digit alpha, texture crops), so the ground
truth is exact; any npz in the contract plus masks is built by mask compositing
(:mod:`cgn.imagenet.world_npz`). Draws come from ``numpy.random.default_rng([seed, 7, k])`` (k:
the split's position in :data:`SPLITS`); the train split uses the variant's own stream, so at 32
px it is byte for byte ``cgn data build wildlife-mnist --split train``. Per-image factors are
drawn for the whole source split, so a world built with ``--n-*`` limits is a prefix of the full
one, except the Mixed backgrounds, which are drawn among the test images present.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from cgn import __version__
from cgn.errors import CGNError
from cgn.imagenet.world_data import FORMAT, MANIFEST, VERSION
from cgn.imagenet.world_ops import draw_class, partner
from cgn.io import atomic_write, file_digest, write_json_atomic
from cgn.mnist import variants
# the variant's own painter and texture crops: the world's train split is the variant's
from cgn.mnist.variants import _crop_offsets, _crops, _paint

WORLDS = ("wildlife-mnist",)
SPLITS = ("train", "test", "cue_conflict", "mixed_same", "mixed_rand", "decorrelated")
ALIASES = {"original": "test"}  # IN-9 Original is the test split itself
SIZES = (32, 64)
STREAM = 7
K = 10  # Wildlife MNIST classes
ABOUT = {
    "train": "shape, texture and background of the label's class",
    "test": "as train, other images (also IN-9 Original)",
    "cue_conflict": "shape a (label), texture b != a (fg_class), background c not in {a, b}",
    "mixed_same": "IN-9 Mixed-Same: test object on the background of another test image of its class",
    "mixed_rand": "IN-9 Mixed-Rand: test object on the background of a test image of a random class",
    "decorrelated": "shape, texture and background classes drawn independently (train images)",
}


@dataclass(frozen=True)
class WorldSpec:
    world: str = "wildlife-mnist"   # a built-in world, or the path of a train .npz
    test: str | None = None         # npz world: the test .npz
    size: int | None = None         # wildlife: 32 (default) or 64; npz: the files' size
    seed: int = 0
    textures: str | None = None     # wildlife texture folder (None: the procedural set)
    n_train: int = 0                # 0: all
    n_test: int = 0
    n_decorrelated: int = 0         # 0: as many as the test split
    decorrelate: float = 0.0        # wildlife: share of training images with random texture/background

    def __post_init__(self):
        builtin = self.world in WORLDS
        if not builtin and not self.world.endswith(".npz"):
            raise CGNError(f"unknown world {self.world!r}; choose {', '.join(WORLDS)} or a train "
                           ".npz in the `cgn data build` contract plus masks (with --test FILE.npz)")
        if builtin and self.test:
            raise CGNError(f"--test is for a world built from your own npz; {self.world} has its own")
        if not builtin and not self.test:
            raise CGNError("a world from your own npz needs --test FILE.npz (same contract) as well")
        if builtin and self.size is not None and self.size not in SIZES:
            raise CGNError(f"--size must be one of {', '.join(map(str, SIZES))}, got {self.size}")
        if not builtin and self.textures:
            raise CGNError("--textures is for wildlife-mnist; an npz world brings its own images")
        if not builtin and self.decorrelate:
            raise CGNError("--decorrelate is for wildlife-mnist; the train npz is used as given")
        if self.seed < 0:
            raise CGNError(f"--seed must be non-negative, got {self.seed}")
        for name in ("n_train", "n_test", "n_decorrelated"):
            if getattr(self, name) < 0:
                raise CGNError(f"--{name.replace('_', '-')} must be >= 0 (0 = all), got {getattr(self, name)}")
        if not 0.0 <= self.decorrelate <= 1.0:
            raise CGNError(f"--decorrelate is a fraction in [0, 1], got {self.decorrelate}")


def cap(n: int, total: int) -> int:
    return total if n == 0 else min(n, total)


def rng_for(seed: int, split: str) -> np.random.Generator:
    return np.random.default_rng([seed, STREAM, SPLITS.index(split)])


def digit_masks(digits: np.ndarray, size: int) -> np.ndarray:
    """MNIST digits [N, 28, 28] -> uint8 masks [N, size, size] (255 = object). 32 px: the
    variant's nearest resize and binarisation; other sizes: the binarised 28 x 28 digit resized
    bilinearly, a soft edge about two pixels wide."""
    if size == variants.SIZE:
        return variants.binary_mask(variants.upscale_digits(digits))
    out = np.empty((len(digits), size, size), dtype=np.uint8)
    for a in range(0, len(digits), variants.CHUNK):
        b = torch.from_numpy(digits[a:a + variants.CHUNK] > variants.BINARIZE_THRESHOLD * 255)
        up = F.interpolate(b.float()[:, None], size=(size, size), mode="bilinear", align_corners=False)
        out[a:a + variants.CHUNK] = (up[:, 0] * 255).round().clamp(0, 255).to(torch.uint8).numpy()
    return out


def _paint_split(tex, size, masks, fg, fg_off, bg, bg_off, **index) -> dict:
    images = np.empty(masks.shape + (3,), dtype=np.uint8)
    block = max(1, variants.CHUNK * variants.SIZE ** 2 // size ** 2)  # the variant's chunk in pixels
    for a in range(0, len(masks), block):
        s = slice(a, a + block)
        images[s] = _paint(masks[s].astype(np.float32) / 255.0, _crops(tex.objects, fg[s], fg_off[s], size),
                           _crops(tex.backgrounds, bg[s], bg_off[s], size))
    n = len(masks)
    out = {"images": images, "labels": index.pop("labels"), "fg_class": fg, "bg_class": bg,
           "masks": masks, "fg_offset": fg_off, "bg_offset": bg_off}
    for key in ("object_index", "texture_index", "background_index"):
        out[key] = index.get(key, np.arange(n) if key == "object_index" else np.full(n, -1))
    return {k: (v.astype(np.int64) if v.dtype.kind in "iub" and k not in ("images", "masks") else v)
            for k, v in out.items()}


def wildlife_splits(spec: WorldSpec) -> tuple[dict, Iterator[tuple[str, dict]]]:
    """(source description, generator of (split, arrays)) for Wildlife MNIST."""
    from cgn.mnist.source import load_mnist
    from cgn.mnist.textures import get_textures
    mnist, tex = load_mnist(), get_textures(spec.textures)
    size, seed, classes = spec.size or variants.SIZE, spec.seed, np.arange(K)
    tr_d, tr_y = mnist.train_images[:50000], mnist.train_labels[:50000].astype(np.int64)
    te_d, te_y = mnist.train_images[50000:], mnist.train_labels[50000:].astype(np.int64)
    n_tr, n_te = cap(spec.n_train, len(tr_y)), cap(spec.n_test, len(te_y))
    n_dec = cap(spec.n_decorrelated or n_te, len(tr_y))
    source = {"mnist": mnist.source, "train_digits": "official train [0:50000]",
              "test_digits": "official train [50000:60000]", "texture_set": tex.name,
              "variant": "wildlife-mnist", "decorrelate": spec.decorrelate}

    def gen():
        # train: the variant's stream (fg, bg = label; crop offsets of the object, then background)
        rng = np.random.default_rng([seed, variants.VARIANTS.index("wildlife-mnist"), 0])
        fg_off, bg_off = _crop_offsets(len(tr_y), rng, size), _crop_offsets(len(tr_y), rng, size)
        fg, bg = tr_y.copy(), tr_y.copy()
        if spec.decorrelate > 0:
            sel = np.flatnonzero(rng.random(len(tr_y)) < spec.decorrelate)
            fg[sel], bg[sel] = rng.integers(0, K, len(sel)), rng.integers(0, K, len(sel))
        s = slice(0, n_tr)
        yield "train", _paint_split(tex, size, digit_masks(tr_d[s], size), fg[s], fg_off[s], bg[s],
                                    bg_off[s], labels=tr_y[s])

        te_m, y = digit_masks(te_d[:n_te], size), te_y[:n_te]
        rng = rng_for(seed, "test")
        t_fg_off, t_bg_off = _crop_offsets(len(te_y), rng, size)[:n_te], _crop_offsets(len(te_y), rng, size)[:n_te]
        yield "test", _paint_split(tex, size, te_m, y, t_fg_off, y, t_bg_off, labels=y)

        rng = rng_for(seed, "cue_conflict")
        b = draw_class(classes, te_y[:, None], rng, len(te_y), "cue-conflict texture")
        c = draw_class(classes, np.stack([te_y, b], 1), rng, len(te_y), "cue-conflict background")
        fo, bo = _crop_offsets(len(te_y), rng, size), _crop_offsets(len(te_y), rng, size)
        yield "cue_conflict", _paint_split(tex, size, te_m, b[:n_te], fo[:n_te], c[:n_te], bo[:n_te],
                                           labels=y)

        for split in ("mixed_same", "mixed_rand"):
            rng = rng_for(seed, split)
            want = y if split == "mixed_same" else draw_class(np.unique(y), None, rng, n_te, split)
            j = partner(y, want, rng, what="test image")
            yield split, _paint_split(tex, size, te_m, y, t_fg_off, y[j], t_bg_off[j], labels=y,
                                      background_index=j)

        rng = rng_for(seed, "decorrelated")
        b, c = (draw_class(classes, None, rng, len(tr_y), "decorrelated") for _ in range(2))
        fo, bo = _crop_offsets(len(tr_y), rng, size), _crop_offsets(len(tr_y), rng, size)
        s = slice(0, n_dec)
        yield "decorrelated", _paint_split(tex, size, digit_masks(tr_d[s], size), b[s], fo[s],
                                           c[s], bo[s], labels=tr_y[s])
    return source, gen()


def _prepare_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise CGNError(f"--out {out} is a file; give a folder for the world")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST).is_file():
        raise CGNError(f"--out {out} holds other files and no {MANIFEST}; choose an empty or new "
                       "folder (a world folder is rebuilt in place)")
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)  # a rebuild cut short leaves no stale manifest


def write_image_folders(out: Path, split: str, images: np.ndarray, labels: np.ndarray) -> None:
    """``out/folders/<split>/<class:03d>/<row:07d>.png`` (ImageNetFolder reads class = folder
    number); written into a temporary folder, then renamed into place."""
    from PIL import Image
    final = out / "folders" / split
    tmp = out / "folders" / f".{split}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    for c in np.unique(labels):
        (tmp / f"{int(c):03d}").mkdir(parents=True)
    for i, (im, c) in enumerate(zip(images, labels)):
        Image.fromarray(im).save(tmp / f"{int(c):03d}" / f"{i:07d}.png")
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)


def build_world(spec: WorldSpec, out: str | os.PathLike, *, image_folders: bool = False,
                log: Callable[[str], None] = lambda s: None) -> dict:
    """Write the world into folder ``out``; returns the manifest (also ``out/world.json``)."""
    out = Path(out)
    if spec.world in WORLDS:
        source, splits = wildlife_splits(spec)
    else:
        from cgn.imagenet.world_npz import npz_splits
        source, splits = npz_splits(spec)
    _prepare_out(out)
    if not image_folders:
        shutil.rmtree(out / "folders", ignore_errors=True)  # a rebuilt world keeps no stale folders
    entries: dict[str, dict] = {}
    size = classes = None
    t0 = time.perf_counter()
    for name, arrays in splits:
        size, n = arrays["images"].shape[1], len(arrays["labels"])
        classes = source.get("num_classes", K)
        meta = {"world": source.get("variant", "npz"), "split": name, "seed": spec.seed, "n": n,
                "size": size, "about": ABOUT[name], "cgn_version": __version__}
        with atomic_write(out / f"{name}.npz") as f:  # streamed: no in-memory copy of the archive
            np.savez(f, **arrays, meta=np.array(json.dumps(meta)))
        area = float(arrays["masks"].mean(dtype=np.float64) / 255.0)
        entries[name] = {"file": f"{name}.npz", "n": n, "sha256": file_digest(out / f"{name}.npz"),
                         "mean_object_area": round(area, 6), "about": ABOUT[name]}
        if image_folders:
            write_image_folders(out, name, arrays["images"], arrays["labels"])
        log(f"{name}: {n} images, {size}x{size}, mean object area {area:.4f} "
            f"({time.perf_counter() - t0:.1f} s)")
        del arrays
        t0 = time.perf_counter()
    entries["original"] = dict(entries["test"], alias_of="test", about="IN-9 Original: the test split")
    manifest = {
        "format": FORMAT, "version": VERSION, "world": spec.world if spec.world in WORLDS else "npz",
        "size": size, "num_classes": classes, "seed": spec.seed, "streams": f"default_rng([seed, {STREAM}, k])",
        "mean_object_area": entries["train"]["mean_object_area"], "source": source,
        "spec": {k: v for k, v in asdict(spec).items() if k.startswith("n_") or k == "decorrelate"},
        "image_folders": bool(image_folders), "splits": entries, "cgn_version": __version__,
    }
    write_json_atomic(out / MANIFEST, manifest)
    return manifest
