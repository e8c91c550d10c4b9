"""Seconds per MNIST-CGN training step (batch 16) per preset, and the projected training times.

    .venv/bin/python benchmarks/cgn_train_step.py                     # all presets, all modes
    .venv/bin/python benchmarks/cgn_train_step.py --presets wildlife-mnist --steps 40 --threads 2

Modes (same losses, same weights, same optimiser in all of them):
  original-like  what the original loop computes: the VGG16 run through all four hooked stages
                 whatever their weights, Gram matrices of every stage, gradients into D's
                 parameters during the generator step, fp32, and per-item data loading through a
                 DataLoader (one image converted at a time);
  ours-fp32      cgn's loop: only the stages with nonzero weight, VGG stopped at the deepest one,
                 D frozen in the generator step, the training set one in-memory uint8 tensor;
  ours-bf16      as ours-fp32 with the VGG forward under bfloat16 autocast;
  ours-auto      as ours-fp32 at ``--precision auto`` (what this machine gets by default);
  ours-auto-gan-bf16  as ours-auto with ``train.gan_precision=bf16`` (G and D under bf16
                 autocast too; opt-in, not a default);
  floor          not a step: only the style loss's VGG passes of one, at the default (auto)
                 precision -- the real batch's forward without gradients and the generated
                 batch's forward + backward to the input. A step with this style loss cannot take less.

Prints the median wall seconds per step (after warm-up), the process CPU seconds per step divided
by the thread count (an estimate of the wall time on an otherwise idle machine, useful when the
CPU is shared), the VGG style loss's share, and the projected time of the original 15 epochs and
of the preset's recipe. Modes are interleaved in rounds and the load average is printed, so
numbers taken on a shared machine can be judged. Run it with ``OMP_WAIT_POLICY=PASSIVE`` when
other processes compete for the cores (OpenMP threads spinning at barriers otherwise slow every
process down several-fold). The original code
measured 0.32 s/step (colored, double-colored) and 0.48 s/step (wildlife) on the same 2-core
machines.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from cgn.config import override  # noqa: E402
from cgn.core.losses import StyleLoss  # noqa: E402
from cgn.presets import preset as preset_config  # noqa: E402
from cgn.mnist.train import Trainer  # noqa: E402
from timing import interleaved  # noqa: E402

MODES = ("original-like", "ours-auto", "ours-fp32", "ours-bf16", "ours-auto-gan-bf16", "floor")
PRECISION = {"ours-auto": "auto", "ours-bf16": "bf16", "ours-auto-gan-bf16": "auto", "floor": "auto"}  # others: fp32
GAN_PRECISION = {"ours-auto-gan-bf16": "bf16"}  # train.gan_precision; the others: fp32

ORIGINAL_SEC_PER_STEP = {"colored-mnist": 0.32, "double-colored-mnist": 0.32, "wildlife-mnist": 0.48}
IMAGES = {"colored-mnist": 60000, "double-colored-mnist": 50000, "wildlife-mnist": 50000}


def original_gram(f: torch.Tensor) -> torch.Tensor:
    """The original's Gram matrix: view, bmm, then a separate division."""
    b, c, h, w = f.shape
    f = f.view(b, c, h * w)
    return torch.bmm(f, f.transpose(1, 2)).div(c * h * w)


class OriginalLikeStyle(StyleLoss):
    """Every hooked stage computed (weights 0 included), as the original's hook-based loss does."""

    def forward(self, generated, target):
        with torch.no_grad():
            tf = self.extractor(target, 4)
        gf = self.extractor(generated, 4)
        parts = {}
        for i, (a, b) in enumerate(zip(gf, tf)):
            parts[str(i)] = torch.nn.functional.l1_loss(original_gram(a), original_gram(b)) * self.weights[i] ** 2 * self.scale
        return sum(parts.values()), parts


class PerItemData:
    """A DataLoader that converts one image at a time (the original's per-item __getitem__)."""

    def __init__(self, data, batch_size: int, seed: int):
        from torch.utils.data import DataLoader, Dataset

        images, labels = data.images, data.labels

        class _DS(Dataset):
            def __len__(self):
                return len(labels)

            def __getitem__(self, i):
                return images[i].float() / 127.5 - 1.0, labels[i]

        g = torch.Generator().manual_seed(seed)
        self.loader = DataLoader(_DS(), batch_size=batch_size, shuffle=True, num_workers=0, generator=g,
                                 drop_last=True)
        self.it = iter(self.loader)

    def next(self):
        try:
            return next(self.it)
        except StopIteration:
            self.it = iter(self.loader)
            return next(self.it)


def make_trainer(preset: str, mode: str, root: Path, feature_extractor: str) -> Trainer:
    cfg = preset_config(preset)
    if mode not in MODES:
        raise SystemExit(f"unknown mode {mode!r}; choose from {', '.join(MODES)}")
    cfg = override(cfg, {"loss.feature_extractor": feature_extractor, "loss.precision": PRECISION.get(mode, "fp32"),
                         "train.limit_train": 4096,
                         "train.gan_precision": GAN_PRECISION.get(mode, "fp32")})
    tr = Trainer(cfg, root / f"{preset}-{mode}")
    if mode == "original-like":
        tr.style = OriginalLikeStyle(tr.extractor, list(cfg.loss.style_weights) + [0.0] * (4 - len(cfg.loss.style_weights)))
        per_item = PerItemData(tr.data, cfg.train.batch_size, cfg.train.seed)
        tr.data.batch = lambda idx, device: tuple(t.to(device) for t in per_item.next())
        tr.freeze_d_in_g_step = False  # D's parameters collect gradients in the G step too
        # the original's layout (contiguous NCHW) and its per-parameter Adam loop
        for net, name in ((tr.G, "opt_g"), (tr.D, "opt_d")):
            net.to(memory_format=torch.contiguous_format)
            setattr(tr, name, torch.optim.Adam(net.parameters(), lr=cfg.optim.lr, betas=tuple(cfg.optim.betas)))
    return tr


class VGGPasses:
    """The floor of a step: the style loss's VGG passes alone, on a real batch and a batch the
    generator made (their layouts as in the step), with the loss's own feature network (its
    precision, its depth). A call runs the real batch's forward without gradients, then the
    generated batch's forward and the backward to the input from every active stage."""

    def __init__(self, tr: Trainer):
        self.style = tr.style
        self.real, _ = tr.data.batch(tr._batch_indices(0), tr.device)
        with torch.no_grad():
            self.generated = tr.G(**tr.G.sample_inputs(tr.cfg.train.batch_size, tr.data_gen, tr.device)).composite
        self.grads: list[torch.Tensor] | None = None

    def __call__(self) -> None:
        style = self.style
        with torch.no_grad():
            style._features(self.real)
        x = self.generated.detach().requires_grad_()
        feats = [f for i, f in enumerate(style._features(x)) if i in style.active]
        if self.grads is None:
            self.grads = [torch.ones_like(f) for f in feats]
        torch.autograd.grad(feats, x, self.grads)


def step_fn(tr: Trainer, mode: str) -> Callable[[], None]:
    """One timed call of ``mode``: a training step (the step counter advanced), or the floor."""
    if mode == "floor":
        return VGGPasses(tr)

    def step() -> None:
        tr.train_step()
        tr.step += 1
    return step


def time_modes(trainers: dict[str, Trainer], steps: int, rounds: int, warmup: int = 5) -> dict:
    """Wall and CPU seconds per step of each mode: ``warmup`` untimed steps each, then ``rounds``
    interleaved rounds of ``steps // rounds`` steps per mode."""
    fns = {m: step_fn(tr, m) for m, tr in trainers.items()}
    return interleaved(fns, rounds, calls=max(1, steps // rounds), warmup=warmup)


def time_style(tr: Trainer, n: int) -> float:
    x = torch.rand(tr.cfg.train.batch_size, 3, 32, 32) * 2 - 1
    ts = []
    for _ in range(n):
        g = (torch.rand_like(x) * 2 - 1).requires_grad_()
        t0 = time.perf_counter()
        loss, _ = tr.style(g, x)
        loss.backward()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def bf16_fidelity(tr: Trainer, n: int = 4) -> tuple[float, float]:
    """bf16 vs fp32 style loss on real batches against generated ones: worst relative loss
    difference and worst cosine similarity of the gradients w.r.t. the generated images."""
    fp32 = StyleLoss(tr.extractor, tr.cfg.loss.style_weights, autocast_bf16=False)
    bf16 = StyleLoss(tr.extractor, tr.cfg.loss.style_weights, autocast_bf16=True)
    worst_rel, worst_cos = 0.0, 1.0
    for i in range(n):
        x_real, _ = tr.data.batch(torch.arange(i * 16, (i + 1) * 16), tr.device)
        with torch.no_grad():
            x_gen = tr.G(**tr.G.sample_inputs(16, torch.Generator().manual_seed(i))).composite
        grads, losses = [], []
        for loss_fn in (fp32, bf16):
            g = x_gen.clone().requires_grad_()
            loss, _ = loss_fn(g, x_real)
            loss.backward()
            grads.append(g.grad.flatten())
            losses.append(float(loss))
        worst_rel = max(worst_rel, abs(losses[1] - losses[0]) / max(abs(losses[0]), 1e-12))
        worst_cos = min(worst_cos, float(torch.nn.functional.cosine_similarity(grads[0], grads[1], dim=0)))
    return worst_rel, worst_cos


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=list(IMAGES))
    ap.add_argument("--modes", nargs="+", default=["original-like", "ours-fp32", "ours-bf16"], choices=MODES)
    ap.add_argument("--steps", type=int, default=30, help="timed steps per mode (after 5 warm-up steps)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (each --steps/rounds steps)")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--feature-extractor", default="hed")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("CGN_PROGRESS", "0")
    from cgn.core.precision import machine_summary
    print(f"{machine_summary()}; load average {os.getloadavg()}")
    with tempfile.TemporaryDirectory() as tmp:
        for preset in args.presets:
            trainers = {m: make_trainer(preset, m, Path(tmp), args.feature_extractor) for m in args.modes}
            timed = time_modes(trainers, args.steps, args.rounds)
            times = {m: t["wall"] for m, t in timed.items()}
            cpu = {m: t["cpu"] for m, t in timed.items()}
            recipe = preset_config(preset, recipe=True).train.max_steps
            full = 15 * IMAGES[preset] // 16
            print(f"\n{preset}  (original code: {ORIGINAL_SEC_PER_STEP[preset]:.2f} s/step; "
                  f"15 epochs = {full} steps; recipe = {recipe} steps)")
            base = statistics.median(times[args.modes[0]])
            for m, tr in trainers.items():
                med = statistics.median(times[m])
                if m == "floor":
                    print(f"  {m:14s} {med:.3f} s (the style loss's VGG passes alone, {tr.precision.name})")
                    continue
                style = time_style(tr, 10)
                extra = ""
                if m == "ours-bf16":
                    rel, cos = bf16_fidelity(tr)
                    extra = f"  [bf16 vs fp32 style loss: rel. diff <= {rel:.3f}, gradient cosine >= {cos:.4f}]"
                cpu_est = statistics.median(cpu[m]) / torch.get_num_threads()
                print(f"  {m:14s} {med:.3f} s/step [CPU time / threads {cpu_est:.3f}] (x{base / med:.2f} vs {args.modes[0]}, "
                      f"x{ORIGINAL_SEC_PER_STEP[preset] / med:.2f} vs original code)  style loss "
                      f"{style:.3f} s ({100 * style / med:.0f} %)  15 epochs: {full * med / 3600:.2f} h  "
                      f"recipe: {recipe * med / 60:.1f} min{extra}")
    print(f"\nload average at the end {os.getloadavg()}")


if __name__ == "__main__":
    main()
