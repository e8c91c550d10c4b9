"""``cgn imagenet pretrain MODEL``: cgn trains its own stand-ins for the public pretrained weights.

Each stand-in keeps its subcommands in its own module (listed in
:data:`cgn.commands.imagenet.SUBMODULES`) and adds them to the group that :func:`group` returns:
the first caller makes the ``pretrain`` parser, later callers get the same one.
"""

from __future__ import annotations

import argparse


def group(imagenet_sub: argparse._SubParsersAction) -> argparse._SubParsersAction:
    """The subparsers of ``cgn imagenet pretrain`` (made on first use)."""
    parser = imagenet_sub.choices.get("pretrain")
    if parser is None:
        parser = imagenet_sub.add_parser(
            "pretrain", help="train the pretrained parts (BigGAN-deep, ...) on your own data",
            description="Train cgn's stand-ins for the public pretrained weights on a labelled "
                        "data set (a world), saved in the public files' layout so that the "
                        "ImageNet commands load them unchanged.")
        sub = parser.add_subparsers(dest="pretrain_command", metavar="MODEL")
        sub.required = True
        parser.cgn_pretrain = sub
    return parser.cgn_pretrain
