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

# The authors' repository at the commit of their release: the three MNIST CGNs, the DTD
# textures of Wildlife MNIST and the fixed noise of the ImageNet sample sheets. The digests are
# those of the released files (the MNIST CGNs' md5s are published: 6711f40b..., 1fc47ee2...,
# eaff11c3...; the sha256 below are of the same bytes).
_CGN_REPO = "autonomousvision/counterfactual_generative_networks"
_CGN_COMMIT = "1cba9d4ed334a436d9d1d2e1a3ab2a71235c3d41"


def _cgn_repo(path: str) -> tuple[str, ...]:
    return (f"https://raw.githubusercontent.com/{_CGN_REPO}/{_CGN_COMMIT}/{path}",
            f"https://github.com/{_CGN_REPO}/raw/{_CGN_COMMIT}/{path}")


_MNIST_CGNS = {  # release name: (experiment folder, sha256)
    "colored_mnist.pth": ("cgn_colored_MNIST", "6b178e7c1924b9efc532c467e7f0b77d2702efb536de9816bbd7e92c26d9b3fe"),
    "double_colored_mnist.pth": ("cgn_double_colored_MNIST", "7aa06c907f099c63a26127164a38d2ab353f1cdcafabdf8ca9303a0e9197b933"),
    "wildlife_mnist.pth": ("cgn_wildlife_MNIST", "db5bc3108f7bfbd74a85e2b267e65e95bd918920a02fd8de64c947fd8a0015f0"),
}
_TEXTURES = {  # file (object/ or background/): sha256
    "object/0_striped_0001.jpg": "41b22c1a1e5edba336302b2ec175fc280647aaae6ebbbbfa9cfc433596305aff",
    "object/1_striped_0091.jpg": "d6020007460a7e41a5d654e1c3b2b2ef8243e44aeede630aaa2947c0aedfddb9",
    "object/2_striped_0008.jpg": "2ab2fc76e9ffd495ddf690a3d0bdf75158fcc2c73fb24c420ca238ce36a87ca0",
    "object/3_striped_0043.jpg": "b9ab6ae10ddb6381a8021305fd41cdf2e575d9a829e2b79b9db218d89ac66537",
    "object/4_striped_0092.jpg": "90e4b7683d348fb6d940abca13be4ad619b379ad9b3e2c96fab9f7d4dc4214ad",
    "object/5_striped_0028.jpg": "b32940be4462eb40879905f13dfa2753d1e4b044904ed6390da6a8d35735d6d2",
    "object/6_striped_0097.jpg": "bd362eefa810a35a24eeffe542a9727c3953ded745fa68e167b68a718b71d731",
    "object/7_striped_0004.jpg": "0943891ac43a4acd5d8a874f121ef862a97a1de000c3fb1d936bbe2c6d027c2a",
    "object/8_striped_0125.jpg": "edfe305c0e8f9dfa9d1576c9a32ab3f29e74ea1e8b5bab91ab4b9b83aec902e2",
    "object/9_striped_0033.jpg": "d22a5fcf1ce2ea648c506d13f31a50eaf2260b903256e40fec32995b531d6933",
    "background/0_veined_0066.jpg": "253effebdb863d8fe4254fd9c3df21e36c9222fad2f454639ad8d1e8b87ed96a",
    "background/1_veined_0067.jpg": "67e555623f1fff4a9abda6036e6c76ce6cbcb801ff240e04d8848b475709a4dd",
    "background/2_veined_0073.jpg": "91b3dc279226199de4dc03b56da0ce892e9d3f10b4b5136037f28de906d2276d",
    "background/3_veined_0180.jpg": "9dbe19a8284cd2b6c1bef09928acdbd9ccdf9ded707ddb6358221968165ce458",
    "background/4_veined_0131.jpg": "9e6d2ae36b8755d2a530005b905c2a3f4e1bc94b1535b6fe6e1c553acfc2b54b",
    "background/5_veined_0157.jpg": "7e34b2b445f50c7af9c86262be9af39c3ce43c61d039d8c44a4afba89d077ae1",
    "background/6_veined_0158.jpg": "4f992fd0da74cc53d37c065699a73af9e42c06dc38b2a2f22673452458708ce6",
    "background/7_veined_0104.jpg": "c43441149846718186ab4c01f61c476c96c748c1149defaf5366e2534431954c",
    "background/8_veined_0188.jpg": "d32d40f567ee3f58d421b9e02265ce1c8f0fe1ed91d8dedaa282cdc114161f39",
    "background/9_veined_0189.jpg": "ab3144757372f34153b29ddf1e2e80cbdf6079bb18233b220ad5dda594829d74",
}

ASSETS: list[Asset] = [
    Asset("cgn-mnist", tuple(
        RemoteFile(_cgn_repo(f"mnists/experiments/{folder}/weights/ckp.pth"), f"weights/mnist/{name}", sha256=sha)
        for name, (folder, sha) in _MNIST_CGNS.items()),
        "the authors' three trained MNIST CGNs (colored, double-colored, wildlife; 2.6 MB each): "
        "--cgn reference DIR / --reference-format take the folder weights/mnist"),
    Asset("mnist-textures", tuple(
        RemoteFile(_cgn_repo(f"mnists/data/textures/{name}"), f"data/textures/{name}", sha256=sha)
        for name, sha in _TEXTURES.items()),
        "the DTD textures of Wildlife MNIST (10 striped digit textures, 10 veined backgrounds): "
        "--textures data/textures", note="DTD images, research use, as shipped with the CGN release"),

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
    Asset("imagenet-sheet-noise", (
        RemoteFile(_cgn_repo("imagenet/data/u_fixed.pth"), "weights/imagenet_u_fixed.pth",
                   sha256="407932ee0990c3319d392699919157d0b642a79502594ff8d8fc224499083618"),
    ), "the authors' fixed noise of the ImageNet CGN's sample sheets (u_fixed.pth, [1, 128], 1 KB): "
       "the default of train.fixed_noise"),
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
    ), "torchvision Inception-v3 ImageNet weights (IS/FID with --inception torchvision)"),
    Asset("inception-tf", (
        RemoteFile(("https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
                    "weights-inception-2015-12-05-6726825d.pth",
                    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
                    "pt_inception-2015-12-05-6726825d.pth"),
                   "weights/weights-inception-2015-12-05-6726825d.pth", sha256_prefix="6726825d"),
    ), "TF Inception-v3 graph of 2015-12-05 converted to PyTorch, as torch-fidelity uses it for "
       "IS/FID (95 MB; --inception tf, the default)",
        note="torch-fidelity's release (pytorch-fid's copy of the same conversion as a second mirror); "
             "the sha256 prefix in its name is checked"),
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
