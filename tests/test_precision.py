"""--precision auto | bf16 | fp32: what each machine gets, and the caps benchmarks use."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cgn.mnist.cfdata import CounterfactualSet
from cgn.core import precision as P
from cgn.errors import CGNError


@pytest.fixture
def flags(monkeypatch):
    def set_flags(*names):
        monkeypatch.setattr(P, "_cpu_flags", lambda: frozenset(names))
    return set_flags


def test_isa_levels_follow_the_flags_and_the_onednn_cap(flags, monkeypatch):
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    amx = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
    flags(*amx)
    assert P.cpu_isa() == "amx"
    for cap, level in (("AVX512_CORE_BF16", "avx512_bf16"), ("AVX512_CORE", "avx512"),
                       ("AVX2", "avx2"), ("SSE41", "baseline"), ("ALL", "amx")):
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
        assert P.cpu_isa() == level, cap
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    flags("avx2")
    assert P.cpu_isa() == "avx2"
    flags("avx2", "avx512f")
    assert P.cpu_isa() == "avx512"
    assert P.isa_description().startswith("avx512 / ATen ")


def test_auto_picks_bf16_only_with_amx(flags, monkeypatch):
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    flags("avx2", "avx512f", "avx512_bf16", "amx_bf16")
    p = P.resolve_precision("auto", "cpu")
    assert p.bf16 and "AMX" in p.reason
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")  # the same machine, AMX capped
    p = P.resolve_precision("auto", "cpu")
    assert p.name == "fp32" and "avx512_bf16" in p.reason
    flags("avx2")
    assert P.resolve_precision("auto", torch.device("cpu")).name == "fp32"
    assert P.resolve_precision("bf16", "cpu") == P.Precision("bf16", "asked for")
    assert P.resolve_precision("fp32", "cpu").as_dict() == {"name": "fp32", "reason": "asked for"}
    with pytest.raises(CGNError, match="unknown precision"):
        P.resolve_precision("fp16", "cpu")


def test_this_machine_reports_a_level():
    assert P.cpu_isa() in ("amx", "avx512_bf16", "avx512", "avx2", "baseline")


def test_a_generated_set_records_and_keeps_its_precision(tmp_path, flags, monkeypatch):
    """auto decides once per set (recorded in the manifest); a resumed set keeps it, so every
    image stays regenerable bit for bit."""
    import json
    from cgn.core.lock import release_all
    from cgn.mnist import counterfactuals as C
    from cgn.mnist.model import MnistCGN
    from cgn.presets import preset
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    torch.manual_seed(0)
    model = MnistCGN(preset("double-colored-mnist").model).eval()
    out = tmp_path / "cf"
    C.generate(model, C.GenerateConfig(n=20, shard_size=10, precision="bf16"), out,
               source={"sha256": "x"}, log=lambda m: None)
    (out / "shard-00001.sha256.json").unlink()
    (out / "shard-00001.images.npy").unlink()  # as if stopped before the second shard
    flags("avx2")  # the rerun happens on a machine where auto would pick fp32
    C.generate(model, C.GenerateConfig(n=20, shard_size=10), out, source={"sha256": "x"}, log=lambda m: None)
    release_all()
    m = json.loads((out / "manifest.json").read_text())
    assert m["config"]["precision"] == "bf16" and m["precision"]["name"] == "bf16"
    ds = CounterfactualSet(out)
    row = {k: int(v[15]) for k, v in ds.labels.items()}
    again = C.regenerate(model, m, row["shape"], row["texture"], row["background"], row["seed"], row["shape_seed"])
    assert (again == ds.images(np.array([15]))[0]).all()
    fresh = tmp_path / "fresh"
    C.generate(model, C.GenerateConfig(n=10, shard_size=10), fresh, source={"sha256": "x"}, log=lambda m: None)
    release_all()
    rec = json.loads((fresh / "manifest.json").read_text())
    assert rec["config"]["precision"] == "fp32" and "avx2" in rec["precision"]["reason"]


def test_train_cgn_configs_with_the_old_bf16_switch_still_load():
    from cgn.mnist.config import config_from_dict
    from cgn.config import to_dict
    from cgn.presets import preset
    old = to_dict(preset("colored-mnist"))
    del old["loss"]["precision"]
    for bf16, name in ((True, "bf16"), (False, "fp32")):
        stored = {**old, "loss": {**old["loss"], "bf16": bf16}}
        assert config_from_dict(stored).loss.precision == name
    assert preset("colored-mnist", recipe=True).loss.precision == "auto"
    assert preset("colored-mnist").loss.precision == "fp32"  # the original: fp32
