"""benchmarks/isa_levels.py: level detection, the cap check, and the table's shape (no timing
values are asserted: speed stays in benchmarks)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cgn.errors import CGNError

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "isa_levels.py"
sys.path.insert(0, str(SCRIPT.parent))
import isa_levels  # noqa: E402


def test_levels_this_cpu_runs(monkeypatch):
    from cgn.core.precision import cpu_isa
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    levels = isa_levels.detect_levels()
    if not levels:
        pytest.skip("this CPU has no AVX2: the benchmark has no level to run")
    order = list(isa_levels.LEVELS)
    assert levels[0] == cpu_isa()                      # the highest is what the CPU runs uncapped
    assert levels == sorted(levels, key=order.index)   # highest first, each level once
    assert "avx2" in levels                            # every x86-64 level above includes AVX2
    assert os.environ.get("ONEDNN_MAX_CPU_ISA") is None  # detection leaves the environment alone
    assert isa_levels.select_levels(None, quick=True) == levels[:1]
    with pytest.raises(CGNError, match="unknown level 'avx9'"):
        isa_levels.select_levels(["avx9"], quick=False)
    above = [lv for lv in order if lv not in levels]
    if above:
        with pytest.raises(CGNError, match="cannot run level"):
            isa_levels.select_levels(above[:1], quick=False)


def test_onednn_descriptions_map_to_levels():
    amx = ("Intel AVX-512 with float16, Intel DL Boost and bfloat16 support and Intel AMX with "
           "bfloat16 and 8-bit integer support")
    assert isa_levels.onednn_level(amx) == "amx"
    assert isa_levels.onednn_level("Intel AVX-512 with Intel DL Boost and bfloat16 support") == "avx512_bf16"
    assert isa_levels.onednn_level("Intel AVX-512 with AVX512BW, AVX512VL, and AVX512DQ extensions") == "avx512"
    assert isa_levels.onednn_level("Intel AVX2") == "avx2"
    assert isa_levels.onednn_level("Intel AVX") == "below avx2"
    assert isa_levels.onednn_level(None) == "unknown"


def test_quick_run_prints_one_table_per_level(tmp_path):
    if not isa_levels.detect_levels():
        pytest.skip("this CPU has no AVX2: the benchmark has no level to run")
    out = tmp_path / "isa.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", CGN_PROGRESS="0")
    env.pop("ONEDNN_MAX_CPU_ISA", None)
    r = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--stages", "generation", "--gen-images", "100",
                        "--threads", "1", "--json", str(out)], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    data = json.loads(out.read_text())
    (level,) = data["levels"]
    name = level["level"]
    # the subprocess ran under the level's caps and its kernels reported that level
    assert level["caps"] == {"ONEDNN_MAX_CPU_ISA": isa_levels.LEVELS[name][0],
                             "ATEN_CPU_CAPABILITY": isa_levels.LEVELS[name][1]}
    assert level["reported"]["onednn_level"] == name and level["reported"]["problem"] is None
    (row,) = level["rows"]
    assert set(row["values"]) == {*isa_levels.COLUMNS, "floor"} and all(v > 0 for v in row["values"].values())
    assert row["auto"]["name"] in ("bf16", "fp32") and row["auto"]["reason"].startswith("auto: ")
    assert all(len(t["wall"]) == 1 for t in row["raw"].values())  # --quick: one round, one call each

    lines = r.stdout.splitlines()
    assert f"## {name}" in lines
    header = "| " + " | ".join(isa_levels.HEADER) + " |"
    i = lines.index(header)
    assert lines[i + 1] == "|" + "---|" * len(isa_levels.HEADER)
    cells = [c.strip() for c in lines[i + 2].strip("|").split("|")]
    assert len(cells) == len(isa_levels.HEADER)
    assert cells[0] == "counterfactual generation (images/s)" and cells[1] == row["auto"]["name"]
    assert cells[6].endswith("x") and cells[8].endswith("x")  # speed-up over the original; time over the floor
    assert f"--precision auto, {cells[0]}: {row['auto']['name']}" in r.stdout
    assert i + 3 == len(lines) or not lines[i + 3].startswith("|")  # one row: one stage asked for
