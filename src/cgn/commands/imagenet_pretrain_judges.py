"""``cgn imagenet pretrain judges``: the world classifier and the shape, texture and background
judges, trained on a world (docs/world.md, "Judges")."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cgn import cliargs

COMMAND = "imagenet pretrain judges"
FIELDS = ["world", "textures", "width", "epochs", "epoch_images", "batch_size", "lr", "seed",
          "limit_train", "limit_test", "device", "threads"]
PATHS = {"world", "textures"}  # made absolute: the run directory records where its data lives


def register(sub: argparse._SubParsersAction) -> None:
    from cgn.imagenet.world_judges_config import JudgesConfig
    from cgn.presets import presets
    known = presets(COMMAND)
    p = sub.add_parser("judges", help="train the world classifier (the IS network on a world) and "
                                      "the shape, texture and background judges",
                       description="Train four small CNNs on a world: the world classifier "
                                   "(image -> class; the Inception network of the Inception Score "
                                   "on the world), the shape judge (mask -> shape class), the "
                                   "texture judge (full-frame texture -> texture class) and the "
                                   "background judge (background without object -> background "
                                   "class). Each is written as RUN/<judge>.pt, their held-out "
                                   "accuracies on the test split as RUN/results.json. Ctrl-C "
                                   "saves a checkpoint; --resume continues.")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--preset", default=None, choices=list(known),
                   help="judges-32 (the world's judges) or judges-tiny (CPU check) (default: judges-32)")
    p.add_argument("--resume", action="store_true", help=cliargs.RESUME_HELP_STORED)
    cliargs.add_fields(p, JudgesConfig, FIELDS, defaults={n: q.build() for n, q in known.items()},
                       required=("world",))
    cliargs.add_config_options(p, "checkpoint_every=200", print_config=True)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from cgn.imagenet.world_judges_config import JudgesConfig
    from cgn.imagenet.world_judges_train import train_judges
    from cgn.presets import preset

    out = Path(args.out).expanduser().resolve()
    cfg = cliargs.resolve_or_resume(
        args, JudgesConfig, out, lambda: preset(args.preset or "judges-32", COMMAND),
        values=cliargs.absolute(cliargs.given(args), PATHS),
        required=() if args.print_config else ("world",))
    if args.print_config:
        cliargs.print_config(cfg)
        return 0
    log = lambda s: (sys.stderr.write(s + "\n"), sys.stderr.flush())  # noqa: E731
    results = train_judges(cfg, out, resume=args.resume, log=log)
    print(json.dumps({"accuracy": results["accuracy"], "out": str(out),
                      "train_seconds": results["train_seconds"]}))
    return 0
