"""Public files cgn can fetch on a connected machine, and how they are checked.

The registry :data:`ASSETS` is a plain table: one :class:`Asset` row per name, each a tuple of
:class:`RemoteFile` (mirrors tried in order, a destination relative to the download root, and
what is known about its digest). Append rows for new assets.

Digests, honestly:

- ``sha256``: a full published digest; the file must match it.
- ``sha256_prefix``: a published *prefix* of the sha256 (torchvision puts the first 8 hex digits
  in its file names, e.g. ``vgg16-397923af.pth``); the file's sha256 must start with it.
- neither (BigGAN, U²-Net and the authors' CGN weights: no digest is published for them): the
  first successful download records its sha256 next to the file (``<file>.sha256``) and prints
  it; later runs verify against that record (trust on first use). Compare the printed digest
  with a colleague's copy when it matters.

The download root is ``--dir`` or ``cgn_home()`` (``$CGN_HOME``, default ``~/.cache/cgn``).
Files land atomically (temporary file, verified, then renamed); archives marked ``extract`` are
unpacked after verification (members may not escape the target folder).
"""

from __future__ import annotations

import os
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from cgn.core.progress import progress
from cgn.errors import CGNError
from cgn.io import file_digest, write_text_atomic
from cgn.paths import cgn_home


@dataclass(frozen=True)
class RemoteFile:
    urls: tuple[str, ...]
    dest: str                          # relative to the download root
    sha256: str | None = None          # full published digest
    sha256_prefix: str | None = None   # published digest prefix (torchvision file names)
    extract_to: str | None = None      # unpack this archive into this folder (relative to root)


@dataclass(frozen=True)
class Asset:
    name: str
    files: tuple[RemoteFile, ...]
    description: str
    note: str = ""

    def paths(self, root: Path) -> list[Path]:
        return [root / f.dest for f in self.files]


def _gdrive(file_id: str) -> tuple[str, ...]:
    # The "usercontent" endpoint with confirm=t skips the large-file warning page.
    return (f"https://drive.usercontent.google.com/download?id={file_id}&export=download&confirm=t",
            f"https://drive.google.com/uc?export=download&id={file_id}&confirm=t")


_S3 = "https://s3.amazonaws.com/models.huggingface.co/biggan"

ASSETS: list[Asset] = [
    Asset("biggan-deep-256", (
        RemoteFile((f"{_S3}/biggan-deep-256-config.json",), "weights/biggan-deep-256/config.json"),
        RemoteFile((f"{_S3}/biggan-deep-256-pytorch_model.bin",), "weights/biggan-deep-256/pytorch_model.bin"),
    ), "BigGAN-deep 256 px, PyTorch port of the TF-Hub model (config.json + pytorch_model.bin, ~234 MB)",
        note="no published digest: recorded on first download"),
    Asset("u2net", (
        RemoteFile(_gdrive("1ao1ovG1Qtx4b7EoskHXmi2E9rp5CHLcZ") + _gdrive("1VkKexkWh5SeB8fgxAZxLKgmmvDXhVYUy"),
                   "weights/u2net.pth"),
    ), "U^2-Net salient object detector, full model (u2net.pth, 176.3 MB)",
        note="Google Drive (U^2-Net release; the CGN release's copy as a second mirror); no published digest"),
    Asset("u2netp", (
        RemoteFile(_gdrive("1rbSTGKAE-MTxBYHd-51l2hMOQPT_7EPy"), "weights/u2netp.pth"),
    ), "U^2-Net small model (u2netp.pth, 4.7 MB)", note="Google Drive; no published digest"),
    Asset("cgn-imagenet", (
        RemoteFile(_gdrive("12yVFHPUjKmUFGnO2D4xVlTSpF8CUj136"), "weights/cgn.pth"),
    ), "the authors' trained ImageNet CGN (cgn.pth: biggan_GT, f_shape, f_text, f_bg, u2net)",
        note="Google Drive (CGN release); no published digest"),
    Asset("vgg16", (
        RemoteFile(("https://download.pytorch.org/models/vgg16-397923af.pth",),
                   "weights/vgg16-397923af.pth", sha256_prefix="397923af"),
    ), "torchvision VGG16 ImageNet weights (style/texture losses)"),
    Asset("inception-v3", (
        RemoteFile(("https://download.pytorch.org/models/inception_v3_google-0cc3c7bd.pth",),
                   "weights/inception_v3_google-0cc3c7bd.pth", sha256_prefix="0cc3c7bd"),
    ), "torchvision Inception-v3 ImageNet weights (Inception Score)"),
    Asset("cue-conflict", (
        RemoteFile(("https://github.com/rgeirhos/texture-vs-shape/archive/"
                    "ef10e3ed6e41da1af0f0f8e0dfcea40ed838ee25.zip",
                    "https://github.com/rgeirhos/texture-vs-shape/archive/refs/heads/master.zip"),
                   "data/texture-vs-shape.zip", extract_to="data/cue-conflict"),
    ), "Geirhos et al. cue-conflict stimuli (1,280 PNGs in the texture-vs-shape repository; "
       "--cue-conflict data/cue-conflict finds stimuli/style-transfer-preprocessed-512)",
        note="GitHub archive of rgeirhos/texture-vs-shape (CC BY 4.0); no published digest"),
    Asset("in9", (
        RemoteFile(("https://github.com/MadryLab/backgrounds_challenge/releases/download/data/"
                    "backgrounds_challenge_data.tar.gz",),
                   "data/backgrounds_challenge_data.tar.gz", extract_to="data/in9"),
    ), "IN-9 backgrounds challenge test sets (original, mixed_same, mixed_rand, ...; "
       "--in9 data/in9 finds bg_challenge/<variant>/val)",
        note="MadryLab/backgrounds_challenge release; no published digest"),
]


def get_asset(name: str, assets: list[Asset] | None = None) -> Asset:
    table = ASSETS if assets is None else assets
    for a in table:
        if a.name == name:
            return a
    raise CGNError(f"unknown asset {name!r}; available: {', '.join(a.name for a in table)} "
                   "(cgn download --list)")


def download_root(directory: str | os.PathLike | None = None) -> Path:
    return Path(directory).expanduser() if directory else cgn_home()


def _record_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def verify(path: Path, rf: RemoteFile) -> tuple[str, str]:
    """(sha256, how it was checked); raises CGNError on a mismatch."""
    digest = file_digest(path, "sha256")
    if rf.sha256:
        if digest != rf.sha256.lower():
            raise CGNError(f"{path}: sha256 {digest} is not the published {rf.sha256}; the file is "
                           "corrupt or was replaced: delete it and download again")
        return digest, "published sha256"
    if rf.sha256_prefix:
        if not digest.startswith(rf.sha256_prefix.lower()):
            raise CGNError(f"{path}: sha256 {digest[:16]}... does not start with the published "
                           f"prefix {rf.sha256_prefix}; delete it and download again")
        return digest, f"published sha256 prefix {rf.sha256_prefix}"
    rec = _record_path(path)
    if rec.is_file():
        want = rec.read_text().split()[0]
        if digest != want:
            raise CGNError(f"{path}: sha256 {digest} differs from the one recorded at its first "
                           f"download ({want}); delete both files and download again")
        return digest, "recorded sha256 (no published digest)"
    write_text_atomic(rec, f"{digest}  {path.name}\n")
    return digest, "no published digest; sha256 recorded now"


def _fetch(url: str, target: Path) -> None:
    req = urllib.request.Request(url, headers={"User-Agent": "cgn-download"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        ctype = resp.headers.get("Content-Type", "") if hasattr(resp, "headers") else ""
        if url.startswith("http") and "text/html" in ctype:
            raise CGNError(f"{url} returned a web page instead of the file (Google Drive quota or "
                           "confirmation page); download it in a browser and place it at "
                           f"{target}")
        total = int(resp.headers.get("Content-Length", 0) or 0) or None
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as f, progress(total=total, desc=target.name, unit="B",
                                                    unit_scale=True) as bar:
                while chunk := resp.read(1 << 20):
                    f.write(chunk)
                    bar.update(len(chunk))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def _safe_extract(archive: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()

    def inside(name: str) -> bool:
        return (root / name).resolve().is_relative_to(root)

    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as z:
            bad = [n for n in z.namelist() if not inside(n)]
            if bad:
                raise CGNError(f"{archive}: member {bad[0]!r} would land outside {dest}; refusing")
            z.extractall(dest)
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as t:
            members = t.getmembers()
            bad = [m.name for m in members if not inside(m.name) or m.issym() or m.islnk()
                   or m.isdev()]
            if bad:
                raise CGNError(f"{archive}: member {bad[0]!r} is a link or lands outside {dest}; refusing")
            t.extractall(dest, members=members)
    else:
        raise CGNError(f"{archive} is neither a zip nor a tar archive")


def download(name: str, directory: str | os.PathLike | None = None, *, force: bool = False,
             assets: list[Asset] | None = None, log=print) -> list[Path]:
    """Fetch (or verify, when present) every file of asset ``name``; returns their paths."""
    asset = get_asset(name, assets)
    root = download_root(directory)
    paths = []
    for rf in asset.files:
        target = root / rf.dest
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_file() and not force:
            digest, how = verify(target, rf)
            log(f"{name}: {target} present ({how}: {digest[:16]}...)")
        else:
            if force:
                target.unlink(missing_ok=True)
                _record_path(target).unlink(missing_ok=True)
            errors = []
            for url in rf.urls:
                try:
                    _fetch(url, target)
                    break
                except (urllib.error.URLError, OSError, ValueError) as e:
                    errors.append(f"{url.split('?')[0]}: {type(e).__name__}: {str(e)[:80]}")
            else:
                raise CGNError(f"{name}: could not download {rf.dest} ({'; '.join(errors)}); check "
                               f"the connection, or fetch it by hand and place it at {target}")
            try:
                digest, how = verify(target, rf)
            except CGNError:
                target.unlink(missing_ok=True)
                raise
            log(f"{name}: downloaded {target} ({how}: {digest})")
        if rf.extract_to:
            dest = root / rf.extract_to
            marker = dest / f".extracted-{target.name}"
            if not marker.is_file() or force:
                _safe_extract(target, dest)
                write_text_atomic(marker, file_digest(target, "sha256") + "\n")
                log(f"{name}: unpacked into {dest}")
        paths.append(target)
    return paths


def remove_partial(directory: str | os.PathLike | None = None) -> int:
    """Delete leftover ``*.part`` files of interrupted downloads under the root."""
    root = download_root(directory)
    n = 0
    for p in root.rglob(".*.part"):
        p.unlink(missing_ok=True)
        n += 1
    return n
