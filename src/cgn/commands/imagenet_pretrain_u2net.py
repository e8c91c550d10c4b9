"""``cgn imagenet pretrain u2net``: the U2-Net stand-in, trained on a world's ground-truth masks
(docs/imagenet_cgn.md, "Training a U2-Net stand-in")."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cgn import cliargs

COMMAND = "imagenet pretrain u2net"
FIELDS = ["data.train", "data.test", "data.image_size", "model.arch", "train.epochs",
          "train.max_steps", "train.batch_size", "optim.lr", "train.seed", "train.limit_train",
          "train.limit_test", "train.device", "train.threads"]
PATHS = {"data.train", "data.test"}  # made absolute: the run directory records where its data lives


def register(sub: argparse._SubParsersAction) -> None:
    from cgn.imagenet.u2net_config import U2NetTrainConfig
    from cgn.presets import presets
    known = presets(COMMAND)
    p = sub.add_parser("u2net", help="train the U2-Net stand-in (u2netp.pth layout) on a world's "
                                     "ground-truth masks",
                       description="Train a U2-Net on images with ground-truth object masks, at the "
                                   "resolution and in the [-1, 1] input range of the ImageNet CGN, "
                                   "and save it as u2netp.pth (the public file's layout), which "
                                   "cgn imagenet train --u2net loads unchanged.")
    p.add_argument("--out", required=True, help="run directory (config, logs, checkpoints, weights)")
    p.add_argument("--preset", default=None, choices=list(known),
                   help="starting config: u2netp-32 (32 px U2-Netp) or u2net-tiny (CPU "
                        "check) (default: u2netp-32)")
    p.add_argument("--resume", action="store_true", help=cliargs.RESUME_HELP_STORED)
    cliargs.add_fields(p, U2NetTrainConfig, FIELDS, defaults={n: q.build() for n, q in known.items()},
                       required=("data.train", "data.test"))
    cliargs.add_config_options(p, "train.eval_images=2000", print_config=True)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from cgn.imagenet.u2net_config import U2NetTrainConfig
    from cgn.imagenet.u2net_train import train_u2net
    from cgn.presets import preset

    out = Path(args.out).expanduser().resolve()
    cfg = cliargs.resolve_or_resume(
        args, U2NetTrainConfig, out, lambda: preset(args.preset or "u2netp-32", COMMAND),
        values=cliargs.absolute(cliargs.given(args), PATHS),
        required=() if args.print_config else ("data.train", "data.test"))
    if args.print_config:
        cliargs.print_config(cfg)
        return 0
    results = train_u2net(cfg, out, resume=args.resume)
    if results:
        print(json.dumps(results))
    return 0
