"""Every stage at every instruction-set level this CPU can run, beside the original's loops.

    python benchmarks/isa_levels.py [--levels amx avx2 ...] [--presets colored-mnist ...]
        [--steps 24] [--rounds 3] [--threads 2] [--json isa.json] [--quick] [--list]

A CPU runs its own level and every lower one; each level runs in a fresh subprocess with oneDNN
and ATen capped (they read the caps once, when they start):

    level        ONEDNN_MAX_CPU_ISA   ATEN_CPU_CAPABILITY
    amx          AVX512_CORE_AMX      avx512
    avx512_bf16  AVX512_CORE_BF16     avx512
    avx512       AVX512_CORE          avx512
    avx2         AVX2                 avx2

The subprocess first checks that the caps took effect: the ISA in oneDNN's verbose header (one
convolution) and ATen's vector capability must be the level's, else the level is reported as
failed and not measured. Then, interleaved in rounds (benchmarks/timing.py):

- CGN step (seconds per step, batch 16) of each preset: original-like, default (``auto``), fp32
  and bf16 (the modes of benchmarks/cgn_train_step.py), and the step's floor: the style loss's VGG
  passes alone at the default precision (mode ``floor``);
- counterfactual generation (images/s): the original loop (mnist_pipeline.OriginalGeneration)
  and `cgn generate` at auto / fp32 / bf16, on a randomly initialised CGN unless --checkpoint;
  floor: the frozen mechanisms' forward passes alone (mnist_pipeline.GenerationFloor);
- classifier training (samples/s, batch 64): the original loop (mnist_pipeline.OriginalClassifier)
  and `cgn train-classifier` at auto / fp32 / bf16, on colored MNIST; floor: the classifier's
  forward and backward passes alone on one batch (mnist_pipeline.ClassifierFloor).

Every floor runs at the precision ``auto`` picks for its stage. For the CGN rows a second table
gives the step's arithmetic (benchmarks/step_work.py): GFLOP per step of the original, the
default step and the floor (counted by torch), the GFLOP/s each reached, and -- with the level's
conv peak in fp32 and in bf16 -- the least time the default step could take if its work beyond
the floor (generator, discriminator, Gram matrices) ran at that peak, the speed-up over the
original and the step / floor that would give, and whether the targets (2.5x, or 1.25x the
floor) are within reach at all. The process first does what every
cgn command does (threads, :mod:`cgn.core.allocator`); the original loops run with it too.

Prints the machine line, then per level the level the kernels report, what ``auto`` chose for
each stage and why, and one Markdown table. ``--quick`` is a smoke check (< 1 min; its numbers
mean nothing); ``--list`` only checks the caps of every level. Run it on an otherwise idle machine (``OMP_WAIT_POLICY=PASSIVE``
when other processes compete for the cores).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCHMARKS))
sys.path.insert(0, str(BENCHMARKS.parent / "src"))

from cgn.errors import CGNError  # noqa: E402

# level: (ONEDNN_MAX_CPU_ISA, ATEN_CPU_CAPABILITY, CPU flags it needs), highest first
LEVELS = {
    "amx": ("AVX512_CORE_AMX", "avx512", {"amx_bf16", "amx_tile", "avx512_bf16"}),
    "avx512_bf16": ("AVX512_CORE_BF16", "avx512", {"avx512_bf16"}),
    "avx512": ("AVX512_CORE", "avx512", set()),
    "avx2": ("AVX2", "avx2", {"avx2", "fma"}),
}
AVX512_CORE = {"avx512f", "avx512bw", "avx512vl", "avx512dq"}  # ATen's avx512 kernels need these
ATEN_REPORTS = {"avx512": "AVX512", "avx2": "AVX2"}
PRESETS = ("colored-mnist", "double-colored-mnist", "wildlife-mnist")
STAGES = ("cgn", "generation", "classifier")
COLUMNS = ("original", "default", "fp32", "bf16")
PRECISIONS = (("default", "auto"), ("fp32", "fp32"), ("bf16", "bf16"))  # column: --precision
CGN_MODES = {"original": "original-like", "default": "ours-auto", "fp32": "ours-fp32",
             "bf16": "ours-bf16", "floor": "floor"}
HEADER = ("stage", "auto uses", "original", "default", "fp32", "bf16", "default / original (speed)", "floor",
          "time / floor")
# what a run measures, full and --quick (explicit options override either)
FULL = {"presets": list(PRESETS), "steps": 24, "rounds": 3, "cgn_warmup": 5, "gen_images": 2000,
        "clf_steps": 100}
QUICK = {"presets": ["colored-mnist"], "steps": 1, "rounds": 1, "cgn_warmup": 0, "gen_images": 200,
         "clf_steps": 4}


# ---- levels -------------------------------------------------------------------------------------

def detect_levels() -> list[str]:
    """The levels this CPU can run, highest first: those that :func:`cgn.core.precision.cpu_isa`
    names under the level's oneDNN cap and whose instructions the CPU has."""
    from cgn.core.precision import _cpu_flags, cpu_isa
    flags, saved = _cpu_flags(), os.environ.get("ONEDNN_MAX_CPU_ISA")
    found = []
    try:
        for level, (cap, aten, need) in LEVELS.items():
            os.environ["ONEDNN_MAX_CPU_ISA"] = cap
            if cpu_isa() == level and need <= flags and (aten != "avx512" or AVX512_CORE <= flags):
                found.append(level)
    finally:
        if saved is None:
            os.environ.pop("ONEDNN_MAX_CPU_ISA", None)
        else:
            os.environ["ONEDNN_MAX_CPU_ISA"] = saved
    return found


def select_levels(asked: list[str] | None, quick: bool) -> list[str]:
    runnable = detect_levels()
    if not runnable:
        raise CGNError("this CPU runs none of the levels (it lacks AVX2); nothing to measure")
    if not asked:
        return runnable[:1] if quick else runnable
    for level in asked:
        if level not in LEVELS:
            raise CGNError(f"unknown level {level!r}; choose from {', '.join(LEVELS)}")
        if level not in runnable:
            raise CGNError(f"this CPU cannot run level {level!r}; it runs {', '.join(runnable)}")
    return [lv for lv in runnable if lv in asked]


def onednn_isa_line() -> str | None:
    """The ISA oneDNN's verbose header names in this process (e.g. ``Intel AVX2``), from one
    convolution run with verbose output on; the header goes to the C stdout, captured here."""
    import ctypes

    import torch
    fd, path = tempfile.mkstemp()
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(fd, 1)
    try:
        with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
            x = torch.randn(16, 16, 32, 32).to(memory_format=torch.channels_last)
            torch.nn.functional.conv2d(x, torch.randn(16, 16, 3, 3).to(memory_format=torch.channels_last))
        ctypes.CDLL(None).fflush(None)
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(fd)
    text = Path(path).read_text(errors="replace")
    os.unlink(path)
    return next((line.split("isa:", 1)[1].strip() for line in text.splitlines() if ",isa:" in line), None)


def onednn_level(isa: str | None) -> str:
    """oneDNN's ISA description as one of the levels (``below avx2`` / ``unknown`` otherwise)."""
    if not isa:
        return "unknown"
    if "AMX" in isa:
        return "amx"
    if "bfloat16" in isa:
        return "avx512_bf16"
    if "AVX-512" in isa or "AVX10" in isa:
        return "avx512"
    return "avx2" if "AVX2" in isa else "below avx2"


def reported(level: str) -> dict:
    """What the kernels of this process report, and the problem if it is not ``level``."""
    import torch
    from cgn.core.precision import cpu_isa
    isa = onednn_isa_line()
    rep = {"onednn": isa, "onednn_level": onednn_level(isa),
           "aten": torch.backends.cpu.get_cpu_capability(), "cgn_cpu_isa": cpu_isa()}
    want_aten = ATEN_REPORTS[LEVELS[level][1]]
    problems = [f"oneDNN reports {isa!r} ({rep['onednn_level']})"] if rep["onednn_level"] != level else []
    if rep["aten"] != want_aten:
        problems.append(f"ATen reports {rep['aten']}, not {want_aten}")
    if rep["cgn_cpu_isa"] != level:
        problems.append(f"cgn.core.precision.cpu_isa() says {rep['cgn_cpu_isa']}")
    rep["problem"] = "; ".join(problems) or None
    return rep


# ---- the stages (run inside a level's subprocess) ----------------------------------------------

def _summary(times: dict, threads: int, work: float | None = None) -> dict:
    """Medians per column: seconds per call (no ``work``) or ``work`` per second, and the same
    from the process CPU time divided by the threads (an idle-machine estimate)."""
    wall = {c: statistics.median(t["wall"]) for c, t in times.items()}
    cpu = {c: max(statistics.median(t["cpu"]) / threads, 1e-9) for c, t in times.items()}
    if work is None:
        return {"values": wall, "cpu_estimate": cpu}
    return {"values": {c: work / s for c, s in wall.items()}, "cpu_estimate": {c: work / s for c, s in cpu.items()}}


def cgn_row(preset: str, s: dict, threads: int) -> dict:
    from cgn_train_step import make_trainer, time_modes
    from step_work import step_gflop
    with tempfile.TemporaryDirectory() as tmp:
        trainers = {mode: make_trainer(preset, mode, Path(tmp), s["feature_extractor"]) for mode in CGN_MODES.values()}
        gflop = step_gflop(trainers)  # counted once, before the warm-up (a step each)
        times = time_modes(trainers, s["steps"], s["rounds"], warmup=s["cgn_warmup"])
        auto = trainers["ours-auto"].precision.as_dict()
    times = {col: times[mode] for col, mode in CGN_MODES.items()}
    return {"stage": f"CGN step, {preset} (s)", "unit": "s/step", "lower_is_better": True, "auto": auto,
            "preset": preset, "gflop": gflop, **_summary(times, threads), "raw": times}


def generation_row(s: dict, threads: int) -> dict:
    import torch
    from mnist_pipeline import GenerationFloor, OriginalGeneration, generate_once
    from timing import interleaved
    from cgn.mnist.model import MnistCGN, load_generator
    if s["checkpoint"]:
        model, _ = load_generator(s["checkpoint"], reference_format=s["reference_format"])
    else:
        torch.manual_seed(0)
        model = MnistCGN()
    original, floor, n = OriginalGeneration(model), GenerationFloor(model, "auto"), s["gen_images"]

    def loops(k: int) -> dict:
        return {"original": lambda: original(k), **{c: (lambda p=p: generate_once(model, k, p)) for c, p in PRECISIONS},
                "floor": lambda: floor(k)}
    interleaved(loops(100), rounds=int(s["warmup"]))  # oneDNN primitives, allocator
    times = interleaved(loops(n), s["rounds"])
    from cgn.mnist.counterfactuals import RENDER_PROBE, resolve_precision
    return {"stage": "counterfactual generation (images/s)", "unit": "images/s", "lower_is_better": False,
            "auto": resolve_precision("auto", "cpu", probe=RENDER_PROBE).as_dict(), "images_per_call": n,
            **_summary(times, threads, n), "raw": times}


def classifier_row(s: dict, threads: int) -> dict:
    from mnist_pipeline import ClassifierFloor, OriginalClassifier, classifier_once
    from timing import interleaved
    from cgn.mnist import variants
    variants.load_split("colored-mnist", "train")  # built once per process, before any timing
    variants.load_split("colored-mnist", "test")
    original, floor, k = OriginalClassifier(), ClassifierFloor("auto"), s["clf_steps"]

    def loops(n: int) -> dict:
        return {"original": lambda: original(n), **{c: (lambda p=p: classifier_once(p, n)) for c, p in PRECISIONS},
                "floor": lambda: floor(n)}
    interleaved(loops(2), rounds=int(s["warmup"]))
    times = interleaved(loops(k), s["rounds"])
    from cgn.mnist.classify import STEP_PROBE, resolve_precision
    return {"stage": "classifier training (samples/s)", "unit": "samples/s", "lower_is_better": False,
            "auto": resolve_precision("auto", "cpu", probe=STEP_PROBE).as_dict(), "steps_per_call": k,
            **_summary(times, threads, 64 * k), "raw": times}


def run_level(level: str, s: dict) -> dict:
    """One level, in this process (its caps already set): the check, then the stages."""
    import torch
    from cgn.core.precision import machine_summary
    os.environ.setdefault("CGN_PROGRESS", "0")
    rep = reported(level)
    say = lambda msg: print(f"[{level}] {msg}", flush=True)  # noqa: E731
    say(f"kernels report: oneDNN {rep['onednn']!r}, ATen {rep['aten']}; cgn sees {rep['cgn_cpu_isa']}")
    out = {"level": level, "caps": {k: os.environ.get(k) for k in ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY")},
           "reported": rep, "rows": []}
    if rep["problem"]:
        out["error"] = f"the caps did not take effect: {rep['problem']}"
        return out
    from cgn.core.runcontrol import set_threads
    # what every cgn command does first (threads, cgn.core.allocator); the original loops of this
    # process run with the same allocator, which can only narrow the gap
    set_threads(s["threads"])
    threads = torch.get_num_threads()
    out.update(machine=machine_summary(),
               load_before=os.getloadavg())
    if "cgn" in s["stages"]:
        from step_work import conv_peak
        out["peak"] = {"fp32": conv_peak(torch.float32), "bf16": conv_peak(torch.bfloat16)}
        for preset in s["presets"]:
            say(f"CGN step, {preset}: 5 modes x {s['steps']} steps in {s['rounds']} rounds")
            out["rows"].append(cgn_row(preset, s, threads))
    if "generation" in s["stages"]:
        say(f"generation: 4 loops x {s['gen_images']} images in {s['rounds']} rounds")
        out["rows"].append(generation_row(s, threads))
    if "classifier" in s["stages"]:
        say(f"classifier: 4 loops x {s['clf_steps']} steps in {s['rounds']} rounds")
        out["rows"].append(classifier_row(s, threads))
    out["load_after"] = os.getloadavg()
    return out


# ---- the parent: one subprocess per level, the tables ------------------------------------------

def run_child(level: str, s: dict) -> dict:
    cap, aten, _ = LEVELS[level]
    env = dict(os.environ, ONEDNN_MAX_CPU_ISA=cap, ATEN_CPU_CAPABILITY=aten, CGN_PROGRESS="0")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "level.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", level, str(path), json.dumps(s)]
        rc = subprocess.run(cmd, env=env, stdout=sys.stderr).returncode
        if rc or not path.exists():
            return {"level": level, "rows": [], "error": f"the level's subprocess failed (exit status {rc})"}
        return json.loads(path.read_text())


def _fmt(v: float, unit: str) -> str:
    return f"{v:.3f}" if unit == "s/step" else f"{v:,.0f}"


def table(result: dict) -> list[str]:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for row in result["rows"]:
        v, unit = row["values"], row["unit"]
        speed = v["original"] / v["default"] if row["lower_is_better"] else v["default"] / v["original"]
        over_floor = v["default"] / v["floor"] if row["lower_is_better"] else v["floor"] / v["default"]
        cells = [row["stage"], row.get("auto", {}).get("name", "?"), *(_fmt(v[c], unit) for c in COLUMNS),
                 f"{speed:.2f}x", _fmt(v["floor"], unit), f"{over_floor:.2f}x"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


WORK_HEADER = ("preset", "GFLOP: original / default / floor", "GFLOP/s: original / default / floor",
               "GFLOP beyond the floor", "at the fp32 peak: least step (s), speed-up, step / floor",
               "at the bf16 peak: the same", "2.5x or 1.25x floor reachable: fp32 / bf16")


def work_table(result: dict) -> list[str]:
    """The CGN rows' arithmetic (benchmarks/step_work.py): FLOPs, the rates reached, and what
    the step's work beyond the floor allows at the level's conv peak in each precision."""
    from step_work import bounds
    rows = [r for r in result["rows"] if "gflop" in r]
    if not rows:
        return []
    peak = result["peak"]
    lines = [f"conv peak (3x3, batch 32, 256 ch, 32 px): fp32 {peak['fp32']:.0f} GFLOP/s, "
             f"bf16 {peak['bf16']:.0f} GFLOP/s", "",
             "| " + " | ".join(WORK_HEADER) + " |", "|" + "---|" * len(WORK_HEADER)]
    for row in rows:
        g, v = row["gflop"], row["values"]
        sec = {"original": v["original"], "default": v["default"], "floor": v["floor"]}
        at = {p: bounds(g, sec, peak[p]) for p in ("fp32", "bf16")}
        r = at["fp32"]["rates"]
        cells = [row["preset"], f"{g['original']:.1f} / {g['cgn']:.1f} / {g['floor']:.1f}",
                 f"{r['original']:.0f} / {r['default']:.0f} / {r['floor']:.0f}", f"{at['fp32']['rest_gflop']:.1f}",
                 *(f"{b['least_step']:.3f}, {b['best_speedup']:.2f}x, {b['least_over_floor']:.2f}x" for b in at.values()),
                 " / ".join("yes" if b["reachable"] else "no" for b in at.values())]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def report(result: dict) -> list[str]:
    level, rep = result["level"], result.get("reported", {})
    head = [f"## {level}"]
    if rep:
        head.append(f"kernels: oneDNN {rep.get('onednn')!r}, ATen {rep.get('aten')}")
    if "error" in result:
        return head + [f"FAILED: {result['error']}"]
    if not result["rows"]:
        return head
    head += [result["machine"],
             *(f"--precision auto, {row['stage']}: {row['auto']['name']} ({row['auto']['reason']})"
               for row in result["rows"] if "auto" in row),
             f"load average before {tuple(round(x, 2) for x in result['load_before'])}, after "
             f"{tuple(round(x, 2) for x in result['load_after'])}", ""]
    work = work_table(result)
    return head + table(result) + ([""] + work if work else [])


def settings(a: argparse.Namespace) -> dict:
    base = QUICK if a.quick else FULL
    s = {k: (getattr(a, k) if getattr(a, k) is not None else v) for k, v in base.items()}
    s.update(warmup=not a.quick, threads=a.threads, stages=a.stages, feature_extractor=a.feature_extractor,
             checkpoint=a.checkpoint, reference_format=a.reference_format)
    if s["gen_images"] % 100:
        raise CGNError(f"--gen-images must be a multiple of 100 (the original loop's batch), got {s['gen_images']}")
    if min(s["steps"], s["rounds"], s["clf_steps"]) < 1:
        raise CGNError("--steps, --rounds and --clf-steps must be at least 1")
    if s["steps"] < s["rounds"]:
        raise CGNError(f"--steps ({s['steps']}) must be at least --rounds ({s['rounds']}): "
                       "each round times steps // rounds steps per mode")
    return s


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        level, path, s = argv[1], Path(argv[2]), json.loads(argv[3])
        path.write_text(json.dumps(run_level(level, s)))
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--levels", nargs="+", help="levels to measure (default: every level this CPU runs)")
    ap.add_argument("--presets", nargs="+", choices=PRESETS)
    ap.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    ap.add_argument("--steps", type=int, help=f"timed CGN steps per mode (default {FULL['steps']})")
    ap.add_argument("--rounds", type=int, help=f"interleaved rounds (default {FULL['rounds']})")
    ap.add_argument("--cgn-warmup", type=int, help=f"untimed CGN steps per mode first (default {FULL['cgn_warmup']})")
    ap.add_argument("--gen-images", type=int, help=f"images per generation call (default {FULL['gen_images']})")
    ap.add_argument("--clf-steps", type=int, help=f"classifier steps per call (default {FULL['clf_steps']})")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--feature-extractor", default="hed", help="the style loss's VGG16 (the recipe's: hed)")
    ap.add_argument("--checkpoint", help="a CGN for the generation stage (default: random weights)")
    ap.add_argument("--reference-format", action="store_true", help="--checkpoint is an authors' file")
    ap.add_argument("--json", type=Path, help="also write every measurement (raw times included) here")
    ap.add_argument("--quick", action="store_true", help="a smoke check: the highest level, tiny sizes")
    ap.add_argument("--list", action="store_true", help="check every level's caps; measure nothing")
    a = ap.parse_args(argv)
    try:
        s = settings(a)
        levels = select_levels(a.levels, a.quick and not a.list)
    except CGNError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from cgn.core.precision import machine_summary
    print(machine_summary())
    print(f"levels this CPU runs: {', '.join(detect_levels())}; {'checking' if a.list else 'measuring'}: "
          f"{', '.join(levels)}")
    if a.list:
        s = {**s, "stages": []}
    results = []
    for level in levels:
        results.append(run_child(level, s))
        print("\n" + "\n".join(report(results[-1])), flush=True)
    if a.json:
        from cgn.io import write_json_atomic
        write_json_atomic(a.json, {"command": ["benchmarks/isa_levels.py", *argv], "machine": machine_summary(),
                                   "settings": s, "levels": results})
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
