"""The world (cgn.imagenet.world): exact ground truth, IN-9 and cue-conflict splits, the
user-npz path, determinism, the reader and one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cgn.cli import main
from cgn.errors import CGNError
from cgn.imagenet.world import WorldSpec, build_world
from cgn.imagenet.world_data import WorldSplit, load_split_arrays, read_manifest
from conftest import require_mnist

SPLITS = ("train", "test", "cue_conflict", "mixed_same", "mixed_rand", "decorrelated")


@pytest.fixture(scope="module")
def wl(tmp_path_factory):
    require_mnist()
    out = tmp_path_factory.mktemp("world32")
    build_world(WorldSpec(n_train=200, n_test=200), out)
    return out


def _arrays(root, split):
    return load_split_arrays(root, split)[0]


def _rerender(d, size):
    """The split's images painted again from its recorded factors (masks, classes, offsets)."""
    from cgn.mnist.textures import procedural_textures
    from cgn.mnist.variants import _crops, _paint
    tex = procedural_textures()
    return _paint(d["masks"].astype(np.float32) / 255, _crops(tex.objects, d["fg_class"], d["fg_offset"], size),
                  _crops(tex.backgrounds, d["bg_class"], d["bg_offset"], size))


def test_wildlife_ground_truth_is_exact(wl):
    from cgn.mnist import variants
    m = read_manifest(wl)
    assert m["size"] == 32 and m["num_classes"] == 10 and set(SPLITS) <= set(m["splits"])
    test = _arrays(wl, "test")
    for split in SPLITS:
        d = _arrays(wl, split)
        assert d["images"].shape == (200, 32, 32, 3) and d["masks"].shape == (200, 32, 32)
        # every image is its mask compositing its recorded texture crops, byte for byte
        assert np.array_equal(d["images"], _rerender(d, 32)), split
        assert abs(m["splits"][split]["mean_object_area"] - d["masks"].mean() / 255) < 1e-6
    # train: the variant's stream (object crops, then background crops); full correlation
    # (byte equality with the variant's split: tests/test_variants.py, where it is built anyway)
    tr = _arrays(wl, "train")
    rng = np.random.default_rng([0, variants.VARIANTS.index("wildlife-mnist"), 0])
    fg_off, bg_off = variants._crop_offsets(50000, rng), variants._crop_offsets(50000, rng)
    assert np.array_equal(tr["fg_offset"], fg_off[:200]) and np.array_equal(tr["bg_offset"], bg_off[:200])
    for d in (tr, test):
        assert np.array_equal(d["fg_class"], d["labels"]) and np.array_equal(d["bg_class"], d["labels"])
    # cue-conflict: shape a's mask, texture b != a, background c outside {a, b}
    cc = _arrays(wl, "cue_conflict")
    assert np.array_equal(cc["masks"], test["masks"]) and np.array_equal(cc["labels"], test["labels"])
    assert (cc["fg_class"] != cc["labels"]).all()
    assert ((cc["bg_class"] != cc["labels"]) & (cc["bg_class"] != cc["fg_class"])).all()
    assert len(np.unique(cc["fg_class"])) == 10
    # IN-9 Original is the test split
    assert m["splits"]["original"]["sha256"] == m["splits"]["test"]["sha256"]


def test_mixed_backgrounds_come_from_the_right_images(wl):
    test = _arrays(wl, "test")
    for split in ("mixed_same", "mixed_rand"):
        d = _arrays(wl, split)
        j = d["background_index"]
        assert np.array_equal(d["masks"], test["masks"]) and np.array_equal(d["labels"], test["labels"])
        assert (j != np.arange(200)).all() and np.array_equal(d["bg_class"], test["labels"][j])
        obj = test["masks"] == 255
        both_bg = (test["masks"] == 0) & (test["masks"][j] == 0)
        assert np.array_equal(d["images"][obj], test["images"][obj])            # own object
        assert np.array_equal(d["images"][both_bg], test["images"][j][both_bg])  # image j's background
    same, rand = _arrays(wl, "mixed_same"), _arrays(wl, "mixed_rand")
    assert np.array_equal(same["bg_class"], same["labels"])
    agree = np.mean(rand["bg_class"] == rand["labels"])
    assert agree < 0.25 and len(np.unique(rand["bg_class"])) == 10


def test_same_seed_same_bytes_and_limits_are_prefixes(wl, tmp_path):
    a = read_manifest(wl)["splits"]
    build_world(WorldSpec(n_train=200, n_test=200), tmp_path / "again")
    b = read_manifest(tmp_path / "again")["splits"]
    assert all(a[s]["sha256"] == b[s]["sha256"] for s in SPLITS)
    build_world(WorldSpec(seed=1, n_train=100, n_test=100), tmp_path / "seed1")
    assert not np.array_equal(_arrays(tmp_path / "seed1", "test")["images"], _arrays(wl, "test")["images"][:100])
    build_world(WorldSpec(n_train=100, n_test=100), tmp_path / "small")
    for s in ("train", "test", "cue_conflict", "decorrelated"):
        assert np.array_equal(_arrays(tmp_path / "small", s)["images"], _arrays(wl, s)["images"][:100]), s


def test_64px_world_has_smooth_masks_and_exact_images(tmp_path):
    require_mnist()
    m = build_world(WorldSpec(size=64, n_train=40, n_test=40, n_decorrelated=10), tmp_path)
    d = _arrays(tmp_path, "cue_conflict")
    assert d["images"].shape == (40, 64, 64, 3)
    assert np.array_equal(d["images"], _rerender(d, 64))
    soft = (d["masks"] > 0) & (d["masks"] < 255)
    assert soft.mean() > 0.02                       # a soft edge ...
    assert (d["masks"] == 255).mean() > 0.08        # ... around a solid object
    assert 0.1 < m["mean_object_area"] < 0.25
    # --decorrelate: a share of training images gets random texture and background classes
    build_world(WorldSpec(n_train=200, n_test=30, decorrelate=0.5), tmp_path / "dec")
    tr = _arrays(tmp_path / "dec", "train")
    assert np.array_equal(tr["images"], _rerender(tr, 32))
    for key in ("fg_class", "bg_class"):
        assert 0.3 < np.mean(tr[key] != tr["labels"]) < 0.6


# --- a world from the user's own npz --------------------------------------------------------

def _tiny_npz(path, n, seed, size=16, classes=4):
    """Flat object colour per class, a flat background colour unique to each image, square objects."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    obj_col = np.array([[250, 10, 10], [10, 250, 10], [10, 10, 250], [250, 250, 10]], np.uint8)[:classes]
    bg_col = rng.integers(0, 200, size=(n, 3)).astype(np.uint8)
    images = np.broadcast_to(bg_col[:, None, None], (n, size, size, 3)).copy()
    masks = np.zeros((n, size, size), np.uint8)
    for i in range(n):
        r, c, s = rng.integers(1, 5), rng.integers(1, 5), rng.integers(5, 10)
        masks[i, r:r + s, c:c + s] = 255
    images[masks == 255] = obj_col[np.repeat(labels, size * size).reshape(n, size, size)][masks == 255]
    np.savez(path, images=images, labels=labels.astype(np.int64), masks=masks)
    return images, labels, masks, obj_col, bg_col


def test_user_npz_world_by_mask_compositing(tmp_path, capsys):
    tr = _tiny_npz(tmp_path / "train.npz", 40, 0)
    te_images, te_labels, te_masks, obj_col, bg_col = _tiny_npz(tmp_path / "test.npz", 32, 1)
    assert main(["imagenet", "world", "build", "--world", str(tmp_path / "train.npz"), "--test",
                 str(tmp_path / "test.npz"), "--out", str(tmp_path / "w"), "--image-folders",
                 "--quiet"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["world"] == "npz" and out["size"] == 16 and out["num_classes"] == 4
    root = tmp_path / "w"
    obj = te_masks == 255
    same, rand = _arrays(root, "mixed_same"), _arrays(root, "mixed_rand")
    for d in (same, rand):
        j = d["background_index"]
        assert np.array_equal(d["images"][obj], te_images[obj])     # the object of image i
        bg = np.broadcast_to(bg_col[j][:, None, None], d["images"].shape)
        assert np.array_equal(d["images"][~obj], bg[~obj])          # the inpainted background of j
        assert np.array_equal(d["bg_class"], te_labels[j])
    assert np.array_equal(same["bg_class"], te_labels) and (same["background_index"] != np.arange(32)).all()
    cc = _arrays(root, "cue_conflict")
    assert (cc["fg_class"] != cc["labels"]).all() and (cc["bg_class"] != cc["fg_class"]).all()
    assert (cc["bg_class"] != cc["labels"]).all() and np.array_equal(cc["masks"], te_masks)
    tex = np.broadcast_to(obj_col[cc["fg_class"]][:, None, None], cc["images"].shape)
    assert np.array_equal(cc["images"][obj], tex[obj])              # texture b's object pixels
    bg = np.broadcast_to(bg_col[cc["background_index"]][:, None, None], cc["images"].shape)
    assert np.array_equal(cc["images"][~obj], bg[~obj])
    dec = _arrays(root, "decorrelated")
    assert np.array_equal(dec["masks"], tr[2][:32]) and np.array_equal(_arrays(root, "train")["images"], tr[0])
    # the PNG folders read back through the ImageNet loader with the shape labels
    from cgn.imagenet.imagefolder import ImageNetFolder
    f = ImageNetFolder(root / "folders" / "test")
    assert len(f) == 32 and sorted(f.targets) == sorted(te_labels.tolist())
    assert np.array_equal(np.asarray(f[0][0]), te_images[np.flatnonzero(te_labels == 0)[0]])


def test_reader_serves_images_masks_and_labels(wl):
    from cgn.imagenet.imagefolder import eval_transform
    ds = WorldSplit(wl, "cue_conflict", returns=("image", "shape", "texture", "mask"))
    x, s, t, mask = ds[3]
    d = _arrays(wl, "cue_conflict")
    assert x.shape == (3, 32, 32) and x.min() >= -1 and x.max() <= 1
    assert torch.equal(((x + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0), torch.from_numpy(d["images"][3]))
    assert (s, t) == (d["labels"][3], d["fg_class"][3]) and mask.shape == (1, 32, 32)
    assert torch.equal(mask[0] * 255, torch.from_numpy(d["masks"][3]).float())
    plain = WorldSplit(wl, "original", transform=eval_transform(32, 32))
    x, y = plain[0]
    assert x.shape == (3, 32, 32) and y == d["labels"][0] and x.min() < -0.5  # ImageNet-normalised
    b = ds.batch(slice(0, 8))
    assert b["image"].shape == (8, 3, 32, 32) and b["mask"].shape == (8, 1, 32, 32)
    assert torch.equal(b["texture"], torch.from_numpy(d["fg_class"][:8]))


def test_reader_rejects_damaged_worlds(wl, tmp_path):
    import shutil
    bad = tmp_path / "bad"
    shutil.copytree(wl, bad)
    with open(bad / "test.npz", "r+b") as f:
        f.seek(-1, 2)
        f.write(b"\x01")
    with pytest.raises(CGNError, match="does not match the sha256"):
        WorldSplit(bad, "test")
    with pytest.raises(CGNError, match="unknown world split"):
        WorldSplit(wl, "val")
    (bad / "world.json").unlink()
    with pytest.raises(CGNError, match="no world.json"):
        WorldSplit(bad, "train")


def test_reader_checks_each_splits_arrays(wl, tmp_path):
    """A split is read by the npz contract's one reader: a missing array, a wrong dtype or shape
    is one line naming the split's file and the fix."""
    import shutil
    bad = tmp_path / "bad"
    shutil.copytree(wl, bad)
    d = _arrays(wl, "test")
    cases = [({k: v for k, v in d.items() if k != "masks"}, r"has no `masks` array \(it holds images"),
             ({**d, "masks": d["masks"].astype(np.float32)}, "masks must be uint8"),
             ({**d, "images": d["images"][..., :1]}, r"images must be uint8 \[N, H, W, 3\]"),
             ({**d, "labels": d["labels"][:-1]}, "`labels` must be integer class indices, one per image"),
             ({**d, "object_index": d["object_index"][:3]}, "one row per image .*`object_index` has 3")]
    for arrays, message in cases:
        np.savez(bad / "test.npz", **arrays)
        with pytest.raises(CGNError, match=r"^world split .*test\.npz.*" + message) as e:
            WorldSplit(bad, "test", verify=False)
        assert len(str(e.value).splitlines()) == 1 and str(e.value).endswith("rebuild the world")


def test_bad_input_is_one_line(tmp_path, capsys):
    _tiny_npz(tmp_path / "t.npz", 12, 0)
    with np.load(tmp_path / "t.npz") as z:
        np.savez(tmp_path / "nomask.npz", images=z["images"], labels=z["labels"])
        np.savez(tmp_path / "01.npz", images=z["images"], labels=z["labels"], masks=z["masks"] // 255)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("x")
    t = str(tmp_path / "t.npz")
    cases = [
        (["--world", "imagenet"], "unknown world 'imagenet'"),
        (["--world", t], "needs --test"),
        (["--world", str(tmp_path / "nomask.npz"), "--test", t], "has no `masks` array"),
        (["--world", t, "--test", str(tmp_path / "01.npz")], "255 = object"),
        (["--world", t, "--test", t, "--size", "32"], "keeps its images' size"),
        (["--world", t, "--test", str(tmp_path / "missing.npz")], "does not exist"),
        (["--n-test", "-1"], "must be >= 0"),
    ]
    for extra, message in cases:
        assert main(["imagenet", "world", "build", "--out", str(tmp_path / "o")] + extra) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("cgn: error:") and message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "o").exists()  # nothing half-written
    assert main(["imagenet", "world", "build", "--world", t, "--test", t, "--out", str(tmp_path / "full")]) == 2
    assert "holds other files" in capsys.readouterr().err
