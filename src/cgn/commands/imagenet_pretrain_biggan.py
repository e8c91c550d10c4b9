"""``cgn imagenet pretrain biggan | biggan-export``: a BigGAN-deep stand-in trained as a GAN.

    cgn imagenet pretrain biggan --preset world-32 --data train.npz --out runs/biggan
    cgn imagenet pretrain biggan --out runs/biggan --resume            # after a stop
    cgn imagenet pretrain biggan-export --from runs/biggan --out weights/biggan
    cgn imagenet train --biggan runs/biggan/biggan ...                   # the export, unchanged

Multi-GPU: ``torchrun --nproc_per_node=N -m cgn imagenet pretrain biggan ...``.
"""

from __future__ import annotations

import argparse
import json

from cgn import cliargs

SUBCOMMAND = "imagenet pretrain biggan"  # its presets' key in cgn.presets
FIELDS = ["train.data", "train.steps", "train.batch_size", "train.seed", "model.resolution",
          "model.g_width", "model.d_width", "model.num_classes", "optim.lr_g", "optim.lr_d",
          "optim.d_steps", "train.ema_decay", "train.ema_start", "train.limit_train",
          "train.precision", "train.device", "train.threads"]


def register(sub: argparse._SubParsersAction) -> None:
    from cgn.imagenet.biggan_pretrain_config import BigGANPretrainConfig
    from cgn.presets import presets
    known = presets(SUBCOMMAND)
    p = sub.add_parser("biggan", help="train a class-conditional BigGAN-deep on a labelled .npz",
                       description="Train a class-conditional BigGAN-deep (hinge loss, Adam, EMA "
                                   "of G) on a labelled .npz and export the EMA generator as a "
                                   "config.json + pytorch_model.bin folder for cgn imagenet train "
                                   "--biggan. Ctrl-C or SIGTERM saves a checkpoint; --resume "
                                   "continues bit-identically.")
    p.add_argument("--preset", choices=list(known), default=None,
                   help="world-32 (the world's stand-in) or biggan-tiny (CPU check) (default: world-32)")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--resume", action="store_true", help=cliargs.RESUME_HELP_STORED)
    cliargs.add_fields(p, BigGANPretrainConfig, FIELDS,
                       defaults={n: q.build() for n, q in known.items()},
                       notes={"train.data": "none; required to start a run"})
    cliargs.add_config_options(p, "train.sample_every=1000", print_config=True)
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=_train)

    e = sub.add_parser("biggan-export", help="export a stand-in's EMA generator from a checkpoint",
                       description="Write the EMA generator of a cgn imagenet pretrain biggan run "
                                   "(its final.pt, else last.pt) or of one of its checkpoints as a "
                                   "config.json + pytorch_model.bin folder (the public layout), "
                                   "with freshly measured standing statistics.")
    e.add_argument("--from", dest="source", required=True, metavar="RUN|CHECKPOINT",
                   help="the run directory or a checkpoint file of it")
    e.add_argument("--out", required=True, metavar="DIR", help="folder to write")
    e.set_defaults(func=_export)


def _config(args: argparse.Namespace):
    from cgn.imagenet.biggan_pretrain import stored_config
    from cgn.imagenet.biggan_pretrain_config import BigGANPretrainConfig
    from cgn.presets import preset
    # the run directory records where its data lives
    values = cliargs.absolute(cliargs.given(args), {"train.data"})
    return cliargs.resolve_or_resume(
        args, BigGANPretrainConfig, args.out, lambda: preset(args.preset or "world-32", SUBCOMMAND),
        values=values, required=["train.data"], stored=stored_config)


def _train(args: argparse.Namespace) -> int:
    from cgn.core.distributed import is_main_process
    from cgn.imagenet.biggan_pretrain import train
    cfg = _config(args)
    if args.print_config:
        cliargs.print_config(cfg)
        return 0
    results = train(cfg, args.out, resume=args.resume, quiet=args.quiet)
    if is_main_process():
        keys = ("steps", "sec_per_step", "train_seconds", "biggan")
        print(json.dumps({k: results.get(k) for k in keys}))
    return 0


def _export(args: argparse.Namespace) -> int:
    from cgn.imagenet.biggan_pretrain import export_checkpoint
    folder = export_checkpoint(args.source, args.out)
    print(json.dumps({"biggan": str(folder)}))
    return 0
