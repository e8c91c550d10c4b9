"""Seconds per training step of the U2-Net stand-in and the projected cost of a preset.

    .venv/bin/python benchmarks/u2net_pretrain_cost.py                    # u2netp-32, 10 steps
    .venv/bin/python benchmarks/u2net_pretrain_cost.py --preset u2net-tiny --steps 5 --threads 2

Runs the preset's model, loss (cgn.imagenet.u2net_train.step_loss) and Adam on random images
and masks of the preset's size and batch (the cost does not depend on the pixels), after two
warm-up steps, and one evaluation forward pass. Prints the median wall and process-CPU seconds
per step (CPU / threads estimates the wall time on an idle machine: useful when the CPU is
shared), the load average, and the projection for the preset's schedule (epochs x epoch_images
/ batch_size steps, plus the periodic evaluations on eval_images and a final one on
--test-images).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from cgn.core.seeding import seed_everything
from cgn.imagenet.u2net import U2Net, U2NetConfig
from cgn.imagenet.u2net_train import step_loss
from cgn.presets import preset


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="u2netp-32")
    ap.add_argument("--steps", type=int, default=10, help="timed steps (after 2 warm-up steps)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--eval-images", type=int, default=256, help="images of the timed evaluation")
    ap.add_argument("--test-images", type=int, default=10000, help="test split of the projection")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = preset(args.preset, "imagenet pretrain u2net")
    t, size = cfg.train, cfg.data.image_size or 32
    seed_everything(0)
    model = U2Net(U2NetConfig(cfg.model.arch, cfg.model.align_corners))
    opt = torch.optim.Adam(model.parameters(), lr=cfg.optim.lr)
    x = torch.rand(t.batch_size, 3, size, size) * 2 - 1
    m = (torch.rand(t.batch_size, 1, size, size) > 0.7).float()
    wall, cpu = [], []
    for i in range(args.steps + 2):
        w0, c0 = time.perf_counter(), time.process_time()
        out = step_loss(model, (x, m))
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
        if i >= 2:
            wall.append(time.perf_counter() - w0)
            cpu.append(time.process_time() - c0)
    model.eval()
    xe = torch.rand(args.eval_images, 3, size, size) * 2 - 1
    with torch.no_grad():
        model(xe[:8])
        w0, c0 = time.perf_counter(), time.process_time()
        for chunk in xe.split(t.eval_batch_size):
            model(chunk)
        eval_wall, eval_cpu = time.perf_counter() - w0, time.process_time() - c0
    step_wall, step_cpu = statistics.median(wall), statistics.median(cpu) / args.threads
    n_steps = t.epochs * (cfg.data.epoch_images or 50000) // t.batch_size
    per_image = eval_cpu / args.threads / args.eval_images
    periodic = sum(1 for e in range(1, t.epochs) if e % t.eval_every == 0)  # the last is full
    evals = periodic * (t.eval_images or args.test_images) + args.test_images
    print(f"preset {args.preset}: arch {cfg.model.arch}, {size} px, batch {t.batch_size}, "
          f"{args.threads} thread(s); load average {os.getloadavg()[0]:.1f}")
    print(f"train step: median wall {step_wall:.3f} s, CPU/threads {step_cpu:.3f} s "
          f"({args.steps} steps)")
    print(f"evaluation: {args.eval_images} images in wall {eval_wall:.2f} s, CPU/threads "
          f"{eval_cpu / args.threads:.2f} s")
    print(f"projection (CPU/threads): {n_steps} steps {n_steps * step_cpu / 60:.1f} min + "
          f"evaluations on {evals} images {evals * per_image / 60:.1f} min")


if __name__ == "__main__":
    main()
