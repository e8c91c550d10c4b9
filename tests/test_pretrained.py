"""Shipped pretrained CGNs: the weights-only format, lookup by name, digests, the CLI's --cgn."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cgn.cli import main
from cgn.core.sampling import iter_samples, mechanism_seeds
from cgn.errors import CGNError
from cgn.mnist import pretrained
from cgn.mnist.model import load_generator


def _composites(model, n=64):
    labels = torch.arange(n) % 10
    parts = list(iter_samples(model, n, labels, labels.flip(0), (labels + 3) % 10,
                              seeds=mechanism_seeds(0), batch_size=n, device="cpu"))
    return torch.cat([p.composite for p in parts])


@pytest.fixture(scope="module")
def exported(tiny_cgn_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("weights") / "double-colored-mnist.pt"
    info = pretrained.export_weights(tiny_cgn_file, out, provenance={"command": "test"})
    return out, info


def test_export_is_small_fp16_and_samples_like_the_original(tiny_cgn_file, exported):
    out, info = exported
    assert info["sha256"] == pretrained.file_sha256(out)
    assert info["bytes"] < 0.6 * tiny_cgn_file.stat().st_size  # fp16 and no extra state
    assert 0 < info["max_cast_error"] < 1e-3
    full, _ = load_generator(tiny_cgn_file)
    small, meta = load_generator(out)
    assert meta["format"] == "cgn-weights" and meta["provenance"]["weights_dtype"] == "float16"
    assert meta["provenance"]["command"] == "test"
    assert all(p.dtype == torch.float32 for p in small.parameters())  # computed in fp32
    a, b = _composites(full), _composites(small)
    assert (a - b).abs().max() < 2e-2  # fp16 weights move a pixel by < 1 % of its range


def test_export_names_no_folder_of_the_training_machine(tmp_path):
    """A shipped file's config keeps only the last part of an absolute path (the texture folder
    of a wildlife run); relative paths and other values are kept."""
    from cgn.config import to_dict
    from cgn.core.checkpoint import load_checkpoint, save_checkpoint
    from cgn.mnist.model import MnistCGN
    from cgn.presets import preset
    cfg = to_dict(preset("wildlife-mnist"))
    cfg["train"]["textures"] = str(tmp_path / "data" / "textures")
    cfg["train"]["dataset"] = "wildlife-mnist"
    ckpt = tmp_path / "cgn.pt"
    save_checkpoint(ckpt, kind="mnist-cgn", step=0, config=cfg, model=MnistCGN(preset("wildlife-mnist").model).state_dict())
    pretrained.export_weights(ckpt, tmp_path / "w.pt", provenance={"command": "test"})
    shipped = load_checkpoint(tmp_path / "w.pt", kind=pretrained.WEIGHTS_KIND)["config"]
    assert shipped["train"]["textures"] == "textures"
    assert str(tmp_path) not in repr(shipped)
    assert {k: v for k, v in shipped["train"].items() if k != "textures"} == \
        {k: v for k, v in cfg["train"].items() if k != "textures"}


def test_lookup_by_name_checks_the_digest(exported, tmp_path):
    out, info = exported
    registry = {"double-colored-mnist": pretrained.ShippedCGN("double-colored-mnist", out.name, info["sha256"])}
    assert pretrained.resolve("double-colored-mnist", registry, out.parent) == out
    assert pretrained.resolve(str(out), registry, out.parent) == out  # a file stays a file
    with pytest.raises(CGNError, match="no pretrained CGN named 'coloured'"):
        pretrained.resolve("coloured", registry, out.parent)
    damaged = tmp_path / out.name
    damaged.write_bytes(out.read_bytes()[:-1] + b"x")
    with pytest.raises(CGNError, match="damaged"):
        pretrained.shipped_path("double-colored-mnist", registry, tmp_path)
    with pytest.raises(CGNError, match="missing"):
        pretrained.shipped_path("double-colored-mnist", registry, tmp_path / "none")


def test_every_shipped_cgn_verifies_and_loads():
    if not pretrained.names():
        pytest.skip("no pretrained CGN is shipped in this version yet (cgn.mnist.pretrained.SHIPPED)")
    for name in pretrained.names():
        model, info = load_generator(name)
        assert info["pretrained"] == name and info["dataset"] == name
        assert {"command", "steps", "shape_accuracy"} <= set(info["provenance"])
        assert pretrained.provenance(name)["ood_accuracy"] is not None


def test_cli_takes_a_weights_file_and_refuses_an_unknown_name(exported, tmp_path, capsys):
    out, _ = exported
    npz = tmp_path / "s.npz"
    assert main(["sample", "--cgn", str(out), "--shape", "3", "--n", "4", "--out", str(npz)]) == 0
    z = np.load(npz)
    assert z["images"].shape == (4, 32, 32, 3) and (z["shape_labels"] == 3).all()
    assert main(["sample", "--cgn", "no-such-cgn", "--n", "4", "--out", str(npz)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no pretrained CGN named 'no-such-cgn'" in err[0]


def test_all_three_are_shipped_and_draw_the_asked_shapes(tmp_path):
    """`cgn sample --cgn NAME` for each dataset with no other file; the masks are the asked digits
    (the shape judge reads them) and the composites follow the labels (same labels, same seed:
    same images; another texture label: another foreground)."""
    import cgn
    from cgn.mnist.quality import shape_accuracy
    assert pretrained.names() == ["colored-mnist", "double-colored-mnist", "wildlife-mnist"]
    for name in pretrained.names():
        npz = tmp_path / f"{name}.npz"
        assert main(["sample", "--cgn", name, "--shape", "3", "--texture", "7", "--background", "1",
                     "--n", "4", "--out", str(npz)]) == 0
        z = np.load(npz)
        assert z["images"].shape == (4, 32, 32, 3) and (z["shape_labels"] == 3).all()
        model = cgn.load_cgn(name)
        shapes = torch.arange(50) % 10
        draw = lambda shift: cgn.sample(model, shape=shapes, texture=(shapes + shift) % 10,  # noqa: E731
                                        background=(shapes + 6) % 10, n=50, seed=0)
        s = draw(3)
        assert shape_accuracy(s.mask, shapes) >= 0.8, name
        assert torch.equal(s.composite, draw(3).composite)
        assert (draw(4).foreground - s.foreground).abs().mean() > 0.05, name


def test_the_shipped_wildlife_cgn_is_evaluated_only_on_its_textures(tmp_path):
    """It was trained on the DTD textures (`cgn download mnist-textures`): reproduce refuses to
    pair it with the procedural set, and takes the same images in a folder of any name."""
    import shutil

    from cgn.mnist.reproduce import ReproduceConfig, Reproduction
    from conftest import SHARED_DATA
    assert pretrained.provenance("wildlife-mnist")["texture_set"].startswith("folder:textures:")
    cfg = ReproduceConfig(datasets=["wildlife-mnist"], cgn="pretrained")
    with pytest.raises(CGNError, match="the shipped CGN wildlife-mnist was trained with the texture "
                                       "folder 'textures'; pass the same folder with --textures DIR"):
        Reproduction(cfg, tmp_path / "no", "cgn reproduce mnist")
    assert not (tmp_path / "no").exists()
    dtd = SHARED_DATA / "cgn_reference" / "textures"
    if not dtd.is_dir():
        pytest.skip(f"{dtd} not present (the DTD textures; set CGN_SHARED_DATA)")
    shutil.copytree(dtd, tmp_path / "dtd")  # another folder name, the same images
    Reproduction(ReproduceConfig(datasets=["wildlife-mnist"], cgn="pretrained", textures=str(tmp_path / "dtd")),
                 tmp_path / "ok", "cgn reproduce mnist")
    assert (tmp_path / "ok" / "config.json").exists()
