"""Pack the finished stand-ins of a world's cache as the ones shipped with cgn.

    python scripts/ship_stand_ins.py $CGN_HOME/stand-ins/<world key> [--out src/cgn/imagenet/stand_ins]

Writes one pack per stand-in (``<kind>-<preset>.pt``, in parts when large; float16 weights, the
run's results.json, absolute paths cut) and prints the ``SHIPPED`` entries to paste into
``cgn/imagenet/shipped.py``. Ship only the stand-ins of the default world (``cgn reproduce
imagenet --world wildlife-mnist``): other runs would never find them.
"""

from __future__ import annotations

import argparse
import platform
from pathlib import Path

from cgn import __version__
from cgn.core.precision import isa_description
from cgn.core.results import read_results
from cgn.imagenet import shipped
from cgn.imagenet.reproduce_standins import _finished


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cache", type=Path, help="$CGN_HOME/stand-ins/<world key>")
    ap.add_argument("--out", type=Path, default=shipped.PACK_DIR)
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    entries = []
    for folder in sorted(p for p in a.cache.iterdir() if p.is_dir()):
        kind, rest = folder.name.split("-", 1)
        preset, digest = rest.rsplit("-", 1)
        res = read_results(folder)
        if _finished(kind, folder, res) is None:
            print(f"# {folder.name}: not finished, skipped")
            continue
        prov = {"world_key": a.cache.name, "folder": folder.name, "train_seconds": res.get("train_seconds"),
                "made_by": "cgn reproduce imagenet --world wildlife-mnist (its stand-in stage)",
                "cgn_version": __version__, "cpu": f"{platform.processor() or platform.machine()}, {isa_description()}"}
        file = f"{kind}-{preset}.pt"
        info = shipped.pack(kind, folder, a.out / file, provenance=prov)
        print(f"# {folder.name}: {info['bytes']:,} bytes in {max(1, len(info['parts']))} file(s): {info['files']}")
        entries.append(f"    ShippedStandIn({kind!r}, {a.cache.name[:16]!r}, {preset!r}, {digest!r}, {file!r},\n"
                       f"                   {info['sha256']!r},\n"
                       f"                   parts={tuple(info['parts'])!r}),")
    print("SHIPPED: tuple[ShippedStandIn, ...] = (\n" + "\n".join(entries) + "\n)")


if __name__ == "__main__":
    main()
