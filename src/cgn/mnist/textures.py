"""Texture sets for Wildlife MNIST: one object and one background texture per class.

Either a folder in the original layout (``object/<class>_*.jpg`` = digit textures, DTD
"striped"; ``background/<class>_*.jpg`` = background textures, DTD "veined"), or, with no folder,
a built-in procedural set: 10 striped object textures and 10 veined background textures drawn
from fixed formulas, so the dataset can be built anywhere. Every output names the set used.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from cgn.errors import CGNError

TEXTURE_SIZE = 150  # the original resizes every texture to 150x150 (nearest)


@dataclass(frozen=True)
class TextureSet:
    objects: np.ndarray      # uint8 [10, 150, 150, 3], index = class
    backgrounds: np.ndarray  # uint8 [10, 150, 150, 3]
    name: str                # "procedural" or "folder:<name>:<digest12>"


def _as_texture(img: Image.Image) -> np.ndarray:
    """An image as a texture: RGB uint8 [TEXTURE_SIZE, TEXTURE_SIZE, 3], resized by PIL's nearest."""
    return np.asarray(img.convert("RGB").resize((TEXTURE_SIZE, TEXTURE_SIZE), Image.NEAREST), dtype=np.uint8)


def load_texture_folder(folder: str | os.PathLike) -> TextureSet:
    folder = Path(folder)
    if not folder.is_dir():
        raise CGNError(f"texture folder {folder} does not exist; pass a folder with object/ and "
                       "background/ sub-folders, or omit --textures for the built-in procedural set")
    h = hashlib.sha256()
    stacks = {}
    for part in ("object", "background"):
        imgs = []
        for cls in range(10):
            files = [f for f in sorted((folder / part).glob(f"{cls}_*.jpg")) +
                     sorted((folder / part).glob(f"{cls}_*.png")) if f.is_file()]
            if not files:
                raise CGNError(f"texture folder {folder} has no {part}/{cls}_*.jpg; the layout is "
                               "object/<class>_<name>.jpg and background/<class>_<name>.jpg for classes 0-9")
            data = files[0].read_bytes()
            h.update(data)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("error", Image.DecompressionBombWarning)
                    with Image.open(files[0]) as im:
                        imgs.append(_as_texture(im))
            except (Image.DecompressionBombWarning, Image.DecompressionBombError):
                raise CGNError(f"{files[0]} is far too large for a texture (a decompression bomb?); "
                               "use an image of at most a few megapixels") from None
            except (OSError, ValueError):
                raise CGNError(f"{files[0]} is not a readable image; replace it") from None
        stacks[part] = np.stack(imgs)
    return TextureSet(stacks["object"], stacks["background"], f"folder:{folder.name}:{h.hexdigest()[:12]}")


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    i = np.floor(h * 6).astype(int) % 6
    f = h * 6 - np.floor(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    r = np.choose(i, [v, q, p, p, t, v])
    g = np.choose(i, [t, v, v, q, p, p])
    b = np.choose(i, [p, p, t, v, v, q])
    return np.stack([r, g, b], -1)


def procedural_textures() -> TextureSet:
    """10 striped object textures and 10 veined background textures (deterministic).

    Object texture c: stripes at angle 18°·c with period 6 + (c % 4) * 3 px, alternating two
    colours of hue c/10. Background texture c: marble-like veins, ``|sin(k·x + turbulence)|`` of a
    smooth random field (seed 1000 + c), shaded in a muted colour of hue (c/10 + 0.5) mod 1.
    """
    n = TEXTURE_SIZE
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float64)
    objects, backgrounds = [], []
    for c in range(10):
        ang = np.deg2rad(18.0 * c)
        period = 6 + (c % 4) * 3
        u = xx * np.cos(ang) + yy * np.sin(ang)
        stripe = (0.5 + 0.5 * np.sin(2 * np.pi * u / period)) ** 0.5
        hue = np.full_like(stripe, c / 10)
        rgb = _hsv_to_rgb(hue, np.full_like(stripe, 0.85), 0.25 + 0.75 * stripe)
        objects.append(rgb)

        rng = np.random.default_rng(1000 + c)
        coarse = rng.standard_normal((10, 10))
        field = np.asarray(Image.fromarray(coarse.astype(np.float32), mode="F").resize((n, n), Image.BICUBIC))
        k = 2 * np.pi * (2 + c % 3) / n
        veins = np.abs(np.sin(k * (xx + yy * (0.3 + 0.1 * c)) + 3.0 * field))
        shade = 0.35 + 0.6 * veins ** 0.35
        hue_b = np.full_like(shade, (c / 10 + 0.5) % 1.0)
        backgrounds.append(_hsv_to_rgb(hue_b, np.full_like(shade, 0.45), shade))
    to_u8 = lambda a: np.clip(np.round(np.stack(a) * 255), 0, 255).astype(np.uint8)  # noqa: E731
    return TextureSet(to_u8(objects), to_u8(backgrounds), "procedural")


def get_textures(folder: str | os.PathLike | None) -> TextureSet:
    return procedural_textures() if folder is None else load_texture_folder(folder)


def matching_textures(want: str, textures: str | os.PathLike | None, made: str) -> TextureSet:
    """The texture set of ``textures`` (a folder, or None: procedural), checked to be ``want``:
    the set something was ``made`` with ("this world was painted", "that CGN was trained")."""
    if want != "procedural" and not textures:
        raise CGNError(f"{made} with the texture folder {want.split(':')[1]!r}; "
                       "pass the same folder with --textures DIR")
    tex = get_textures(textures or None)
    if tex.name.rsplit(":", 1)[-1] != want.rsplit(":", 1)[-1]:  # the images' digest, not the folder's name
        raise CGNError(f"--textures gives the texture set {tex.name}, but {made} with {want}; "
                       "pass the folder it was made with")
    return tex
