"""A world from the user's own data: a train and a test ``.npz`` in the ``cgn data build``
contract plus masks (``images`` uint8 [N, H, W, 3], integer ``labels``, ``masks`` uint8
[N, H, W] with 255 = object; ``fg_class`` / ``bg_class`` optional, absent or -1 = the label).

The evaluation splits are built by mask compositing (:mod:`cgn.imagenet.world_ops`): Mixed
images paste test object i (its pixels, with its alpha) on the inpainted background of test
image j; cue-conflict and decorrelated images fill object i's alpha with the mirror-tiled object
pixels of an image k of the texture class, over the inpainted background of an image j of the
background class. Their ground truth is only as good as the masks: an object pixel the mask
misses stays in the background, and a soft or loose edge carries its own background along.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cgn.errors import CGNError
from cgn.imagenet.npzdata import read_npz
from cgn.imagenet.world_ops import (BG_MAX, OBJ_MIN, backgrounds, composite, draw_class, partner,
                                    texture_tiles)

FIX = "write it in the `cgn data build` contract plus masks (docs/world.md)"


def load_world_npz(path: str | Path, what: str) -> dict:
    """Read and check one user npz; returns images, labels, fg_class, bg_class (int64, -1 =
    the label's class filled in) and masks."""
    arrays = read_npz(path, ("images", "labels", "masks"), ("fg_class", "bg_class"), what=what, fix=FIX)
    y = arrays["labels"].astype(np.int64)
    out = {"images": arrays["images"], "labels": y, "masks": arrays["masks"]}
    for key in ("fg_class", "bg_class"):
        a = arrays.get(key, y).astype(np.int64)
        out[key] = np.where(a < 0, y, a)
    return out


def _split(masks: np.ndarray, images: np.ndarray, labels, fg, bg, obj, tex, bgi) -> dict:
    return {"images": images, "labels": labels, "fg_class": fg, "bg_class": bg, "masks": masks,
            "object_index": obj, "texture_index": tex, "background_index": bgi}


def _retextured(src: dict, n: int, b: np.ndarray, c: np.ndarray, rng) -> dict:
    """Objects 0..n-1 of ``src`` filled with the texture of an image of class b[i], over the
    background of an image of class c[i]."""
    tex_ok = (src["masks"] >= OBJ_MIN).any(axis=(1, 2))
    bg_ok = (src["masks"] < BG_MAX).any(axis=(1, 2))
    k = partner(src["labels"], b, rng, usable=tex_ok, what="texture source (object pixels, mask >= 128)")
    j = partner(src["labels"], c, rng, usable=bg_ok, what="background source (mask < 26)")
    m = src["masks"][:n]
    images = composite(m, texture_tiles(src["images"], src["masks"], k),
                       backgrounds(src["images"], src["masks"], j))
    return _split(m, images, src["labels"][:n], src["fg_class"][k], src["bg_class"][j],
                  np.arange(n), k, j)


def npz_splits(spec):
    """(source description, generator of (split, arrays)) for a world from the user's npz."""
    from cgn.imagenet.world import cap, rng_for
    from cgn.io import file_digest
    tr, te = load_world_npz(spec.world, "train file"), load_world_npz(spec.test, "--test file")
    if tr["images"].shape[1:] != te["images"].shape[1:]:
        raise CGNError(f"train images are {list(tr['images'].shape[1:3])} but test images "
                       f"{list(te['images'].shape[1:3])}; both files need one image size")
    size = tr["images"].shape[1]
    if tr["images"].shape[2] != size:
        raise CGNError(f"images are {list(tr['images'].shape[1:3])}; a world needs square images "
                       "(crop or pad them first)")
    if spec.size is not None and spec.size != size:
        raise CGNError(f"--size {spec.size} differs from the files' {size} px; an npz world keeps "
                       "its images' size (drop --size or resize the files)")
    num_classes = int(max(tr["labels"].max(), te["labels"].max())) + 1
    if len(np.unique(te["labels"])) < 3:
        raise CGNError("the test file has fewer than 3 classes; cue-conflict images need a "
                       "background class other than their shape and texture classes")
    n_tr, n_te = cap(spec.n_train, len(tr["labels"])), cap(spec.n_test, len(te["labels"]))
    n_dec = cap(spec.n_decorrelated or n_te, n_tr)
    source = {"train_file": Path(spec.world).name, "train_sha256": file_digest(spec.world),
              "test_file": Path(spec.test).name, "test_sha256": file_digest(spec.test),
              "num_classes": num_classes, "bg_max": BG_MAX, "obj_min": OBJ_MIN,
              "compositing": "cgn.imagenet.world_ops (onion-peel inpainting, mirror-tiled textures)"}

    def head(x: dict, n: int) -> dict:
        return {k: v[:n] for k, v in x.items()}

    def gen():
        tr_h, te_h = head(tr, n_tr), head(te, n_te)
        ar = np.arange(n_tr)
        yield "train", _split(tr_h["masks"], tr_h["images"], tr_h["labels"], tr_h["fg_class"],
                              tr_h["bg_class"], ar, ar, ar)
        ar = np.arange(n_te)
        yield "test", _split(te_h["masks"], te_h["images"], te_h["labels"], te_h["fg_class"],
                             te_h["bg_class"], ar, ar, ar)
        y, present = te_h["labels"], np.unique(te_h["labels"])
        rng = rng_for(spec.seed, "cue_conflict")
        b = draw_class(present, y[:, None], rng, n_te, "cue-conflict texture")
        c = draw_class(present, np.stack([y, b], 1), rng, n_te, "cue-conflict background")
        yield "cue_conflict", _retextured(te_h, n_te, b, c, rng)
        bg_ok = (te_h["masks"] < BG_MAX).any(axis=(1, 2))
        for split in ("mixed_same", "mixed_rand"):
            rng = rng_for(spec.seed, split)
            want = y if split == "mixed_same" else draw_class(np.unique(y[bg_ok]), None, rng, n_te, split)
            j = partner(y, want, rng, usable=bg_ok, what="background source (mask < 26)")
            images = composite(te_h["masks"], te_h["images"].astype(np.float32),
                               backgrounds(te_h["images"], te_h["masks"], j))
            yield split, _split(te_h["masks"], images, y, te_h["fg_class"], te_h["bg_class"][j],
                                ar, ar, j)
        rng = rng_for(spec.seed, "decorrelated")
        present = np.unique(tr_h["labels"])
        b, c = (draw_class(present, None, rng, n_dec, "decorrelated") for _ in range(2))
        yield "decorrelated", _retextured(tr_h, n_dec, b, c, rng)
    return source, gen()
