"""``cgn imagenet pretrain``: train stand-ins of the ImageNet CGN's pretrained components on a
world with ground truth, saved in the layouts of the public weights.

Each module in :data:`SUBMODULES` exposes ``register(subparsers)`` and adds one subcommand (one
component) to the group, setting ``func`` on its parser.
"""

from __future__ import annotations

import argparse
import importlib

SUBMODULES = ["cgn.commands.imagenet_pretrain_u2net", "cgn.commands.imagenet_pretrain_biggan",
              "cgn.commands.imagenet_pretrain_judges"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pretrain", help="train stand-ins of the pretrained components on a world "
                                        "with ground truth",
                       description="Train stand-ins of the pretrained components the ImageNet CGN "
                                   "starts from, on a world whose ground truth is known, and save "
                                   "them in the layouts of the public weights.")
    psub = p.add_subparsers(dest="pretrain_command", metavar="COMPONENT")
    psub.required = True
    for name in SUBMODULES:
        importlib.import_module(name).register(psub)
