"""``cgn sample``: output contract, errors, and the authors' double-colored CGN sampled through
our code: background label k paints the non-mask pixels in class k's background colour
(docs/reference.md#double-colored-mnist), texture label k paints the digit in class k's object colour, and the mask of
shape label k is recognisably the digit k."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image, ImageColor

from cgn.cli import main
from cgn.config import to_dict
from cgn.core.checkpoint import save_checkpoint
from cgn.presets import preset
from cgn.mnist.model import MnistCGN

from conftest import require_mnist

# docs/reference.md#double-colored-mnist: double-colored MNIST background colour of class k; object colour of class i is
# the background colour of class (i - 6) mod 10.
BACKGROUND_NAMES = ["darkgreen", "darkblue", "#b03060", "orangered", "yellow", "burlywood", "lime",
                    "aqua", "fuchsia", "#6495ed"]
BG = np.array([ImageColor.getrgb(n) for n in BACKGROUND_NAMES], dtype=np.float64) / 255
FG = BG[(np.arange(10) - 6) % 10]


@pytest.fixture(scope="module")
def our_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    cfg = preset("double-colored-mnist")
    path = tmp_path_factory.mktemp("ck") / "untrained.pt"
    save_checkpoint(path, kind="mnist-cgn", step=0, config=to_dict(cfg), model=MnistCGN(cfg.model).state_dict())
    return path


def _sample(tmp_path, ckpt, *extra, name="s.npz"):
    out = tmp_path / name
    rc = main(["sample", "--checkpoint", str(ckpt), *extra, "--out", str(out)])
    return rc, out


def test_output_contract_and_determinism(our_checkpoint, tmp_path):
    rc, out = _sample(tmp_path, our_checkpoint, "--shape", "3", "--texture", "random", "--background",
                      "0,1,2,3,4,5,6,7,8,9", "--n", "10", "--seed", "4", "--grid", str(tmp_path / "g.png"))
    assert rc == 0
    with np.load(out, allow_pickle=False) as z:
        images, masks = z["images"], z["masks"]
        assert images.shape == (10, 32, 32, 3) and images.dtype == np.uint8
        assert masks.shape == (10, 32, 32) and masks.dtype == np.float32
        assert masks.min() >= 0 and masks.max() <= 1
        assert z["shape_labels"].tolist() == [3] * 10 and z["background_labels"].tolist() == list(range(10))
        assert json.loads(str(z["meta"]))["seed"] == 4
    assert Image.open(tmp_path / "g.png").size[0] > 10 * 32
    rc, out2 = _sample(tmp_path, our_checkpoint, "--shape", "3", "--texture", "random", "--background",
                       "0,1,2,3,4,5,6,7,8,9", "--n", "10", "--seed", "4", "--batch-size", "3", name="s2.npz")
    with np.load(out, allow_pickle=False) as a, np.load(out2, allow_pickle=False) as b:
        assert np.array_equal(a["texture_labels"], b["texture_labels"])
        assert np.abs(a["images"].astype(int) - b["images"].astype(int)).max() <= 1
        assert np.allclose(a["masks"], b["masks"], atol=1e-4)


def test_threads(our_checkpoint, tmp_path, capsys):
    """--threads as in every command: torch's CPU threads, set before the model is built."""
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert _sample(tmp_path, our_checkpoint, "--n", "4", "--threads", "1")[0] == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    capsys.readouterr()
    rc, out = _sample(tmp_path, our_checkpoint, "--n", "4", "--threads", "-1", name="t.npz")
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "--threads -1" in err and len(err.splitlines()) == 1 and not out.exists()


def test_errors(our_checkpoint, shared_data, tmp_path, capsys):
    ref = shared_data / "cgn_reference" / "checkpoints" / "double_colored_mnist.pth"
    assert _sample(tmp_path, ref)[0] == 2                                    # needs --reference-format
    assert "reference" in capsys.readouterr().err
    assert _sample(tmp_path, our_checkpoint, "--reference-format")[0] == 2   # ours is not theirs
    assert _sample(tmp_path, our_checkpoint, "--shape", "12")[0] == 2
    assert _sample(tmp_path, our_checkpoint, "--shape", "1,2", "--n", "5")[0] == 2
    assert _sample(tmp_path, our_checkpoint, "--texture", "red")[0] == 2
    assert main(["sample", "--checkpoint", str(our_checkpoint), "--out", str(tmp_path / "x.png")]) == 2
    assert _sample(tmp_path, tmp_path / "missing.pt")[0] == 2
    bad = tmp_path / "bad.pth"
    torch.save({"f_shape.0.weight": torch.zeros(3, 3)}, bad)
    assert _sample(tmp_path, bad, "--reference-format")[0] == 2
    assert "does not fit" in capsys.readouterr().err


def _nearest(colours: np.ndarray, table: np.ndarray) -> np.ndarray:
    return np.argmin(((colours[:, None, :] - table[None]) ** 2).sum(-1), axis=1)


def test_authors_double_colored_cgn_paints_the_spec_colours(shared_data, tmp_path):
    ref = shared_data / "cgn_reference" / "checkpoints" / "double_colored_mnist.pth"
    bg_found, fg_found = [], []
    for k in range(10):
        rc, out = _sample(tmp_path, ref, "--reference-format", "--shape", "random", "--texture", "random",
                          "--background", str(k), "--n", "40", "--seed", str(k), name=f"bg{k}.npz")
        assert rc == 0
        with np.load(out) as z:
            px = z["images"][z["masks"] < 0.05].astype(np.float64) / 255      # non-mask pixels
        bg_found.append(np.median(px, axis=0))
        rc, out = _sample(tmp_path, ref, "--reference-format", "--shape", "random", "--texture", str(k),
                          "--background", "random", "--n", "40", "--seed", str(k), name=f"fg{k}.npz")
        with np.load(out) as z:
            px = z["images"][z["masks"] > 0.95].astype(np.float64) / 255      # digit pixels
        fg_found.append(np.median(px, axis=0))
    bg_found, fg_found = np.array(bg_found), np.array(fg_found)
    assert _nearest(bg_found, BG).tolist() == list(range(10))
    assert _nearest(fg_found, FG).tolist() == list(range(10))
    assert np.abs(bg_found - BG).max() < 0.15 and np.abs(fg_found - FG).max() < 0.15


def test_authors_double_colored_shapes_are_the_label(shared_data, tmp_path):
    require_mnist()
    from cgn.mnist.quality import ShapeJudge
    judge = ShapeJudge.load()
    ref = shared_data / "cgn_reference" / "checkpoints" / "double_colored_mnist.pth"
    per_class = []
    for k in range(10):
        rc, out = _sample(tmp_path, ref, "--reference-format", "--shape", str(k), "--n", "30",
                          "--seed", str(100 + k), name=f"shape{k}.npz")
        with np.load(out) as z:
            pred = judge.predict(torch.from_numpy(z["masks"]))
        per_class.append(float((pred == k).float().mean()))
    assert min(per_class) >= 0.5 and np.mean(per_class) >= 0.8, per_class
