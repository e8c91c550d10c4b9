"""The three MNIST variants: contract, determinism, correlations, colours, textures."""

from __future__ import annotations

import numpy as np
import pytest

from cgn.errors import CGNError
from cgn.mnist import variants as V
from conftest import require_mnist


@pytest.fixture(autouse=True)
def _mnist():
    require_mnist()


def _check_contract(d, n):
    assert d["images"].shape == (n, 32, 32, 3) and d["images"].dtype == np.uint8
    for k in ("labels", "fg_class", "bg_class"):
        assert d[k].shape == (n,) and d[k].dtype == np.int64


@pytest.mark.parametrize("variant,n_train,n_test", [
    ("colored-mnist", 60000, 10000), ("double-colored-mnist", 50000, 10000), ("wildlife-mnist", 50000, 10000)])
def test_contract_and_split_sizes(variant, n_train, n_test):
    tr, te = V.load_split(variant, "train"), V.load_split(variant, "test")
    _check_contract(tr, n_train)
    _check_contract(te, n_test)
    assert set(np.unique(tr["labels"])) == set(range(10))
    # Training: the spurious cue always agrees with the label.
    assert np.array_equal(tr["fg_class"], tr["labels"])
    # Test: the cue is drawn independently of the label (about 10 % agreement).
    assert 0.08 < np.mean(te["fg_class"] == te["labels"]) < 0.12
    assert set(np.unique(te["fg_class"])) == set(range(10))
    if variant == "colored-mnist":
        assert (tr["bg_class"] == -1).all() and (te["bg_class"] == -1).all()
    else:
        assert np.array_equal(tr["bg_class"], tr["labels"])
        assert 0.08 < np.mean(te["bg_class"] == te["labels"]) < 0.12
        assert 0.08 < np.mean(te["bg_class"] == te["fg_class"]) < 0.12


def test_splits_follow_the_original():
    from cgn.mnist.source import load_mnist
    m = load_mnist()
    assert np.array_equal(V.load_split("double-colored-mnist", "test")["labels"], m.train_labels[50000:])
    assert np.array_equal(V.load_split("colored-mnist", "test")["labels"], m.test_labels)
    assert np.array_equal(V.load_split("wildlife-mnist", "test", official_test=True)["labels"], m.test_labels)
    assert len(V.load_split("double-colored-mnist", "train", official_test=True)["labels"]) == 60000


def test_same_seed_same_bytes_other_seed_differs():
    V.build_split.cache_clear()
    a = V.load_split("double-colored-mnist", "test", seed=3)
    V.build_split.cache_clear()
    b = V.load_split("double-colored-mnist", "test", seed=3)
    assert a is not b
    for k in ("images", "labels", "fg_class", "bg_class"):
        assert np.array_equal(a[k], b[k])
    c = V.load_split("double-colored-mnist", "test", seed=4)
    assert not np.array_equal(a["fg_class"], c["fg_class"])
    # Train and test streams differ even with the same seed.
    w1 = V.load_split("wildlife-mnist", "test", seed=0)
    w2 = V.load_split("wildlife-mnist", "test", seed=0)
    assert np.array_equal(w1["images"], w2["images"])


def _digit_mask(split="train", n=None):
    from cgn.mnist.source import load_mnist
    m = load_mnist()
    d = V.upscale_digits(m.train_images[:50000] if split == "train" else m.train_images[50000:])
    return (d / 255.0 > V.BINARIZE_THRESHOLD)[:n]


def test_double_colored_binarised_and_table_colours():
    obj, bg = V.double_colored_tables()
    assert np.allclose(bg[0], np.array([0, 100, 0]) / 255) and np.allclose(obj[6], bg[0])
    for split in ("train", "test"):
        d = V.load_split("double-colored-mnist", split)
        mask = _digit_mask(split, 2000)
        imgs = d["images"][:2000].astype(np.float64) / 255
        for i in range(2000):
            fg_pix, bg_pix = imgs[i][mask[i]], imgs[i][~mask[i]]
            # Binarised: every digit pixel has one colour, every background pixel another.
            assert (fg_pix == fg_pix[0]).all() and (bg_pix == bg_pix[0]).all()
            # Colours equal the table within the N(0, 0.01²) noise (5σ + rounding).
            assert np.abs(fg_pix[0] - np.clip(obj[d["fg_class"][i]], 0, 1)).max() < 0.053
            assert np.abs(bg_pix[0] - np.clip(bg[d["bg_class"][i]], 0, 1)).max() < 0.053


def test_colored_digit_colour_near_class_mean():
    d = V.load_split("colored-mnist", "train")
    # Background black; the brightest stroke pixel (intensity 255) carries the colour.
    col = d["images"].reshape(len(d["labels"]), -1, 3).max(axis=1) / 255.0
    assert (d["images"][:, 0, 0] == 0).all()
    for c in range(10):
        sel = col[d["labels"] == c]
        # The median of clip(mean + N(0, 0.02)) is the mean itself.
        assert np.abs(np.median(sel, axis=0) - V.COLORED_PALETTE[c]).max() < 0.02
        # Spread matches σ = sqrt(0.02) ≈ 0.141 (clipping only shrinks it).
        assert 0.08 < np.median(sel.std(axis=0)) < 0.16
    te = V.load_split("colored-mnist", "test")
    tcol = te["images"].reshape(len(te["labels"]), -1, 3).max(axis=1) / 255.0
    for c in range(10):
        sel = tcol[te["fg_class"] == c]
        assert np.abs(np.median(sel, axis=0) - V.COLORED_PALETTE[c]).max() < 0.04


def test_wildlife_textures_named_and_cropped(shared_data):
    tex_dir = shared_data / "cgn_reference" / "textures"
    d = V.load_split("wildlife-mnist", "train", textures=tex_dir)
    assert d["meta"]["texture_set"].startswith("folder:textures:")
    p = V.load_split("wildlife-mnist", "train")
    assert p["meta"]["texture_set"] == "procedural"
    assert not np.array_equal(d["images"], p["images"])
    # Digit pixels come from the object texture of fg_class, background pixels from the
    # background texture of bg_class: check each pixel colour occurs in that texture.
    from cgn.mnist.textures import load_texture_folder
    ts = load_texture_folder(tex_dir)
    pack = lambda a: (a[..., 0].astype(np.int64) << 16) | (a[..., 1].astype(np.int64) << 8) | a[..., 2]  # noqa: E731
    obj_sets = [np.unique(pack(t)) for t in ts.objects]
    bg_sets = [np.unique(pack(t)) for t in ts.backgrounds]
    mask = _digit_mask("train", 200)
    for i in range(200):
        colours = pack(d["images"][i])
        assert np.isin(colours[mask[i]], obj_sets[d["fg_class"][i]]).all()
        assert np.isin(colours[~mask[i]], bg_sets[d["bg_class"][i]]).all()


def test_world_train_split_is_the_variant_plus_masks(tmp_path):
    # the wildlife train split is built (and cached) by the tests above
    from cgn.imagenet.world import WorldSpec, build_world
    from cgn.imagenet.world_data import load_split_arrays
    build_world(WorldSpec(n_train=300, n_test=50), tmp_path)
    world = load_split_arrays(tmp_path, "train")[0]
    ref = V.load_split("wildlife-mnist", "train")
    for key in ("images", "labels", "fg_class", "bg_class", "masks"):
        assert np.array_equal(world[key], ref[key][:300]), key


def test_bad_inputs():
    with pytest.raises(CGNError, match="unknown dataset 'mnist-x'"):
        V.load_split("mnist-x", "train")
    with pytest.raises(CGNError, match="unknown split"):
        V.load_split("colored-mnist", "val")
    with pytest.raises(CGNError, match="texture folder .* does not exist"):
        V.load_split("wildlife-mnist", "test", textures="/nonexistent/textures")


def test_to_tensor_range():
    x = V.to_tensor(np.array([[[[0, 255, 128]]]], dtype=np.uint8))
    assert x.shape == (1, 3, 1, 1) and x[0, 0, 0, 0] == -1 and x[0, 1, 0, 0] == 1


def test_masks_are_the_alpha_each_variant_painted_with():
    from cgn.mnist.source import load_mnist
    digits = V.upscale_digits(load_mnist().train_images[50000:50300])
    binary = np.where(digits > V.BINARIZE_THRESHOLD * 255, 255, 0).astype(np.uint8)
    col = V.load_split("colored-mnist", "test")
    assert col["masks"].dtype == np.uint8 and col["masks"].shape == (10000, 32, 32)
    # colored: the grey level is the alpha of the colour over black
    assert np.array_equal(col["masks"], V.upscale_digits(load_mnist().test_images))
    assert (col["images"][col["masks"] == 0] == 0).all()
    for variant in ("double-colored-mnist", "wildlife-mnist"):
        d = V.load_split(variant, "test")
        assert np.array_equal(d["masks"][:300], binary)
