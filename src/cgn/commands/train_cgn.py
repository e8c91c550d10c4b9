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

from cgn.config import override, to_dict
from cgn.paths import cgn_home


def register(sub: argparse._SubParsersAction) -> None:
    from cgn.mnist.config import PRESETS
    p = sub.add_parser("train-cgn", help="train an MNIST CGN (shape, texture, background mechanisms)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", required=True, choices=list(PRESETS), help="dataset and its original hyper-parameters")
    p.add_argument("--recipe", action="store_true",
                   help="apply the preset's fast CPU recipe (see docs/mnist_cgn.md)")
    p.add_argument("--out", help="run directory (default: $CGN_HOME/runs/train-cgn/<preset>-seed<S>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--epochs", type=int, help="epochs (original: 15)")
    p.add_argument("--steps", type=int, help="stop after this many steps (overrides --epochs)")
    p.add_argument("--batch-size", type=int, help="batch size (original: 16)")
    p.add_argument("--ssim-weight", type=float, help="weight of the SSIM loss (study; default 0)")
    p.add_argument("--border-weight", type=float, help="weight of the mask border loss (default 0)")
    p.add_argument("--feature-extractor", help="VGG16 weights of the style loss: auto | imagenet | hed | "
                                               "random | PATH to a torchvision vgg16 state dict")
    p.add_argument("--feature-scale", type=float,
                   help="calibration of the VGG activations (style loss times its square; default 1)")
    p.add_argument("--allow-download", action="store_true", default=None,
                   help="let auto/imagenet try the torchvision VGG16 download")
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                   help="bfloat16 autocast for the VGG16 forward")
    p.add_argument("--seed", type=int, help="training seed (default 0)")
    p.add_argument("--data-seed", type=int, help="seed the training split is built with (default 0)")
    p.add_argument("--textures", help="wildlife-mnist: texture folder with object/ and background/ "
                                      "(e.g. ../shared/data/cgn_reference/textures)")
    p.add_argument("--limit-train", type=int, help="use only the first N training images")
    p.add_argument("--device", help="auto | cpu | cuda[:N]")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="any other config field, e.g. --set train.sample_every=500 (repeatable)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.set_defaults(func=run)


_FLAG_FIELDS = {
    "epochs": "train.epochs", "steps": "train.max_steps", "batch_size": "train.batch_size",
    "ssim_weight": "loss.ssim_weight", "border_weight": "loss.border_weight",
    "feature_extractor": "loss.feature_extractor", "feature_scale": "loss.feature_scale", "allow_download": "loss.allow_download",
    "bf16": "loss.bf16", "seed": "train.seed", "data_seed": "train.data_seed",
    "limit_train": "train.limit_train", "textures": "train.textures", "device": "train.device", "threads": "train.threads",
}


def resolve_config(args: argparse.Namespace):
    from cgn.mnist.config import preset_config
    cfg = preset_config(args.preset, recipe=args.recipe)
    changes = {field: getattr(args, flag) for flag, field in _FLAG_FIELDS.items()
               if getattr(args, flag, None) is not None}
    cfg = override(cfg, changes)
    return override(cfg, args.set) if args.set else cfg


def run(args: argparse.Namespace) -> int:
    from cgn.mnist.train import Trainer
    cfg = resolve_config(args)
    if args.print_config:
        print(json.dumps(to_dict(cfg), indent=2))
        return 0
    out = args.out or str(cgn_home() / "runs" / "train-cgn" / f"{args.preset}-seed{cfg.train.seed}")
    trainer = Trainer(cfg, out, resume=args.resume)

    results = trainer.fit()  # Ctrl-C / SIGTERM: a checkpoint, then cgn.cli reports the interrupt
    keys = ("steps", "mask_mean", "shape_accuracy", "sec_per_step", "train_seconds")
    print(json.dumps({k: results.get(k) for k in keys} | {"run": str(trainer.out)}), file=sys.stdout)
    return 0
