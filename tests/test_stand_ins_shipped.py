"""The stand-ins of `cgn reproduce imagenet`: trained in worker processes with --jobs 2, packed
as shipped stand-ins (float16, in parts), installed from the pack into a fresh cache instead of
being trained, and loaded by the pipeline's own loaders with the same outputs; a damaged part is
refused in one line; the stand-ins shipped with cgn verify."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from cgn.errors import CGNError
from cgn.imagenet import shipped
from cgn.imagenet import reproduce_standins as si
from cgn.imagenet.reproduce import quick_config
from conftest import require_mnist

pytestmark = pytest.mark.usefixtures("one_thread_no_onednn")


def _rep(out: Path, jobs: int) -> SimpleNamespace:
    cfg = quick_config(threads=1, jobs=jobs)
    lines: list[str] = []
    rep = SimpleNamespace(cfg=cfg, out=out, lines=lines, log=lines.append,
                          run=SimpleNamespace(log=lambda s, echo=False: lines.append(s)))
    rep.world = si.check_inputs(cfg, out)
    si.ensure_world(rep)
    return rep


def _outputs(stand_ins: dict) -> dict:
    """What the pipeline's loaders make of the stand-ins, on fixed inputs."""
    from cgn.imagenet.biggan import BigGAN
    from cgn.imagenet.u2net import U2Net
    from cgn.imagenet.world_judges import load_judge
    from cgn.imagenet.world_metrics import gan_samples
    g = BigGAN.from_pretrained(stand_ins["biggan"]).eval()
    x = gan_samples(g, 8, seed=0, truncation=1.0)["gan_images"]
    torch.manual_seed(0)
    img = torch.rand(4, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        sal = U2Net.from_pretrained(stand_ins["u2net"])(img)
        judge = load_judge(Path(stand_ins["judges"]) / "world_classifier.pt", "world_classifier")(img)
    return {"gan": x, "u2net": sal, "judge": judge}


def test_stand_ins_train_in_workers_then_ship_and_install(tmp_path, monkeypatch):
    require_mnist()
    monkeypatch.setenv("CGN_HOME", str(tmp_path / "home"))
    rep = _rep(tmp_path / "run", jobs=2)
    trained = si.ensure_stand_ins(rep)
    for kind in ("biggan", "u2net", "judges"):
        assert f"stand-in {kind}: trained" in rep.lines   # each finished in a worker process
    assert trained["pretrain_time_s"] > 0

    # pack the cache as shipped stand-ins; a small part size puts every pack in several files
    monkeypatch.setattr(shipped, "PART_BYTES", 60_000)
    packs, registry = tmp_path / "packs", []
    cache = next((tmp_path / "home" / "stand-ins").iterdir())
    for folder in sorted(cache.iterdir()):
        kind, rest = folder.name.split("-", 1)
        preset, digest = rest.rsplit("-", 1)
        info = shipped.pack(kind, folder, packs / f"{kind}.pt", provenance={"made_by": "this test"})
        assert len(info["parts"]) >= 2 and all((packs / f"{kind}.pt.part{i}").stat().st_size <= 60_000
                                               for i in range(len(info["parts"])))
        registry.append(shipped.ShippedStandIn(kind, cache.name, preset, digest, f"{kind}.pt",
                                               info["sha256"], tuple(info["parts"])))
    registry = tuple(registry)
    assert not any(str(tmp_path) in p.read_bytes().decode("latin-1") for p in packs.iterdir())  # no paths

    # a fresh machine: the shipped stand-ins are installed, nothing is trained
    monkeypatch.setenv("CGN_HOME", str(tmp_path / "home2"))
    rep2 = _rep(tmp_path / "run2", jobs=2)
    installed = si.ensure_stand_ins(rep2, registry=registry, pack_dir=packs)
    assert sum("installed the one shipped" in ln for ln in rep2.lines) == 3
    assert not [ln for ln in rep2.lines if "training" in ln or "trained" in ln]
    assert installed["train_seconds"] == trained["train_seconds"]   # their own training time, kept
    a, b = _outputs(trained), _outputs(installed)
    for k in a:
        assert torch.allclose(a[k], b[k], atol=0.05), k   # float16 weights: close, not equal
    again = si.ensure_stand_ins(rep2, registry=registry, pack_dir=packs)
    assert again == installed and sum("cached" in ln for ln in rep2.lines) == 3

    # another config digest (another preset setting) finds no shipped stand-in
    other = replace(registry[0], config_digest="000000000000")
    assert shipped.find(other.kind, other.world_key, other.preset, registry[0].config_digest, (other,)) is None

    # a damaged part: one line, before anything is unpickled or written
    part = packs / "u2net.pt.part1"
    part.write_bytes(b"x" + part.read_bytes()[1:])
    monkeypatch.setenv("CGN_HOME", str(tmp_path / "home3"))
    rep3 = _rep(tmp_path / "run3", jobs=1)
    with pytest.raises(CGNError) as e:
        si.ensure_stand_ins(rep3, registry=registry, pack_dir=packs)
    assert "damaged" in str(e.value) and "reinstall cgn" in str(e.value) and "\n" not in str(e.value)
    u2 = next(p for p in (tmp_path / "home3" / "stand-ins").glob("*/u2net-*"))
    assert not (u2 / "results.json").exists()


def test_the_shipped_stand_ins_verify_and_install(tmp_path):
    from cgn.core.results import read_results
    assert sorted(e.kind for e in shipped.SHIPPED) == ["biggan", "judges", "u2net"]
    for entry in shipped.SHIPPED:
        for i in range(len(entry.parts)):
            assert (shipped.PACK_DIR / f"{entry.file}.part{i}").stat().st_size <= 2 * 2**20
        folder = tmp_path / entry.folder_name
        prov = shipped.install(entry, folder)   # every part's sha256 and the joined pack's, checked
        assert si._finished(entry.kind, folder, read_results(folder)) is not None
        assert prov["world_key"].startswith(entry.world_key) and prov["train_seconds"] > 0
