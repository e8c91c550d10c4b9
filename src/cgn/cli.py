"""The ``cgn`` command line. Each subcommand lives in ``cgn.commands.<name>`` and exposes
``register(subparsers)``; this file only wires them together and turns :class:`CGNError`
into a one-line message with exit status 2. SIGTERM (a scheduler's or ``kill``'s stop) is treated
like Ctrl-C, so every command checkpoints and stops the same way on either.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import sys

from cgn import __version__
from cgn.core.interrupt import restore_sigterm, sigterm_as_interrupt
from cgn.core.lock import discard_unused, release_all
from cgn.core.rundir import discard_unstarted, forget_started
from cgn.errors import CGNError

# Subcommand modules, in the order they appear in ``cgn --help``.
COMMAND_MODULES = [
    "cgn.commands.data",
    "cgn.commands.explain",
    "cgn.commands.train_cgn", "cgn.commands.sample",
    "cgn.commands.generate", "cgn.commands.classify", "cgn.commands.reproduce",
    "cgn.commands.imagenet", "cgn.commands.download",
]


class _Parser(argparse.ArgumentParser):
    """Argument errors in the same one-line form as every other error (subcommands inherit it)."""

    def error(self, message: str):
        self.exit(2, f"cgn: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
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


_OS_FIXES = {
    errno.ENOSPC: "no space left on the device; free some space or choose another folder, then "
                  "rerun (finished files are kept and the run resumes)",
    errno.EDQUOT: "disk quota exceeded; free some space or choose another folder, then rerun",
    errno.EACCES: "permission denied; choose a folder you can write to or fix its permissions",
    errno.EPERM: "operation not permitted; choose a folder you can write to or fix its permissions",
    errno.EROFS: "the file system is read-only; choose a writable folder",
    errno.ENOTDIR: "a part of this path is a file, not a folder; choose another path",
    errno.EISDIR: "this is a folder where a file is expected; give the path of a file",
    errno.ENOENT: "no such file or folder; check the path",
    errno.EEXIST: "it already exists; remove it or choose another path",
}


def _worker_error(text: str) -> str:
    """An error re-raised from a DataLoader worker carries the worker's traceback in its text:
    keep the one line the worker's own error said."""
    if "Original Traceback" not in text:
        return text
    last = [line for line in text.strip().splitlines() if line.strip()][-1]
    return last.split(": ", 1)[1] if ": " in last and last.split(": ", 1)[0].endswith(("Error", "Exception")) else last


def os_error_message(e: OSError) -> str:
    """One line for an OSError: what failed, where, and how to fix it."""
    where = " -> ".join(str(f) for f in (e.filename, e.filename2) if f is not None)
    fix = _OS_FIXES.get(e.errno) if e.errno is not None else None
    what = fix or (e.strerror or _worker_error(str(e)).strip().splitlines()[0] if str(e).strip() else type(e).__name__)
    if type(e).__name__ == "UnidentifiedImageError":  # PIL: a damaged file or not an image
        what += "; replace or remove the damaged image"
    return f"{where}: {what}" if where else what


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv  # the exact command, recorded by commands that write results
    previous = sigterm_as_interrupt()
    try:
        rc = args.func(args)
    except CGNError as e:
        discard_unstarted()  # a failed start leaves no run directory behind
        discard_unused()
        print(f"cgn: error: {_worker_error(str(e))}", file=sys.stderr)
        return 2
    except OSError as e:  # a folder, permission, disk or file problem the user can fix
        discard_unstarted()
        discard_unused()
        print(f"cgn: error: {os_error_message(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cgn: interrupted; checkpoints and finished files are kept, rerun to resume",
              file=sys.stderr)
        return 130
    finally:
        restore_sigterm(previous)
        release_all()
        forget_started()
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
