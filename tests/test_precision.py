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


def test_auto_picks_bf16_with_amx_and_fp32_without_native_bf16(flags, monkeypatch):
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    flags("avx2", "avx512f", "avx512_bf16", "amx_bf16")
    p = P.resolve_precision("auto", "cpu")
    assert p.bf16 and "AMX" in p.reason
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")  # the same machine, AMX capped
    p = P.resolve_precision("auto", "cpu")  # a stage without a probe
    assert p.name == "fp32" and "no probe" in p.reason
    flags("avx2")
    assert P.resolve_precision("auto", torch.device("cpu")).name == "fp32"
    flags("avx2", "avx512f")
    assert "without native bf16" in P.resolve_precision("auto", "cpu", probe=_fake_probe("x", 1, 5)).reason
    assert P.resolve_precision("bf16", "cpu") == P.Precision("bf16", "asked for")
    assert P.resolve_precision("fp32", "cpu").as_dict() == {"name": "fp32", "reason": "asked for"}
    with pytest.raises(CGNError, match="unknown precision"):
        P.resolve_precision("fp16", "cpu")


class _Clock:
    """A perf_counter that only the fake work advances: probe times exact under any load."""
    now = 0.0

    def perf_counter(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    c = _Clock()
    monkeypatch.setattr(P, "time", c)
    return c


def _fake_probe(stage: str, bf16_ms: float, fp32_ms: float, calls: list | None = None) -> P.Probe:
    """Work that takes the given times on the test's clock: what a real probe (a stage's step)
    measures."""
    def make(bf16: bool):
        if calls is not None:
            calls.append(bf16)
        ms = bf16_ms if bf16 else fp32_ms

        def work():
            torch.rand(3)
            P.time.now += ms / 1e3
        return work
    return P.Probe(stage, make, calls=2, rounds=2)


def test_auto_measures_bf16_against_fp32_where_avx512_bf16_has_no_amx(flags, monkeypatch, tmp_path, clock):
    """On AVX-512-BF16 without AMX the stage's probe decides, once per machine: the verdict is
    cached under $CGN_HOME (keyed by CPU, caps and torch), a damaged cache is measured again, bf16
    needs a clear margin, and measuring draws nothing from the run's random numbers."""
    monkeypatch.setenv("CGN_HOME", str(tmp_path))
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    flags("avx2", "avx512f", "avx512_bf16")
    built: list = []
    p = P.resolve_precision("auto", "cpu", probe=_fake_probe("fast-bf16", 2, 10, built))
    assert p.bf16 and "fast-bf16" in p.reason and "measured" in p.reason and built == [False, True]
    torch.manual_seed(7)
    expected = torch.rand(2)
    torch.manual_seed(7)
    again = P.resolve_precision("auto", "cpu", probe=_fake_probe("fast-bf16", 50, 1, built))
    assert again == p and built == [False, True]          # cached: not built, not timed again
    assert torch.equal(torch.rand(2), expected)
    torch.manual_seed(7)
    slow = P.resolve_precision("auto", "cpu", probe=_fake_probe("slow-bf16", 10, 2))
    assert slow.name == "fp32" and torch.equal(torch.rand(2), expected)  # measured, RNG untouched
    close = P.resolve_precision("auto", "cpu", probe=_fake_probe("close", 9.5, 10))
    assert close.name == "fp32"                            # 5 % faster is within the margin
    edge = P.resolve_precision("auto", "cpu", probe=_fake_probe("edge", 8.9, 10))
    assert edge.bf16 and "8.90 ms" in edge.reason and "10.00 ms" in edge.reason  # 11 % faster pays
    cache = P.probe_cache_path()
    assert cache.parent == tmp_path / "precision"
    import json
    assert set(json.loads(cache.read_text())["stages"]) == {"fast-bf16", "slow-bf16", "close", "edge"}
    cache.write_text("{not json")
    assert P.resolve_precision("auto", "cpu", probe=_fake_probe("fast-bf16", 2, 10, built)).bf16
    assert built == [False, True, False, True]            # a damaged cache: measured again
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")  # other caps: another machine key
    assert P.probe_cache_path() != cache
    blocked = tmp_path / "file"
    blocked.write_text("")
    monkeypatch.setenv("CGN_HOME", str(blocked))  # a cache that cannot be written: measured anyway
    p = P.resolve_precision("auto", "cpu", probe=_fake_probe("fast-bf16", 2, 10))
    assert p.bf16 and "not cached" in p.reason


def test_the_real_probes_run_and_choose(flags, monkeypatch, tmp_path):
    """The three MNIST stages' probes build their work and time it in both precisions."""
    from cgn.core.losses import style_loss_probe
    from cgn.mnist.classify import STEP_PROBE
    from cgn.mnist.counterfactuals import RENDER_PROBE
    monkeypatch.setenv("CGN_HOME", str(tmp_path))
    for probe in (STEP_PROBE, RENDER_PROBE, style_loss_probe([1.0, 0.0], 2, 16)):
        t = P.time_probe(P.Probe(probe.stage, probe.make, calls=1, rounds=1))
        assert set(t) == {"fp32", "bf16"} and min(t.values()) > 0, probe.stage
    assert style_loss_probe([0.01, 0.05, 0.0, 0.01], 16, 32).stage == "style-loss[relu1_2,relu2_2,relu4_3]-16x32px"


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
