"""``cgn data``: build, export and preview the MNIST variants."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="build and preview the Colored / Double-colored / Wildlife MNIST datasets")
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION")
    dsub.required = True
    from cgn.commands import _data_impl
    _data_impl.register(dsub)
