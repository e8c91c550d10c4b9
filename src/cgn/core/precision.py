"""Which arithmetic a run uses, chosen per machine: ``--precision auto | bf16 | fp32``.

bfloat16 pays on a CPU only where the hardware multiplies bf16 natively *and* fast. Measured
(docs/speed.md): with Intel's AMX tiles bf16 autocast makes every MNIST stage faster (the VGG16
style loss of a CGN step, generation, classifier training); without any native bf16 (AVX-512
without AVX-512-BF16, AVX2) every stage is 2-11x slower in bf16. In between, on CPUs with the
AVX-512-BF16 dot-product instructions but no AMX, the vendor decides: an Intel Xeon capped at that
level ran every stage slower in bf16, a 2-core AMD EPYC of that level ran every stage faster. So
``auto`` picks

- CUDA: bf16 autocast where the GPU supports bf16 (Ampere and newer), with TF32 matmuls for
  what stays in fp32; fp32 (TF32) elsewhere;
- CPU with AMX-BF16 (and oneDNN allowed to use it): bf16;
- CPU with AVX-512-BF16 but no AMX: whichever is faster for the stage's own work, measured once
  per machine by a short :class:`Probe` (a few seconds) and cached in
  ``$CGN_HOME/precision/<machine key>.json``; bf16 only if it is at least ``BF16_MARGIN`` faster.
  A stage without a probe gets fp32;
- any other CPU: fp32.

The cache key is the CPU model and flags, the oneDNN / ATen caps in force and the torch version;
delete the file to measure again. :func:`cpu_isa` names the instruction-set level the kernels
actually run at, honouring the caps a user (or a benchmark) sets with ``ONEDNN_MAX_CPU_ISA`` and
``ATEN_CPU_CAPABILITY``. Every run records the :class:`Precision` it used and why (the measured
times included).
"""
from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import json
import os
import statistics
import time
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable

import torch

from cgn.errors import CGNError

CHOICES = ("auto", "bf16", "fp32")
BF16_MARGIN = 0.10  # a probe picks bf16 only when it is at least this much faster than fp32

# oneDNN ISA caps, lowest first (ONEDNN_MAX_CPU_ISA values); AMX needs one of the last three.
_ONEDNN_ORDER = ["SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI",
                 "AVX512_CORE_BF16", "AVX10_1_512", "AVX512_CORE_FP16", "AVX512_CORE_AMX",
                 "AVX10_1_512_AMX", "AVX512_CORE_AMX_FP16", "AVX10_1_512_AMX_FP16", "AVX10_2_512_AMX_2"]


@lru_cache(maxsize=1)
def _cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def _onednn_cap() -> int | None:
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "").strip().upper()
    if not cap or cap == "ALL":
        return None
    return _ONEDNN_ORDER.index(cap) if cap in _ONEDNN_ORDER else None


def cpu_isa() -> str:
    """The level oneDNN's kernels (convolutions, matmuls) run at: ``amx``, ``avx512_bf16``,
    ``avx512``, ``avx2`` or ``baseline`` -- what the CPU has, lowered by ``ONEDNN_MAX_CPU_ISA``."""
    flags, cap = _cpu_flags(), _onednn_cap()

    def allowed(name: str) -> bool:
        return cap is None or cap >= _ONEDNN_ORDER.index(name)

    for level, flag, isa in (("amx", "amx_bf16", "AVX512_CORE_AMX"),
                             ("avx512_bf16", "avx512_bf16", "AVX512_CORE_BF16"),
                             ("avx512", "avx512f", "AVX512_CORE"), ("avx2", "avx2", "AVX2")):
        if flag in flags and allowed(isa):
            return level
    return "baseline"


def isa_description() -> str:
    """For benchmark headers: the oneDNN level and ATen's vector level, e.g. ``amx / ATen AVX512``."""
    return f"{cpu_isa()} / ATen {torch.backends.cpu.get_cpu_capability()}"


@dataclass(frozen=True)
class Precision:
    name: str      # "bf16" | "fp32"
    reason: str    # why: asked for, or what auto saw

    @property
    def bf16(self) -> bool:
        return self.name == "bf16"

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Probe:
    """A short, representative piece of one stage's work, timed in both precisions where the
    instruction set alone does not decide. ``make(bf16)`` builds the work (models, data) and
    returns one call of it; building is not timed."""
    stage: str                                    # cache entry name, e.g. "mnist-classifier-step"
    make: Callable[[bool], Callable[[], None]]
    calls: int = 3                                # timed calls per precision and round
    rounds: int = 3


def resolve_precision(requested: str, device: torch.device | str = "cpu",
                      probe: Probe | None = None) -> Precision:
    """Turn ``auto | bf16 | fp32`` into the precision this run uses, with the reason. ``probe``:
    the stage's own work, timed (once per machine, then cached) where the CPU has AVX-512-BF16
    but no AMX."""
    if requested not in CHOICES:
        raise CGNError(f"unknown precision {requested!r}; choose one of {', '.join(CHOICES)}")
    device = torch.device(device)
    if requested != "auto":
        return Precision(requested, "asked for")
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return Precision("bf16", "auto: the GPU computes bf16 natively (bf16 autocast, TF32 matmuls)")
        return Precision("fp32", "auto: the GPU has no native bf16 (fp32 with TF32 matmuls)")
    isa = cpu_isa()
    if isa == "amx":
        return Precision("bf16", "auto: the CPU has AMX-BF16, where bf16 is faster")
    if isa == "avx512_bf16":
        if probe is None:
            return Precision("fp32", "auto: the CPU has AVX-512-BF16 but no AMX, and this stage has no "
                                     "probe to measure bf16 with; fp32")
        return measured_precision(probe)
    return Precision("fp32", f"auto: the CPU runs at {isa}, without native bf16; bf16 is slower there")


# ---- the measured choice (AVX-512-BF16 without AMX) ---------------------------------------------

def machine_key() -> dict:
    """What the measured choice depends on: the CPU, the caps in force, torch."""
    return {"cpu": cpu_model(), "flags": hashlib.sha256(" ".join(sorted(_cpu_flags())).encode()).hexdigest()[:16],
            "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA", ""),
            "aten_cpu_capability": os.environ.get("ATEN_CPU_CAPABILITY", ""), "torch": torch.__version__}


def probe_cache_path() -> Path:
    from cgn.paths import cgn_home
    key = hashlib.sha256(json.dumps(machine_key(), sort_keys=True).encode()).hexdigest()[:16]
    return cgn_home() / "precision" / f"{key}.json"


def time_probe(probe: Probe) -> dict[str, float]:
    """Median seconds per call of the probe's work in fp32 and bf16, interleaved in rounds after
    two warm-up calls each (oneDNN builds its kernels on the first calls)."""
    work = {"fp32": probe.make(False), "bf16": probe.make(True)}
    for fn in work.values():
        fn(), fn()
    times: dict[str, list[float]] = {k: [] for k in work}
    for _ in range(probe.rounds):
        for name, fn in work.items():
            t = time.perf_counter()
            for _ in range(probe.calls):
                fn()
            times[name].append((time.perf_counter() - t) / probe.calls)
    return {k: statistics.median(v) for k, v in times.items()}


def _measure(probe: Probe) -> dict:
    with torch.random.fork_rng(devices=[]):  # the probe's models draw no number of the run's
        t = time_probe(probe)
    return {"fp32_s": t["fp32"], "bf16_s": t["bf16"],
            "choice": "bf16" if t["bf16"] <= (1 - BF16_MARGIN) * t["fp32"] else "fp32",
            "threads": torch.get_num_threads(), "measured": dt.datetime.now().isoformat(timespec="seconds")}


def _valid(entry) -> bool:
    return (isinstance(entry, dict) and entry.get("choice") in ("bf16", "fp32")
            and all(isinstance(entry.get(k), (int, float)) for k in ("fp32_s", "bf16_s")))


def measured_precision(probe: Probe) -> Precision:
    """The probe's cached verdict for this machine, measured first if the cache lacks it (one
    process measures at a time; the others wait and read its result). Where ``$CGN_HOME`` cannot
    be written the probe is measured for this run alone."""
    from cgn.io import write_json_atomic
    path = probe_cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = open(path.with_suffix(".lock"), "w")
    except OSError:
        entry, where = _measure(probe), "not cached: $CGN_HOME is not writable"
    else:
        where = "cached in $CGN_HOME/precision"
        with lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                cache = json.loads(path.read_text())
                if not isinstance(cache.get("stages"), dict):
                    raise ValueError
            except (OSError, ValueError, AttributeError):  # absent or damaged: measure again
                cache = {"machine": machine_key(), "stages": {}}
            entry = cache["stages"].get(probe.stage)
            if not _valid(entry):
                entry = cache["stages"][probe.stage] = _measure(probe)
                write_json_atomic(path, cache)
    f, b = entry["fp32_s"] * 1e3, entry["bf16_s"] * 1e3
    return Precision(entry["choice"], f"auto: measured on this CPU (AVX-512-BF16, no AMX): {probe.stage} "
                                     f"takes {b:.2f} ms per call in bf16, {f:.2f} ms in fp32; bf16 only when "
                                     f">= {BF16_MARGIN:.0%} faster ({where})")


def enable_tf32(device: torch.device) -> None:
    """On CUDA, let fp32 matmuls and convolutions use TF32 tensor cores (a no-op on CPUs)."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def channels_last(*modules: torch.nn.Module) -> None:
    """Hold the 4-D weights of ``modules`` in channels_last, in place (optimisers keep their
    parameters): the layout oneDNN's and cuDNN's convolutions are fastest in; values, state_dict
    keys and shapes do not change. On one AVX2 core it makes the world's BigGAN, CGN and
    classifier steps 1.16-1.23x faster (benchmarks/world_steps.py)."""
    for m in modules:
        m.to(memory_format=torch.channels_last)


def cpu_model(default: str = "unknown CPU") -> str:
    """The CPU's model name (``/proc/cpuinfo``), else ``default``."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), default)
    except OSError:
        return default


def machine_summary() -> str:
    """One line for benchmark headers: CPU model, cores, instruction-set level, torch, threads."""
    return (f"machine: {cpu_model()}, {os.cpu_count()} cores, ISA level {isa_description()}, "
            f"torch {torch.__version__}, {torch.get_num_threads()} threads")
