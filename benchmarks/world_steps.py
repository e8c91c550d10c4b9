"""Seconds per training step of the three models the world pipeline trains most, per weight layout.

    .venv/bin/python benchmarks/world_steps.py [--threads 1] [--rounds 3] [--stages biggan cgn classifier]
    .venv/bin/python benchmarks/world_steps.py --axis precision     # fp32 against bf16 autocast

Stages (the shapes of the 32-px world presets; weights random, data random, so nothing needs
downloading):
  biggan      one GAN step of ``cgn imagenet pretrain biggan --preset world-32`` (D step on 64
              real + 64 generated images, G step, EMA update);
  cgn         one micro-step (forward + backward of the six losses, batch 32) of ``cgn imagenet
              train --preset world-32-cgn`` with random-init stand-ins and random VGG features
              (the same network shapes as HED's);
  classifier  one SGD step (batch 64 real + 64 counterfactual images, three heads) of ``cgn
              imagenet train-classifier --preset world-32-classifier``.
Each stage is timed with its convolution weights in channels_last (what the trainers use) and in
the default contiguous layout (``--axis layout``), or in fp32 and under bf16 (``--axis
precision``: the trainers' ``precision`` setting; for the classifier, autocast around the step),
interleaved in rounds; prints the median wall seconds per step, the
process CPU seconds per step divided by the thread count, and the machine's instruction-set level.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from cgn.config import override  # noqa: E402
from cgn.core.precision import machine_summary  # noqa: E402
from cgn.presets import preset  # noqa: E402
from timing import interleaved, median  # noqa: E402

LAYOUTS = ("channels_last", "contiguous")
PRECISIONS = ("bf16", "fp32")


def set_layout(modules, layout: str) -> None:
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    for m in modules:
        m.to(memory_format=fmt)


def biggan_stage(tmp: Path, precision: str = "fp32") -> tuple[Callable[[], object], list]:
    from cgn.imagenet.biggan_pretrain import Trainer
    rng = np.random.default_rng(0)
    data = tmp / "train.npz"
    np.savez(data, images=rng.integers(0, 256, (512, 32, 32, 3), dtype=np.uint8),
             labels=np.arange(512) % 10)
    cfg = override(preset("world-32", "imagenet pretrain biggan"),
                   {"train.data": str(data), "train.threads": 0, "train.precision": precision})
    tr = Trainer(cfg, tmp / f"biggan-{precision}", quiet=True)

    def step():
        tr.train_step()
        tr.step += 1
    return step, [tr.G, tr.D, tr.G_ema]


def cgn_stage(tmp: Path, precision: str = "fp32") -> tuple[Callable[[], object], list]:
    from cgn.imagenet.train import Trainer
    cfg = override(preset("world-32-cgn", "imagenet train"),
                   {"model.random_init": True, "loss.feature_extractor": "random", "train.batch_acc": 1,
                    "train.precision": precision})
    tr = Trainer(cfg, tmp / f"cgn-{precision}", quiet=True)
    count = itertools.count()

    def step():
        tr.micro_step(next(count), 0, 1.0)
        tr.step_optimizers()
    return step, [tr.model, tr.losses]


def classifier_stage(tmp: Path, precision: str = "fp32") -> tuple[Callable[[], object], list]:
    from cgn.imagenet.classifier_train import build_model, ensemble_loss
    cfg = preset("world-32-classifier", "imagenet train-classifier")
    model = build_model(cfg, pretrained=False).train()
    opt = torch.optim.SGD(model.parameters(), lr=cfg.optim.lr, momentum=cfg.optim.momentum)
    loss_fn = ensemble_loss(True)
    g = torch.Generator().manual_seed(0)
    b = cfg.optim.batch_size
    x_real = torch.rand(b, 3, 32, 32, generator=g)
    y_real = torch.randint(10, (b,), generator=g)
    x_cf = torch.rand(b, 3, 32, 32, generator=g)
    y_cf = [torch.randint(10, (b,), generator=g) for _ in range(3)]  # shape, texture, background

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = loss_fn(model, ((x_real, y_real), (x_cf, *y_cf))).loss
        loss.backward()
        opt.step()
    return step, [model]


STAGES = {"biggan": biggan_stage, "cgn": cgn_stage, "classifier": classifier_stage}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--stages", nargs="+", default=list(STAGES), choices=list(STAGES))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--calls", type=int, default=2, help="timed steps per variant and round")
    ap.add_argument("--axis", choices=("layout", "precision"), default="layout",
                    help="what is compared: weight layouts, or fp32 against bf16")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{machine_summary()}; load average {os.getloadavg()}")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.stages:
            if args.axis == "precision":
                variants = {p: STAGES[name](Path(tmp), p)[0] for p in PRECISIONS}
                ref_name = "fp32"
            else:
                step, modules = STAGES[name](Path(tmp))

                def timed(layout: str, step=step, modules=modules) -> Callable[[], object]:
                    def fn():
                        set_layout(modules, layout)
                        return step()
                    return fn
                variants = {lay: timed(lay) for lay in LAYOUTS}
                ref_name = "contiguous"
            times = interleaved(variants, rounds=args.rounds, calls=args.calls, warmup=1)
            ref = median(times[ref_name])
            for v in variants:
                wall = median(times[v])
                cpu = median(times[v], "cpu") / args.threads
                print(f"{name:11s} {v:14s} {wall:.3f} s/step [CPU time / threads {cpu:.3f}]"
                      f"  x{ref / wall:.2f} vs {ref_name}")
    print(f"load average at the end {os.getloadavg()}")


if __name__ == "__main__":
    main()
