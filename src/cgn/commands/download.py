"""``cgn download NAME... [--dir DIR]``: fetch public weights/datasets and check their digests."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("download", help="download public weights and datasets (checks digests)",
                       description="Download public weights and datasets into $CGN_HOME (or "
                                   "--dir) and check their digests; --list shows what is known.")
    p.add_argument("names", nargs="*", metavar="NAME", help="asset names (see --list)")
    p.add_argument("--dir", help="download root (default: $CGN_HOME, ~/.cache/cgn)")
    p.add_argument("--list", action="store_true", help="list the known assets and where they go")
    p.add_argument("--force", action="store_true", help="download again even if present")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from cgn.download import ASSETS, download, download_root
    from cgn.errors import CGNError

    if args.list or not args.names:
        root = download_root(args.dir)
        for a in ASSETS:
            digest = ("sha256" if all(f.sha256 for f in a.files) else
                      "sha256 prefix" if all(f.sha256 or f.sha256_prefix for f in a.files) else
                      "recorded on first download")
            print(f"{a.name:18s} {a.description}")
            for f in a.files:
                print(f"{'':18s}   -> {root / f.dest}  [{digest}]")
        if not args.names and not args.list:
            raise CGNError("name at least one asset to download (listed above)")
        return 0
    for name in args.names:
        download(name, args.dir, force=args.force)
    return 0
