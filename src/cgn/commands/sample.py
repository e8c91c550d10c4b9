"""``cgn sample``: counterfactual samples from a trained MNIST CGN (ours or the authors').

    cgn sample --cgn runs/dc/checkpoints/final.pt --shape 3 --texture 7 --background 1 \\
               --n 64 --seed 0 --out cf.npz --grid cf.png
    cgn sample --cgn double_colored_mnist.pth \\
               --reference-format --shape random --texture random --background 4 --n 100 --seed 1 --out x.npz

Each mechanism gets its own label (a digit, a comma-separated list of N digits, or ``random``)
and its own random stream derived from ``--seed``; the output ``.npz`` holds ``images``
(uint8 N x 32 x 32 x 3), ``masks`` (float32 N x 32 x 32 in [0, 1]), the three label arrays and the
seeds. The same command and seed always give the same samples, whatever ``--batch-size`` (up to float
rounding).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from cgn import cliargs
from cgn.errors import CGNError

GRID_MAX = 100  # samples shown by --grid


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sample", help="sample (counterfactual) images from an MNIST CGN",
                       description=cliargs.plain(__doc__), formatter_class=argparse.RawDescriptionHelpFormatter)
    cliargs.add_cgn_option(p)
    p.add_argument("--shape", default="random", metavar="LABELS",
                   help="shape label(s): a digit, a comma-separated list or random (default: random)")
    p.add_argument("--texture", default="random", metavar="LABELS",
                   help="texture label(s), painting the foreground: as --shape (default: random)")
    p.add_argument("--background", default="random", metavar="LABELS",
                   help="background label(s): as --shape (default: random)")
    p.add_argument("--n", type=int, default=100, metavar="N", help="number of samples (default: 100)")
    p.add_argument("--seed", type=int, default=0, metavar="N",
                   help="seed of labels drawn at random and of all noise (default: 0)")
    p.add_argument("--out", required=True, metavar="FILE.npz", help="output .npz")
    p.add_argument("--grid", metavar="FILE.png",
                   help="also write a PNG grid (composite, mask, foreground, background; <= 100 samples)")
    p.add_argument("--batch-size", type=int, default=500, metavar="N",
                   help="samples per forward pass (default: 500)")
    cliargs.add_device_option(p)
    cliargs.add_threads_option(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cgn.core import runcontrol
    from cgn.core.device import resolve_device
    from cgn.core.sampling import CGNSample, choose_all_labels, iter_samples, mechanism_seeds, to_uint8
    from cgn.io import save_npz_atomic
    from cgn.mnist.model import load_generator

    if args.n < 1:
        raise CGNError("--n must be >= 1")
    out = Path(args.out)
    if out.suffix != ".npz":
        raise CGNError(f"--out {out}: the output is an .npz file; name it e.g. samples.npz")
    runcontrol.set_threads(args.threads)
    device = resolve_device(args.device)
    model, info = load_generator(args.cgn, reference_format=args.reference_format, device=device)
    labels = choose_all_labels(args.shape, args.texture, args.background, args.n, model.n_classes,
                               args.seed)
    seeds = mechanism_seeds(args.seed)
    images, masks, head = [], [], []
    for part in iter_samples(model, args.n, torch.from_numpy(labels["shape"]),
                             torch.from_numpy(labels["texture"]), torch.from_numpy(labels["background"]),
                             seeds=seeds, batch_size=args.batch_size, device=device, desc="cgn sample"):
        images.append(to_uint8(part.composite))                 # [b, 32, 32, 3] uint8
        masks.append(part.mask[:, 0].numpy().astype(np.float32))  # [b, 32, 32]
        if sum(len(h) for h in head) < GRID_MAX:
            head.append(part)
    meta = {"checkpoint": info, "seed": args.seed, "mechanism_seeds": seeds, "n": args.n}
    save_npz_atomic(out, images=np.concatenate(images), masks=np.concatenate(masks),
                    shape_labels=labels["shape"], texture_labels=labels["texture"],
                    background_labels=labels["background"], meta=np.array(json.dumps(meta)))
    if args.grid:
        from cgn.mnist.preview import sample_grid, save_png
        save_png(args.grid, sample_grid(CGNSample.cat(head), limit=GRID_MAX))
    print(f"wrote {args.n} samples to {out}" + (f" and a grid to {args.grid}" if args.grid else ""))
    return 0
