"""Throughput and memory of the MNIST pipeline: counterfactual generation, classifier training,
and the wall time of a `cgn reproduce mnist` run.

    python benchmarks/mnist_pipeline.py --checkpoint CKPT [--reference-format] \
        [--n 20000] [--memory-n 1000000] [--threads 0] [--run runs/mnist-reference]

Each measurement runs in a fresh subprocess (its peak RSS is its own). Original code on the
2-core CPU machines (issue 4): 604 counterfactuals/s, 1,500 classifier samples/s, 1e6
counterfactuals do not fit in 24 GiB.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import subprocess
import sys
from pathlib import Path

GEN = r"""
import json, resource, shutil, sys, tempfile, time, torch
from cgn.mnist.model import load_generator
from cgn.mnist import counterfactuals as C
ckpt, ref, n, prec, threads = sys.argv[1], sys.argv[2] == "1", int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
if threads: torch.set_num_threads(threads)
model, info = load_generator(ckpt, reference_format=ref)
out = tempfile.mkdtemp()
try:
    t = time.perf_counter()
    C.generate(model, C.GenerateConfig(n=n, precision=prec), out, source={"sha256": "bench"})
    sec = time.perf_counter() - t
finally:
    shutil.rmtree(out)
print(json.dumps({"n": n, "precision": prec, "seconds": sec, "per_s": n / sec,
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

CLF = r"""
import json, sys, tempfile, time, torch
from cgn.mnist.classify import ClassifierConfig, train_classifier
from cgn.mnist import variants
prec, threads, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
variants.load_split("colored-mnist", "train"); variants.load_split("colored-mnist", "test")
cfg = ClassifierConfig(dataset="colored-mnist", train_set="real", epochs=1, precision=prec, threads=threads)
with tempfile.TemporaryDirectory() as out:
    train_classifier(cfg, out, max_steps=20)                 # warm-up run (allocations, oneDNN)
with tempfile.TemporaryDirectory() as out:
    t = time.perf_counter()
    train_classifier(cfg, out, max_steps=steps)
    sec = time.perf_counter() - t
print(json.dumps({"precision": prec, "steps": steps, "samples_per_s": steps * 64 / sec}))
"""

# Classifier training on a generated set (e.g. 1e6 counterfactuals): peak and final resident memory.
CLF_MEM = r"""
import json, resource, sys, tempfile, torch
from cgn.mnist.classify import ClassifierConfig, train_classifier
generated, dataset, threads, steps = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
cfg = ClassifierConfig(dataset=dataset, train_set="real+cf", generated=generated, epochs=1, threads=threads)
with tempfile.TemporaryDirectory() as out:
    train_classifier(cfg, out, max_steps=steps)
status = dict(l.split(":", 1) for l in open("/proc/self/status").read().splitlines() if ":" in l)
mib = lambda k: int(status[k].split()[0]) / 1024
print(json.dumps({"steps": steps, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "rss_anon_mib": mib("RssAnon"), "rss_file_mib": mib("RssFile")}))
"""


def child(code: str, *args) -> dict:
    r = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True)
    if r.returncode:
        sys.exit(r.stderr[-2000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def reproduce_times(run: Path) -> dict[str, float]:
    """Wall time per dataset from a reproduce run's log (first to last line naming it)."""
    spans: dict[str, list[dt.datetime]] = {}
    for line in (run / "log.txt").read_text().splitlines():
        m = re.match(r"\[(.*?)\] \[(.*?)\]", line)
        if m:
            spans.setdefault(m.group(2), []).append(dt.datetime.fromisoformat(m.group(1)))
    return {k: (v[-1] - v[0]).total_seconds() for k, v in spans.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--reference-format", action="store_true")
    ap.add_argument("--n", type=int, default=20_000, help="images for the throughput figure")
    ap.add_argument("--memory-n", type=int, default=0, help="also generate this many (e.g. 1000000) for peak memory")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--steps", type=int, default=400, help="classifier steps (batch 64)")
    ap.add_argument("--run", type=Path, default=None, help="a reproduce run directory to time")
    ap.add_argument("--memory-generated", type=Path, default=None,
                    help="a generated set (e.g. 1e6 counterfactuals): peak memory of classifier training on it")
    ap.add_argument("--memory-dataset", default="colored-mnist", help="the variant of --memory-generated")
    ap.add_argument("--memory-steps", type=int, default=3000, help="classifier steps for --memory-generated")
    ap.add_argument("--parts", nargs="*", choices=["generation", "classifier"],
                    default=["generation", "classifier"], help="which throughputs to measure")
    a = ap.parse_args()
    from cgn.core.precision import machine_summary
    print(machine_summary())
    ref = "1" if a.reference_format else "0"
    if "generation" in a.parts:
        generation(a, ref)
    if "classifier" in a.parts:
        classifier(a)
    if a.memory_generated:
        r = child(CLF_MEM, a.memory_generated, a.memory_dataset, a.threads, a.memory_steps)
        print(f"classifier training on {a.memory_generated} ({r['steps']:,} steps of 64): peak RSS "
              f"{r['peak_rss_mib']:,.0f} MiB; at the end {r['rss_anon_mib']:,.0f} MiB anonymous + "
              f"{r['rss_file_mib']:,.0f} MiB file-backed (shared libraries and mapped files)")
    if a.run:
        print(f"reproduce wall time ({a.run})")
        for k, v in reproduce_times(a.run).items():
            print(f"  {k}: {v / 60:.1f} min (first to last logged step)")


def generation(a, ref: str) -> None:
    print("counterfactual generation")
    for prec in ("bf16", "fp32"):
        r = child(GEN, a.checkpoint, ref, a.n, prec, a.threads)
        print(f"  {prec}: {r['per_s']:,.0f} images/s ({r['n']:,} in {r['seconds']:.1f} s), "
              f"peak RSS {r['peak_rss_mib']:,.0f} MiB")
    if a.memory_n:
        r = child(GEN, a.checkpoint, ref, a.memory_n, "bf16", a.threads)
        print(f"  bf16, {r['n']:,} images: {r['seconds']:.0f} s, peak RSS {r['peak_rss_mib']:,.0f} MiB")


def classifier(a) -> None:
    print("classifier training (batch 64)")
    for prec in ("bf16", "fp32"):
        r = child(CLF, prec, a.threads, a.steps)
        print(f"  {prec}: {r['samples_per_s']:,.0f} samples/s")


if __name__ == "__main__":
    main()
