"""Draws and mask compositing shared by the world builders (:mod:`cgn.imagenet.world`).

Pixel arithmetic runs on float32 values in 0..255 and is rounded to uint8 once at the end, so a
mean of equal pixel values is that value exactly. The alpha of an image is ``mask / 255``.

How a world built from a user's npz gets its evaluation images (docs/world.md):

- **background of image j**: the pixels with ``mask < BG_MAX`` (alpha < 0.1) are kept; the rest
  (the object and its soft edge) is filled by *onion-peel inpainting*: repeatedly, every missing
  pixel with at least one known 4-neighbour takes the mean of its known neighbours, until the
  image is full. Every filled value is thus a mean of j's own background pixels.
- **texture of image k**: the same inpainting grows k's object core (``mask >= OBJ_MIN``, alpha
  >= 0.5) over the whole image; the bounding box of the core is cut out and tiled over the
  image size by mirroring. Every pixel of the tile is an object pixel of k or a mean of them.
- **composite**: ``x = a_i * F + (1 - a_i) * B`` with ``a_i`` the alpha of the image whose shape
  is used (:func:`cgn.core.composer.compose`).
"""

from __future__ import annotations

import numpy as np
import torch

from cgn.core.composer import compose
from cgn.errors import CGNError

BG_MAX = 26    # mask < 26 (alpha < 0.1): a background pixel a background may be built from
OBJ_MIN = 128  # mask >= 128 (alpha >= 0.5): an object pixel a texture may be built from
CHUNK = 1024   # images inpainted at a time (bounds memory; results do not depend on it)


def draw_class(pool: np.ndarray, exclude: np.ndarray | None, rng: np.random.Generator,
               n: int, what: str) -> np.ndarray:
    """For each of ``n`` items, a class drawn uniformly from ``pool`` minus that item's row of
    ``exclude`` ([n, e] classes, or None). One uniform number per item, whatever the pool."""
    pool = np.asarray(pool, dtype=np.int64)
    u = rng.random(n)
    allowed = np.ones((n, len(pool)), dtype=bool)
    if exclude is not None:
        allowed &= ~(pool[None, :, None] == np.asarray(exclude)[:, None, :]).any(axis=2)
    m = allowed.sum(axis=1)
    if n and m.min() == 0:
        raise CGNError(f"{what}: no class left to draw from (classes available: {pool.tolist()}); "
                       "the world needs at least 3 classes with usable images")
    r = np.minimum((u * m).astype(np.int64), m - 1)
    return pool[np.argmax(np.cumsum(allowed, axis=1) > r[:, None], axis=1)]


def partner(labels: np.ndarray, want: np.ndarray, rng: np.random.Generator, *,
            usable: np.ndarray | None = None, what: str = "image") -> np.ndarray:
    """For each item i, an index j drawn uniformly among the images with ``labels[j] ==
    want[i]`` (and ``usable[j]``), j != i unless i is the only one."""
    n = len(want)
    u = rng.random(n)
    ok = np.ones(len(labels), dtype=bool) if usable is None else usable
    out = np.empty(n, dtype=np.int64)
    for c in np.unique(want):
        members = np.flatnonzero((labels == c) & ok)
        sel = np.flatnonzero(want == c)
        if len(members) == 0:
            raise CGNError(f"no usable {what} of class {int(c)} (needs an image of that class whose "
                           "mask leaves such pixels); check the masks or add images of that class")
        pos = np.searchsorted(members, sel)
        self_in = (pos < len(members)) & (members[np.minimum(pos, len(members) - 1)] == sel)
        k = np.maximum(len(members) - self_in, 1)
        q = np.minimum((u[sel] * k).astype(np.int64), k - 1)
        q += self_in & (q >= pos) & (len(members) > 1)
        out[sel] = members[q]
    return out


def inpaint(values: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Onion-peel inpainting. ``values`` float32 [N, H, W, 3], ``known`` bool [N, H, W]; returns
    the images with every unknown pixel filled (an image with no known pixel stays zero)."""
    v = np.where(known[..., None], values, 0.0).astype(np.float32)
    k = known.astype(np.float32)
    done = known.copy()
    while not done.all():
        s = np.zeros_like(v)
        c = np.zeros_like(k)
        s[:, 1:] += v[:, :-1]
        c[:, 1:] += k[:, :-1]
        s[:, :-1] += v[:, 1:]
        c[:, :-1] += k[:, 1:]
        s[:, :, 1:] += v[:, :, :-1]
        c[:, :, 1:] += k[:, :, :-1]
        s[:, :, :-1] += v[:, :, 1:]
        c[:, :, :-1] += k[:, :, 1:]
        new = ~done & (c > 0)
        if not new.any():
            break
        v[new] = s[new] / c[new][:, None]
        k[new] = 1.0
        done |= new
    return v


def backgrounds(images: np.ndarray, masks: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """float32 [len(idx), H, W, 3]: the background of each image ``idx`` with its object filled."""
    out = np.empty((len(idx),) + images.shape[1:], dtype=np.float32)
    for a in range(0, len(idx), CHUNK):
        sl = idx[a:a + CHUNK]
        out[a:a + CHUNK] = inpaint(images[sl].astype(np.float32), masks[sl] < BG_MAX)
    return out


def texture_tiles(images: np.ndarray, masks: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """float32 [len(idx), H, W, 3]: a mirror-tiled texture of the object pixels of each image."""
    h, w = images.shape[1:3]
    uniq, inverse = np.unique(idx, return_inverse=True)
    tiles = np.empty((len(uniq), h, w, 3), dtype=np.float32)
    for a in range(0, len(uniq), CHUNK):
        sl = uniq[a:a + CHUNK]
        core = masks[sl] >= OBJ_MIN
        grown = inpaint(images[sl].astype(np.float32), core)
        for t, (g, m) in enumerate(zip(grown, core)):
            rows, cols = np.flatnonzero(m.any(axis=1)), np.flatnonzero(m.any(axis=0))
            crop = g[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
            tiles[a + t] = np.pad(crop, ((0, h - crop.shape[0]), (0, w - crop.shape[1]), (0, 0)),
                                  mode="symmetric")
    return tiles[inverse.reshape(-1)]


def composite(masks: np.ndarray, fg: np.ndarray, bg: np.ndarray) -> np.ndarray:
    """uint8 [N, H, W, 3] = round(a * fg + (1 - a) * bg), ``a = masks / 255``; fg, bg in 0..255."""
    a = torch.from_numpy(masks.astype(np.float32) / 255.0)[:, None]
    f = torch.from_numpy(np.ascontiguousarray(fg, dtype=np.float32)).permute(0, 3, 1, 2)
    b = torch.from_numpy(np.ascontiguousarray(bg, dtype=np.float32)).permute(0, 3, 1, 2)
    return compose(a, f, b).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
