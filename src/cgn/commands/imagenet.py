"""``cgn imagenet``: the ImageNet part of the project, a group of subcommands.

Each module in :data:`SUBMODULES` exposes ``register(subparsers)`` and adds its subcommands
(setting ``func`` on each parser, which returns an int exit code).
"""

from __future__ import annotations

import argparse
import importlib

SUBMODULES = ["cgn.commands.imagenet_cgn", "cgn.commands.imagenet_classifier", "cgn.commands.imagenet_world",
              "cgn.commands.imagenet_pretrain"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("imagenet", help="ImageNet CGN (train, generate, metrics) and the invariant "
                                        "classifier ensemble",
                       description="The ImageNet CGN (train, generate, metrics) and the invariant "
                                   "classifier ensemble (train-classifier, evaluate-classifier).")
    isub = p.add_subparsers(dest="imagenet_command", metavar="ACTION")
    isub.required = True
    for name in SUBMODULES:
        importlib.import_module(name).register(isub)
