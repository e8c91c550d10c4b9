"""``cgn train-cgn``: train an MNIST CGN from a preset (the original hyper-parameters).

    cgn train-cgn --preset double-colored-mnist                 # the original 15 epochs
    cgn train-cgn --preset double-colored-mnist --recipe        # the < 30 min CPU recipe
    cgn train-cgn --preset wildlife-mnist --steps 2000 --ssim-weight 1 --out runs/wl-ssim
    cgn train-cgn --preset wildlife-mnist --out runs/wl-ssim --resume   # continue after a stop

Ctrl-C (or SIGTERM) saves a checkpoint; ``--resume`` continues exactly where it stopped.
"""

from __future__ import annotations

import argparse
import json
import sys

from cgn import cliargs
from cgn.paths import cgn_home

# The config fields that have their own option (any other: --set SECTION.FIELD=VALUE).
FIELDS = ["train.epochs", "train.max_steps", "train.batch_size", "loss.ssim_weight",
          "loss.border_weight", "loss.feature_extractor", "loss.feature_scale",
          "loss.allow_download", "loss.precision", "train.seed", "train.data_seed", "train.textures",
          "train.limit_train", "train.ema_decay", "train.device", "train.threads"]


def register(sub: argparse._SubParsersAction) -> None:
    from cgn.mnist.config import CGNTrainConfig
    from cgn.presets import presets
    known = presets("train-cgn")
    p = sub.add_parser("train-cgn", help="train an MNIST CGN (shape, texture, background mechanisms)",
                       description=cliargs.plain(__doc__),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=list(known),
                   help="dataset and its original hyper-parameters (or start from --config FILE)")
    p.add_argument("--recipe", action="store_true",
                   help="apply the preset's fast CPU recipe (see docs/mnist_cgn.md)")
    p.add_argument("--out", help="run directory (default: $CGN_HOME/runs/train-cgn/<preset>-seed<S>)")
    p.add_argument("--resume", action="store_true", help=cliargs.RESUME_HELP)
    cliargs.add_fields(p, CGNTrainConfig, FIELDS, defaults={n: q.build() for n, q in known.items()})
    cliargs.add_config_options(p, "train.sample_every=500", print_config=True)
    p.set_defaults(func=run)


def resolve_config(args: argparse.Namespace):
    from cgn.errors import CGNError
    from cgn.mnist.config import CGNTrainConfig
    from cgn.presets import preset
    if bool(args.preset) == bool(args.config):
        raise CGNError("give --preset NAME or --config FILE (a saved config), one of the two")
    if args.recipe and not args.preset:
        raise CGNError("--recipe applies a preset's recipe; use it with --preset")
    return cliargs.resolve(args, CGNTrainConfig,
                           lambda: preset(args.preset, "train-cgn", recipe=args.recipe))


def run(args: argparse.Namespace) -> int:
    from cgn.mnist.train import Trainer
    cfg = resolve_config(args)
    if args.print_config:
        cliargs.print_config(cfg)
        return 0
    out = args.out or str(cgn_home() / "runs" / "train-cgn" / f"{cfg.preset}-seed{cfg.train.seed}")
    trainer = Trainer(cfg, out, resume=args.resume)

    results = trainer.fit()  # Ctrl-C / SIGTERM: a checkpoint, then cgn.cli reports the interrupt
    keys = ("steps", "mask_mean", "shape_accuracy", "sec_per_step", "train_seconds")
    print(json.dumps({k: results.get(k) for k in keys} | {"run": str(trainer.out)}), file=sys.stdout)
    return 0
