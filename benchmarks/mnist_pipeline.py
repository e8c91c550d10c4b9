"""Throughput and memory of the MNIST pipeline: counterfactual generation, classifier training,
and the wall time of a `cgn reproduce mnist` run.

    python benchmarks/mnist_pipeline.py --checkpoint CKPT [--reference-format] \
        [--n 20000] [--memory-n 1000000] [--threads 0] [--run runs/mnist-reference]

Each measurement runs in a fresh subprocess (its peak RSS is its own). Original code on the
2-core CPU machines (issue 4): 604 counterfactuals/s, 1,500 classifier samples/s, 1e6
counterfactuals do not fit in 24 GiB.

The measured work is importable: ``generate_once`` and ``classifier_once`` (what `cgn generate`
and `cgn train-classifier` run), and the original-equivalent loops ``OriginalGeneration`` and
``OriginalClassifier``; benchmarks/isa_levels.py times them side by side.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from torch import nn

BENCHMARKS = Path(__file__).resolve().parent


# ---- the measured work, importable (benchmarks/isa_levels.py interleaves it) ------------------

def generate_once(model, n: int, precision: str) -> None:
    """What `cgn generate` runs: n counterfactuals (cf_ratio 10) from per-image seeds, the
    mechanisms frozen for inference, written as shards into a temporary folder."""
    from cgn.mnist import counterfactuals as C
    with tempfile.TemporaryDirectory() as out:
        C.generate(model, C.GenerateConfig(n=n, precision=precision), out, source={"sha256": "bench"})


ORIGINAL_GEN_BATCH = 100  # the original's cgn.batch_size during generation


class OriginalGeneration:
    """The original's generation loop, on a copy of the same CGN: per batch of 100 shape labels
    one CGN call for the masks, then ``cf_ratio`` calls with shuffled texture and background
    labels and fresh noise, each composed with those masks. Every call runs all three mechanisms
    (the later calls' masks are dropped), layer by layer (Upsample + Conv2d, BatchNorm as a
    layer), fp32, NCHW; the images are kept as float32 and saved with torch.save at the end."""

    def __init__(self, model, cf_ratio: int = 10):
        from cgn.mnist.mechanism import set_fused
        self.model = set_fused(copy.deepcopy(model).eval().to(memory_format=torch.contiguous_format), False)
        self.cf_ratio = cf_ratio

    def _cgn(self, ys) -> list[torch.Tensor]:
        m = self.model
        return [m.run_mechanism(k, y, **m.draw_latents(k, len(y))) for k, y in zip(m.mechanisms, ys)]

    @torch.no_grad()
    def __call__(self, n: int) -> None:
        """``n`` images: a multiple of the batch of 100."""
        from cgn.core.composer import compose
        b = ORIGINAL_GEN_BATCH
        if n % b:
            raise ValueError(f"the original loop makes batches of {b}; n={n} is not a multiple")
        xs, labels = [], []
        while len(xs) * b < n:
            y = torch.randint(10, (b,))
            mask = self._cgn((y, y, y))[0]
            for _ in range(self.cf_ratio):
                if len(xs) * b >= n:
                    break
                _, fg, bg = self._cgn((y, y[torch.randperm(b)], y[torch.randperm(b)]))
                xs.append(compose(mask, fg, bg).cpu())
                labels.append(y)
        with tempfile.TemporaryDirectory() as out:
            torch.save([torch.cat(xs), torch.cat(labels)], Path(out) / "cf.pth")


class GenerationFloor:
    """The floor of generation: only the frozen mechanisms' forward passes of ``generate_once``
    (one mask per ``cf_ratio`` images, a texture and a background per image, in the generation's
    batches) at ``precision`` resolved as `cgn generate` resolves it, the latents drawn once
    beforehand; no per-image seeding, no uint8 conversion, no shards."""

    def __init__(self, model, precision: str, cf_ratio: int = 10):
        import contextlib
        from cgn.mnist import counterfactuals as C
        from cgn.mnist.mechanism import frozen_inference
        self.model, self.cf_ratio, self.batch = copy.deepcopy(model).eval(), cf_ratio, C.GenerateConfig().batch_size
        name = C.resolve_precision(precision, "cpu", probe=C.RENDER_PROBE).name
        self._frozen = contextlib.ExitStack()  # the mechanisms stay frozen for this object's life
        self._frozen.enter_context(frozen_inference(self.model, C._DTYPES[name]))
        self.latents: dict[int, dict] = {}

    def _inputs(self, n: int) -> dict:
        if n not in self.latents:
            m, g = self.model, torch.Generator().manual_seed(0)
            self.latents[n] = {k: (torch.randint(10, (c,), generator=g), m.draw_latents(k, c, g)) for k, c in
                               (("shape", -(-n // self.cf_ratio)), ("texture", n), ("background", n))}
        return self.latents[n]

    @torch.no_grad()
    def __call__(self, n: int) -> None:
        for k, (y, lat) in self._inputs(n).items():
            for a in range(0, len(y), self.batch):
                self.model.run_mechanism(k, y[a:a + self.batch], **{q: v[a:a + self.batch] for q, v in lat.items()})


class ClassifierFloor:
    """The floor of classifier training: only the classifier's forward and backward passes on one
    fixed batch of 64 (no data loading, no optimiser step), at the precision `cgn
    train-classifier` resolves."""

    def __init__(self, precision: str):
        from cgn.mnist import classify as K
        from cgn.mnist.classifier import MnistClassifier
        self.bf16 = K.resolve_precision(precision, "cpu", probe=K.STEP_PROBE).bf16
        self.model = MnistClassifier().to(memory_format=torch.channels_last).train()
        g = torch.Generator().manual_seed(0)
        self.x, self.y = torch.rand(64, 3, 32, 32, generator=g) * 2 - 1, torch.randint(10, (64,), generator=g)
        self._log_probs = K._log_probs

    def __call__(self, steps: int) -> None:
        for _ in range(steps):
            self.model.zero_grad(set_to_none=True)
            nn.functional.nll_loss(self._log_probs(self.model, self.x, self.bf16), self.y).backward()


def classifier_once(precision: str, steps: int, dataset: str = "colored-mnist") -> None:
    """What `cgn train-classifier --train-set real` runs, stopped after ``steps`` steps (batch
    64): its setup (run folder, model, data order) included, amortised over the steps."""
    from cgn.mnist.classify import ClassifierConfig, train_classifier
    cfg = ClassifierConfig(dataset=dataset, train_set="real", epochs=1, precision=precision)
    with tempfile.TemporaryDirectory() as out:
        train_classifier(cfg, out, max_steps=steps)


def original_cnn() -> nn.Module:
    """The paper's classifier as the original writes it (Conv -> ReLU -> MaxPool order)."""
    return nn.Sequential(
        nn.BatchNorm2d(3), nn.Conv2d(3, 32, 5), nn.ReLU(), nn.MaxPool2d(3, stride=2),
        nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.AvgPool2d(7), nn.Flatten(), nn.Linear(64, 10),
        nn.LogSoftmax(dim=1))


class OriginalClassifier:
    """The original's classifier loop on the same real images: a float32 TensorDataset read item
    by item through a shuffling DataLoader (batch 64), the CNN in fp32 NCHW, Adadelta lr 1.0, NLL.
    The images are converted to float once, before any timing (in the original's favour)."""

    def __init__(self, dataset: str = "colored-mnist", n_images: int = 10_000):
        from torch.utils.data import TensorDataset
        from cgn.mnist import variants
        split = variants.load_split(dataset, "train")
        x = variants.to_tensor(split["images"][:n_images]).contiguous()
        self.data = TensorDataset(x, torch.as_tensor(split["labels"][:n_images], dtype=torch.int64))

    def __call__(self, steps: int) -> None:
        from torch.utils.data import DataLoader
        model = original_cnn()
        opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
        loader = DataLoader(self.data, batch_size=64, shuffle=True)
        done = 0
        while done < steps:
            for x, y in loader:
                opt.zero_grad()
                loss = nn.functional.nll_loss(model(x), y)
                loss.backward()
                opt.step()
                done += 1
                if done == steps:
                    break


# ---- the command-line benchmark: one fresh subprocess per measurement --------------------------

GEN = r"""
import json, resource, sys
sys.path.insert(0, sys.argv[1])
import torch
from mnist_pipeline import generate_once
from timing import interleaved
from cgn.mnist.model import load_generator
ckpt, ref, n, prec, threads = sys.argv[2], sys.argv[3] == "1", int(sys.argv[4]), sys.argv[5], int(sys.argv[6])
if threads: torch.set_num_threads(threads)
model, info = load_generator(ckpt, reference_format=ref)
sec = interleaved({"gen": lambda: generate_once(model, n, prec)}, rounds=1)["gen"]["wall"][0]
print(json.dumps({"n": n, "precision": prec, "seconds": sec, "per_s": n / sec,
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

CLF = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
import torch
from mnist_pipeline import classifier_once
from timing import interleaved
from cgn.mnist import variants
prec, threads, steps = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
if threads: torch.set_num_threads(threads)
variants.load_split("colored-mnist", "train"); variants.load_split("colored-mnist", "test")
classifier_once(prec, 20)                                # warm-up run (allocations, oneDNN)
sec = interleaved({"clf": lambda: classifier_once(prec, steps)}, rounds=1)["clf"]["wall"][0]
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
        r = child(GEN, BENCHMARKS, a.checkpoint, ref, a.n, prec, a.threads)
        print(f"  {prec}: {r['per_s']:,.0f} images/s ({r['n']:,} in {r['seconds']:.1f} s), "
              f"peak RSS {r['peak_rss_mib']:,.0f} MiB")
    if a.memory_n:
        r = child(GEN, BENCHMARKS, a.checkpoint, ref, a.memory_n, "bf16", a.threads)
        print(f"  bf16, {r['n']:,} images: {r['seconds']:.0f} s, peak RSS {r['peak_rss_mib']:,.0f} MiB")


def classifier(a) -> None:
    print("classifier training (batch 64)")
    for prec in ("bf16", "fp32"):
        r = child(CLF, BENCHMARKS, prec, a.threads, a.steps)
        print(f"  {prec}: {r['samples_per_s']:,.0f} samples/s")


if __name__ == "__main__":
    main()
