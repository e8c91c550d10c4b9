"""Which arithmetic a run uses, chosen per machine: ``--precision auto | bf16 | fp32``.

bfloat16 pays on a CPU only where the hardware multiplies bf16 natively *and* fast: Intel's AMX
tiles. Measured (docs/speed.md): with AMX, bf16 autocast makes the VGG16 style loss and the
generation path faster; on AVX-512 machines (even with the AVX-512-BF16 dot-product
instructions) and on AVX2 machines every stage ran slower in bf16 than in fp32, since oneDNN
converts back and forth around kernels that gain little. So ``auto`` picks

- CUDA: bf16 autocast where the GPU supports bf16 (Ampere and newer), with TF32 matmuls for
  what stays in fp32; fp32 (TF32) elsewhere;
- CPU: bf16 when the CPU has AMX-BF16 and oneDNN may use it, fp32 otherwise.

:func:`cpu_isa` names the instruction-set level the kernels actually run at, honouring the caps a
user (or a benchmark) sets with ``ONEDNN_MAX_CPU_ISA`` and ``ATEN_CPU_CAPABILITY``. Every run
records the :class:`Precision` it used and why.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from functools import lru_cache

import torch

from cgn.errors import CGNError

CHOICES = ("auto", "bf16", "fp32")

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


def resolve_precision(requested: str, device: torch.device | str = "cpu") -> Precision:
    """Turn ``auto | bf16 | fp32`` into the precision this run uses, with the reason."""
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
    return Precision("fp32", f"auto: the CPU runs at {isa}, without AMX; bf16 is slower there")


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
