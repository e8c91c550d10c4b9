"""cgn download: digests (full, prefix, recorded on first use), safe unpacking, CLI."""

from __future__ import annotations

import hashlib
import io
import tarfile

import pytest

from cgn.cli import main
from cgn.download import ASSETS, Asset, RemoteFile, download, get_asset
from cgn.errors import CGNError


def _file(tmp_path, name: str, data: bytes):
    p = tmp_path / "remote" / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    return p.as_uri(), hashlib.sha256(data).hexdigest()


def test_registry_names_the_imagenet_weights():
    names = {a.name for a in ASSETS}
    assert {"biggan-deep-256", "u2net", "u2netp", "cgn-imagenet", "vgg16", "inception-v3"} <= names
    assert [f.dest for f in get_asset("biggan-deep-256").files] == [
        "weights/biggan-deep-256/config.json", "weights/biggan-deep-256/pytorch_model.bin"]
    assert get_asset("vgg16").files[0].sha256_prefix == "397923af"
    with pytest.raises(CGNError, match="unknown asset"):
        get_asset("nope")


def test_digests_are_verified(tmp_path):
    url, digest = _file(tmp_path, "a.bin", b"hello")
    bad_url = "file:///nonexistent/really.bin"
    table = [Asset("full", (RemoteFile((bad_url, url), "w/a.bin", sha256=digest),), "full digest"),
             Asset("prefix", (RemoteFile((url,), "w/b.bin", sha256_prefix="0000"),), "wrong prefix"),
             Asset("tofu", (RemoteFile((url,), "w/c.bin"),), "no digest")]
    root = tmp_path / "root"
    logs = []
    (p,) = download("full", root, assets=table, log=logs.append)       # second mirror works
    assert p.read_bytes() == b"hello" and "published sha256" in logs[-1]
    download("full", root, assets=table, log=logs.append)              # present: verified only
    assert "present" in logs[-1]
    with pytest.raises(CGNError, match="prefix"):
        download("prefix", root, assets=table, log=logs.append)
    assert not (root / "w/b.bin").exists()                              # a bad file is not kept
    (c,) = download("tofu", root, assets=table, log=logs.append)
    assert (root / "w/c.bin.sha256").read_text().startswith(digest)
    c.write_bytes(b"tampered")
    with pytest.raises(CGNError, match="recorded"):
        download("tofu", root, assets=table, log=logs.append)
    with pytest.raises(CGNError, match="could not download"):
        download("x", root, assets=[Asset("x", (RemoteFile((bad_url,), "w/x"),), "")], log=logs.append)


def test_archives_unpack_safely(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        info = tarfile.TarInfo("data/ok.txt")
        info.size = 2
        t.addfile(info, io.BytesIO(b"ok"))
    url, digest = _file(tmp_path, "d.tar.gz", buf.getvalue())
    table = [Asset("ds", (RemoteFile((url,), "data/d.tar.gz", sha256=digest, extract_to="data/d"),), "")]
    download("ds", tmp_path / "root", assets=table, log=lambda m: None)
    assert (tmp_path / "root/data/d/data/ok.txt").read_text() == "ok"
    evil = io.BytesIO()
    with tarfile.open(fileobj=evil, mode="w") as t:
        info = tarfile.TarInfo("../escape.txt")
        info.size = 1
        t.addfile(info, io.BytesIO(b"x"))
    url2, digest2 = _file(tmp_path, "e.tar", evil.getvalue())
    table2 = [Asset("evil", (RemoteFile((url2,), "e.tar", sha256=digest2, extract_to="e"),), "")]
    with pytest.raises(CGNError, match="outside"):
        download("evil", tmp_path / "root", assets=table2, log=lambda m: None)
    assert not (tmp_path / "root/escape.txt").exists()


def test_cli_lists_and_reports(tmp_path, capsys):
    assert main(["download", "--list", "--dir", str(tmp_path)]) == 0
    assert "biggan-deep-256" in capsys.readouterr().out
    assert main(["download", "no-such-asset"]) == 2


def test_authors_mnist_assets_are_pinned_to_the_released_files(shared_data, tmp_path):
    """The pinned digests are those of the released files; a download (here from a local mirror)
    gives a texture folder and CGNs that load, under the release's names or the repository's."""
    from dataclasses import replace

    from cgn.mnist.reference import load_reference
    from cgn.mnist.textures import load_texture_folder
    ref = shared_data / "cgn_reference"

    def local(asset, source):
        return replace(asset, files=tuple(replace(f, urls=(source(f).as_uri(),)) for f in asset.files))

    cgns = local(get_asset("cgn-mnist"), lambda f: ref / "checkpoints" / f.dest.split("/")[-1])
    textures = local(get_asset("mnist-textures"), lambda f: ref / "textures" / f.dest.split("textures/")[1])
    root = tmp_path / "home"
    paths = download("cgn-mnist", root, assets=[cgns], log=lambda m: None)
    download("mnist-textures", root, assets=[textures], log=lambda m: None)
    assert [p.name for p in paths] == ["colored_mnist.pth", "double_colored_mnist.pth", "wildlife_mnist.pth"]
    for p, dataset in zip(paths, ("colored-mnist", "double-colored-mnist", "wildlife-mnist")):
        assert load_reference(p)[1]["dataset"] == dataset
        ckp = tmp_path / dataset / "ckp.pth"  # the repository's own file name
        ckp.parent.mkdir()
        ckp.write_bytes(p.read_bytes())
        assert load_reference(ckp)[1]["dataset"] == dataset
    assert load_texture_folder(root / "data" / "textures").objects.shape[0] == 10
    assert all(u.startswith("https://") and "1cba9d4" in u for f in get_asset("cgn-mnist").files for u in f.urls)
