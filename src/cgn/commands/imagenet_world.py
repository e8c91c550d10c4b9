"""``cgn imagenet world build | preview``: the miniature ImageNet with ground truth (docs/world.md)."""

from __future__ import annotations

import argparse
import json
import sys
import time


def register(sub: argparse._SubParsersAction) -> None:
    from cgn.imagenet.world import SIZES, WORLDS
    p = sub.add_parser("world", help="build a world: shape, texture and background classes with "
                                     "ground-truth masks and IN-9 / cue-conflict splits",
                       description="A miniature ImageNet with ground truth: a world folder with "
                                   "train / test / cue-conflict / IN-9 Mixed-Same and Mixed-Rand / "
                                   "decorrelated splits and a manifest (docs/world.md).")
    wsub = p.add_subparsers(dest="world_command", metavar="ACTION")
    wsub.required = True
    b = wsub.add_parser("build", help="write a world folder (fixed seeds, sha256 manifest)",
                        description="Write a world folder: one .npz per split (images, labels = "
                                    "shape class, fg_class = texture class, bg_class = background "
                                    "class, masks) and world.json.")
    b.add_argument("--world", default=WORLDS[0], metavar="NAME|TRAIN.npz",
                   help=f"{', '.join(WORLDS)}, or your own train .npz in the cgn data build "
                        f"contract plus masks (then also --test) (default: {WORLDS[0]})")
    b.add_argument("--test", metavar="TEST.npz", help="your own world's test .npz (same contract)")
    b.add_argument("--size", type=int, choices=SIZES,
                   help="wildlife-mnist image size; an npz world keeps its size (default: 32)")
    b.add_argument("--seed", type=int, default=0, help="seed of every draw (default: 0)")
    b.add_argument("--textures", metavar="DIR",
                   help="wildlife texture folder (object/<c>_*.jpg, background/<c>_*.jpg); "
                        "default: the built-in procedural set")
    b.add_argument("--n-train", type=int, default=0, metavar="N",
                   help="keep the first N training images (0 = all) (default: 0)")
    b.add_argument("--n-test", type=int, default=0, metavar="N",
                   help="keep the first N test images; the evaluation splits are built from "
                        "them (0 = all) (default: 0)")
    b.add_argument("--n-decorrelated", type=int, default=0, metavar="N",
                   help="images of the decorrelated split (0 = as many as test) (default: 0)")
    b.add_argument("--decorrelate", type=float, default=0.0, metavar="F",
                   help="wildlife: share of training images whose texture and background classes "
                        "are drawn at random (0: fully correlated, as the variant) (default: 0)")
    b.add_argument("--image-folders", action="store_true",
                   help="also write PNG folders DIR/folders/<split>/<class>/ (ImageNetFolder "
                        "layout, for --train-dir / --val-dir)")
    b.add_argument("--out", required=True, metavar="DIR", help="world folder to write")
    b.add_argument("--quiet", action="store_true", help="no progress lines")
    b.set_defaults(func=_build)

    v = wsub.add_parser("preview", help="draw a PNG sheet of every split (one column per class)",
                        description="Draw a PNG sheet of a world folder: per split, images and "
                                    "masks, one column per class.")
    v.add_argument("dir", metavar="DIR", help="world folder")
    v.add_argument("--out", required=True, metavar="FILE.png", help="output PNG")
    v.add_argument("--rows", type=int, default=1, help="images per class and split (default: 1)")
    v.set_defaults(func=_preview)


def _build(args) -> int:
    from cgn.imagenet.world import WorldSpec, build_world
    spec = WorldSpec(world=args.world, test=args.test, size=args.size, seed=args.seed,
                     textures=args.textures, n_train=args.n_train, n_test=args.n_test,
                     n_decorrelated=args.n_decorrelated, decorrelate=args.decorrelate)
    t0 = time.perf_counter()
    log = (lambda s: None) if args.quiet else (lambda s: print(s, file=sys.stderr, flush=True))
    m = build_world(spec, args.out, image_folders=args.image_folders, log=log)
    print(json.dumps({"out": str(args.out), "world": m["world"], "size": m["size"],
                      "num_classes": m["num_classes"], "mean_object_area": m["mean_object_area"],
                      "splits": {k: e["n"] for k, e in m["splits"].items()},
                      "seconds": round(time.perf_counter() - t0, 1)}))
    return 0


def _preview(args) -> int:
    import numpy as np

    from cgn.errors import CGNError
    from cgn.imagenet.world_data import WorldSplit, read_manifest
    from cgn.mnist.preview import make_grid, save_png, stack_vertical, titled
    if args.rows < 1:
        raise CGNError(f"--rows must be at least 1, got {args.rows}")
    m = read_manifest(args.dir)
    k = int(m["num_classes"])
    panels = []
    for split in [s for s in m["splits"] if s != "original"]:
        ds = WorldSplit(args.dir, split)
        blank = np.full_like(ds.images[0], 255)
        by_class = [np.flatnonzero(ds.labels == c)[:args.rows] for c in range(k)]
        imgs, masks = [], []
        for r in range(args.rows):
            for c in range(k):
                have = r < len(by_class[c])
                imgs.append(ds.images[by_class[c][r]] if have else blank)
                masks.append(np.repeat(ds.masks[by_class[c][r]][..., None], 3, axis=2) if have else blank)
        grid = make_grid(np.stack(imgs + masks), ncol=k)
        panels.append(titled(grid, f"{split} (n={len(ds)}): images, then their masks; column = "
                                   "shape class", scale=2 if ds.images.shape[1] <= 32 else 1))
    save_png(args.out, stack_vertical(panels))
    print(json.dumps({"out": str(args.out), "world": m["world"], "splits": len(panels)}))
    return 0
