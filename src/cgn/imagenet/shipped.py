"""Stand-ins of the default world shipped with cgn, installed into the stand-in cache on first use.

``cgn reproduce imagenet`` trains its stand-ins (BigGAN-deep, U2-Net, the four judges) once and
caches them under ``$CGN_HOME/stand-ins/<world key>/<kind>-<preset>-<config digest>/``
(:mod:`cgn.imagenet.reproduce_standins`). For the default world (Wildlife MNIST at 32 px, seed 0,
the presets' configs) cgn ships the stand-ins it trained itself, so that a run on a new machine
starts from them instead of training them for about an hour. A shipped stand-in is used only
where its world key, preset and config digest are the ones the run asks for; anything else is
trained as before.

A shipped stand-in is one *pack*: a cgn checkpoint of kind ``world-stand-in`` whose ``extra``
holds the files of the finished run that the pipeline reads (``results.json``, the weights in the
public layouts, the BigGAN's final sample sheet). Weights are stored as float16 (they are float32
in the run; installing casts them back), JSON as text, images as bytes; absolute paths of the
training machine are cut to their last part. A pack over :data:`PART_BYTES` is stored in parts
(``<name>.part0``, ``.part1``, ...) so that no file of the package is large; the sha256 of every
part and of the joined pack are written below and checked before anything is unpickled.

    python scripts/ship_stand_ins.py --cache $CGN_HOME/stand-ins/<world key>   # writes the packs
"""

from __future__ import annotations

import hashlib
import io
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from cgn.errors import CGNError
from cgn.io import portable_paths as _portable, write_bytes_atomic, write_text_atomic

PACK_KIND = "world-stand-in"
PACK_DIR = Path(__file__).with_name("stand_ins")
PART_BYTES = 1_500_000


@dataclass(frozen=True)
class ShippedStandIn:
    kind: str                  # biggan, u2net or judges
    world_key: str             # the first 16 hex digits of the world key it was trained on
    preset: str
    config_digest: str         # of its resolved config (reproduce_standins._digest)
    file: str                  # pack name in PACK_DIR (stored as parts when large)
    sha256: str                # of the joined pack
    parts: tuple[str, ...] = ()  # sha256 of each part; empty: the pack is one file

    @property
    def folder_name(self) -> str:
        return f"{self.kind}-{self.preset}-{self.config_digest}"


# Filled in by scripts/ship_stand_ins.py, which packs a finished cache and prints these entries.
SHIPPED: tuple[ShippedStandIn, ...] = (
    ShippedStandIn('biggan', 'ee4827ac5b772ad3', 'world-32', '7424d0767ae4', 'biggan-world-32.pt',
                   'cdff4d34ad3311fc64b3462b689eab695b125d7041fea1bafc3456a4323898d8',
                   parts=(
                       '7907107d51101c0e63935a737474f5ccf16d8a885e03f80d394f1c01a14c6d0f',
                       'c06c47e650635c118434ab3613e1559e19af7c92f19f1a2732c633755d605836',
                       'e051c07b83854b685b2420ea50ef7133e21e6432b20b91109f6ce419c51e76e7',
                       '3ad12f9ceecc59d43376e7a23ec3d81807bc979c8ed2b15da7e2f1530253b8af',
                   )),
    ShippedStandIn('judges', 'ee4827ac5b772ad3', 'judges-32', '454a09a4f990', 'judges-judges-32.pt',
                   '605484929f7053c1a60d058997cd813d347377b8f0b03cd585f4cc2049fd0b73',
                   parts=()),
    ShippedStandIn('u2net', 'ee4827ac5b772ad3', 'u2netp-32', 'b264bc4f9a92', 'u2net-u2netp-32.pt',
                   '2482632179e0ab13e58bd66d4cdcee8c4a4ab6de1e5d7b437182118766418f03',
                   parts=(
                       'bb0fb2edb722d7b90864fec1436dfec8d179e75fcfd203ab5bd4b98936669658',
                       'adbe2a4b0e63089fedd5b7472fb46602507826ce4dd4c06f20a288a59b0e9af4',
                   )),
)


def files_of(kind: str, folder: Path) -> list[str]:
    """The files of a finished stand-in run that the pipeline reads, relative to ``folder``."""
    from cgn.imagenet.reproduce_standins import JUDGE_FILES
    if kind == "biggan":
        names = ["biggan/config.json", "biggan/pytorch_model.bin", "samples/final.png"]
    elif kind == "u2net":
        res = json.loads((folder / "results.json").read_text())
        names = [Path(res["weights"]).name]
    elif kind == "judges":
        names = [f"{j}.pt" for j in JUDGE_FILES]
    else:
        raise CGNError(f"unknown stand-in kind {kind!r}: biggan, u2net or judges")
    return ["results.json", *[n for n in names if (folder / n).is_file() or n != "samples/final.png"]]


def _cast(obj, dtype: torch.dtype, source: torch.dtype):
    """``obj`` (a nested dict / list of tensors and plain values) with every ``source`` tensor cast
    to ``dtype`` and every absolute path cut to its last part."""
    if isinstance(obj, torch.Tensor):
        if obj.is_floating_point() and obj.dtype not in (source, dtype):
            raise CGNError(f"a {obj.dtype} tensor in a stand-in; only float32 weights are packed")
        return obj.to(dtype) if obj.dtype == source else obj
    if isinstance(obj, dict):
        return {k: _cast(v, dtype, source) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cast(v, dtype, source) for v in obj)
    return _portable(obj)


def pack(kind: str, folder: Path, out: Path, *, provenance: dict) -> dict:
    """Write the pack of the finished stand-in run in ``folder`` to ``out`` (in parts when large);
    returns {"sha256", "parts", "bytes", "files"}."""
    from cgn.core.checkpoint import save_checkpoint, torch_load
    files: dict[str, dict] = {}
    for rel in files_of(kind, folder):
        p = folder / rel
        if p.suffix == ".json":
            files[rel] = {"json": json.dumps(_portable(json.loads(p.read_text())), indent=1)}
        elif p.suffix == ".png":
            files[rel] = {"bytes": torch.frombuffer(bytearray(p.read_bytes()), dtype=torch.uint8)}
        else:
            files[rel] = {"torch": _cast(torch_load(p, what=f"{kind} file"), torch.float16, torch.float32)}
    tmp = out.with_name(out.name + ".tmp")
    save_checkpoint(tmp, kind=PACK_KIND, step=0, config={"kind": kind},
                    model={}, extra={"files": files, "provenance": _portable(provenance)})
    data = tmp.read_bytes()
    tmp.unlink()
    for old in out.parent.glob(out.name + ".part*"):
        old.unlink()
    if out.exists():
        out.unlink()
    parts: list[str] = []
    if len(data) <= PART_BYTES:
        write_bytes_atomic(out, data)
    else:
        for i, a in enumerate(range(0, len(data), PART_BYTES)):
            chunk = data[a:a + PART_BYTES]
            write_bytes_atomic(out.with_name(f"{out.name}.part{i}"), chunk)
            parts.append(hashlib.sha256(chunk).hexdigest())
    return {"sha256": hashlib.sha256(data).hexdigest(), "parts": parts, "bytes": len(data),
            "files": sorted(files)}


def find(kind: str, world_key: str, preset: str, config_digest: str,
         registry: tuple[ShippedStandIn, ...] | None = None) -> ShippedStandIn | None:
    for entry in SHIPPED if registry is None else registry:
        if (entry.kind, entry.world_key, entry.preset, entry.config_digest) == \
                (kind, world_key[:16], preset, config_digest):
            return entry
    return None


def read_pack(entry: ShippedStandIn, directory: Path | None = None) -> dict:
    """The verified pack of ``entry`` (one-line errors for a missing or damaged file)."""
    from cgn.core.checkpoint import load_checkpoint
    directory = PACK_DIR if directory is None else directory
    names = [f"{entry.file}.part{i}" for i in range(len(entry.parts))] if entry.parts else [entry.file]
    chunks = []
    for i, name in enumerate(names):
        p = directory / name
        if not p.is_file():
            raise CGNError(f"the shipped {entry.kind} stand-in ({p}) is missing from this installation; "
                           "reinstall cgn, or give the stand-in by path")
        data = p.read_bytes()
        want = entry.parts[i] if entry.parts else entry.sha256
        if hashlib.sha256(data).hexdigest() != want:
            raise CGNError(f"the shipped stand-in file {p} is damaged (its sha256 differs from the one "
                           "recorded in cgn); reinstall cgn")
        chunks.append(data)
    data = b"".join(chunks)
    if hashlib.sha256(data).hexdigest() != entry.sha256:
        raise CGNError(f"the parts of the shipped {entry.kind} stand-in in {directory} do not join to "
                       "the recorded pack; reinstall cgn")
    if not entry.parts:
        return load_checkpoint(directory / entry.file, kind=PACK_KIND)
    with tempfile.TemporaryDirectory() as d:
        joined = Path(d) / entry.file
        joined.write_bytes(data)
        return load_checkpoint(joined, kind=PACK_KIND)


def install(entry: ShippedStandIn, folder: Path, directory: Path | None = None) -> dict:
    """Write the stand-in of ``entry`` into the cache ``folder`` as its finished run would have
    left it (weights back in float32, results.json last, so an interrupted install is not taken
    for a finished run); returns the pack's provenance."""
    ck = read_pack(entry, directory)
    files: dict = ck["extra"]["files"]
    order = [r for r in files if r != "results.json"] + ["results.json"]
    for rel in order:
        item, dst = files[rel], folder / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if "json" in item:
            write_text_atomic(dst, item["json"])
        elif "bytes" in item:
            write_bytes_atomic(dst, item["bytes"].numpy().tobytes())
        else:
            buf = io.BytesIO()
            torch.save(_cast(item["torch"], torch.float32, torch.float16), buf)
            write_bytes_atomic(dst, buf.getvalue())
    return ck["extra"].get("provenance", {})
