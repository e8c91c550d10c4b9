"""Time to build each MNIST variant's train and test split, and the peak memory of doing so.

Each variant runs in a fresh subprocess so its peak RSS is its own. Usage:

    python benchmarks/data_build.py [--textures DIR]

Target (issue 2): under 20 s per variant (both splits, 60k images) on a 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, resource, sys, time
from cgn.mnist.source import load_mnist
from cgn.mnist import variants
load_mnist()  # the verified cache is built once per machine; not part of the timing
variant, textures = sys.argv[1], (sys.argv[2] or None)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
out = {"variant": variant}
for split in variants.SPLITS:
    t = time.perf_counter()
    d = variants.load_split(variant, split, textures=textures if variant == "wildlife-mnist" else None)
    out[split + "_s"] = round(time.perf_counter() - t, 2)
    out[split + "_n"] = len(d["labels"])
out["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
out["peak_rss_above_start_mib"] = round((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024, 1)
print(json.dumps(out))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--textures", default="", help="wildlife texture folder (default: procedural set)")
    args = ap.parse_args()
    from cgn.core.precision import machine_summary
    print(machine_summary())
    print(f"{'variant':24s} {'train (s)':>10s} {'test (s)':>9s} {'total (s)':>10s} {'peak RSS (MiB)':>15s}")
    for v in ("colored-mnist", "double-colored-mnist", "wildlife-mnist"):
        r = json.loads(subprocess.run([sys.executable, "-c", CHILD, v, args.textures], check=True,
                                      capture_output=True, text=True).stdout)
        print(f"{v:24s} {r['train_s']:10.2f} {r['test_s']:9.2f} {r['train_s'] + r['test_s']:10.2f} "
              f"{r['peak_rss_mib']:15.1f}")


if __name__ == "__main__":
    main()
