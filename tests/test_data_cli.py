"""``cgn data`` through the real CLI: the export contract, previews, one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from cgn.cli import main
from conftest import require_mnist


def test_build_writes_the_contract(tmp_path, capsys):
    require_mnist()
    out = tmp_path / "dc_test.npz"
    assert main(["data", "build", "double-colored-mnist", "--split", "test", "--seed", "7", "--out", str(out)]) == 0
    with np.load(out, allow_pickle=False) as z:
        assert {"images", "labels", "fg_class", "bg_class", "meta"} <= set(z.files)
        assert z["images"].shape == (10000, 32, 32, 3) and z["images"].dtype == np.uint8
        assert z["labels"].dtype == np.int64 and z["fg_class"].dtype == np.int64
        meta = json.loads(str(z["meta"]))
    assert meta["seed"] == 7 and meta["variant"] == "double-colored-mnist"
    assert "textures=none" in capsys.readouterr().out


def test_preview_names_texture_set(tmp_path, capsys):
    require_mnist()
    out = tmp_path / "w.png"
    assert main(["data", "preview", "wildlife-mnist", "--rows", "2", "--out", str(out)]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["textures"] == "procedural"
    im = Image.open(out)
    assert im.mode == "RGB" and im.width > 300 and im.height > 200


@pytest.mark.parametrize("argv,message", [
    (["data", "build", "fashion-mnist", "--split", "train", "--out", "x.npz"], "unknown dataset 'fashion-mnist'"),
    (["data", "preview", "wildlife-mnist", "--textures", "/no/such/dir", "--out", "x.png"], "does not exist"),
    (["data", "build", "colored-mnist", "--split", "train", "--seed", "-1", "--out", "x.npz"], "non-negative"),
])
def test_errors_are_one_line(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("cgn: error:") and message in err and len(err.splitlines()) == 1
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_help_for_every_data_action(capsys):
    for action in ("build", "preview", "prepare"):
        with pytest.raises(SystemExit) as e:
            main(["data", action, "--help"])
        assert e.value.code == 0
    assert "--textures" in capsys.readouterr().out


def test_build_stores_masks_and_older_files_without_masks_still_load(tmp_path):
    require_mnist()
    from cgn.commands.classify import _load_images
    from cgn.mnist import variants
    out = tmp_path / "wl_test.npz"
    assert main(["data", "build", "wildlife-mnist", "--split", "test", "--out", str(out)]) == 0
    with np.load(out, allow_pickle=False) as z:
        masks, images = z["masks"], z["images"]
        old = {k: z[k] for k in z.files if k != "masks"}
    assert masks.shape == (10000, 32, 32) and masks.dtype == np.uint8
    assert np.array_equal(masks, variants.load_split("wildlife-mnist", "test")["masks"])
    np.savez(tmp_path / "old.npz", **old)  # a file written before masks existed
    assert np.array_equal(_load_images(str(tmp_path / "old.npz"))["images"], images)
