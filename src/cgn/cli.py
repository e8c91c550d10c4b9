"""The ``cgn`` command line. Each subcommand lives in ``cgn.commands.<name>`` and exposes
``register(subparsers)``; this file only wires them together and turns :class:`CGNError`
into a one-line message with exit status 2. SIGTERM (a scheduler's or ``kill``'s stop) is treated
like Ctrl-C, so every command checkpoints and stops the same way on either.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from cgn import __version__
from cgn.core.interrupt import restore_sigterm, sigterm_as_interrupt
from cgn.core.lock import release_all
from cgn.errors import CGNError

# Subcommand modules, in the order they appear in ``cgn --help``.
COMMAND_MODULES = [
    "cgn.commands.data",
    "cgn.commands.explain",
    "cgn.commands.train_cgn", "cgn.commands.sample",
    "cgn.commands.generate", "cgn.commands.classify", "cgn.commands.reproduce",
    "cgn.commands.imagenet", "cgn.commands.download",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cgn",
        description="Counterfactual Generative Networks: datasets, CGN training, counterfactual "
                    "sampling, invariant classifiers and evaluations.",
    )
    parser.add_argument("--version", action="version", version=f"cgn {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv  # the exact command, recorded by commands that write results
    previous = sigterm_as_interrupt()
    try:
        rc = args.func(args)
    except CGNError as e:
        print(f"cgn: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cgn: interrupted; checkpoints and finished files are kept, rerun to resume",
              file=sys.stderr)
        return 130
    finally:
        restore_sigterm(previous)
        release_all()
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
