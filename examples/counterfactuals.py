"""Counterfactuals from a CGN, and what they do for a classifier -- the cgn Python API end to end.

    python examples/counterfactuals.py CGN --out runs/example

CGN: a `cgn train-cgn` checkpoint, one of the authors' MNIST .pth files, or the name of a shipped
CGN (colored-mnist, double-colored-mnist, wildlife-mnist). The script

1. samples a counterfactual grid: row r has the shape of digit r, column c the texture of digit
   c, backgrounds random (OUT/grid.png: composite, mask, foreground, background panels);
2. generates a counterfactual training set (OUT/counterfactuals);
3. trains the paper's classifier on real images alone and on real images + counterfactuals;
4. scores both on the variant's OOD test split and prints the table (OUT/summary.json).

The defaults are a few minutes on a laptop CPU; the paper's setting is far larger
(`cgn reproduce mnist`). Use --help for the sizes.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import cgn
from cgn.io import write_json_atomic


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Counterfactual grid, counterfactual training set and "
                                            "classifiers from one MNIST CGN.")
    p.add_argument("cgn", help="CGN checkpoint file (ours or the authors') or shipped CGN name")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--dataset", default=None,
                   help="MNIST variant (default: the one the CGN was trained on)")
    p.add_argument("--counterfactuals", type=int, default=20_000,
                   help="counterfactual images to generate (default 20000)")
    p.add_argument("--cf-ratio", type=int, default=10, help="counterfactuals per mask (default 10)")
    p.add_argument("--epochs", type=int, default=2, help="classifier epochs (default 2)")
    p.add_argument("--limit-real", type=int, default=None,
                   help="use only the first N real training images (default: all)")
    p.add_argument("--limit-test", type=int, default=None,
                   help="score only the first N OOD test images (default: all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the samples and classifiers")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu)")
    args = p.parse_args(argv)
    out = Path(args.out)
    t0 = time.perf_counter()

    model = cgn.load_cgn(args.cgn, device=args.device)
    dataset = args.dataset or model.load_info.get("dataset")
    if dataset not in ("colored-mnist", "double-colored-mnist", "wildlife-mnist"):
        p.error("the CGN does not say which MNIST variant it was trained on; pass --dataset")

    # 1. A 10 x 10 counterfactual grid: shape = row, texture = column, random backgrounds.
    grid = cgn.sample(model, shape=[r for r in range(10) for _ in range(10)],
                      texture=list(range(10)) * 10, background=None, seed=args.seed)
    cgn.save_sample_grid(grid, out / "grid.png")

    # 2. A counterfactual training set (resumed if it is already there).
    cf = cgn.generate_counterfactuals(model, out / "counterfactuals", n=args.counterfactuals,
                                      cf_ratio=args.cf_ratio, seed=args.seed, device=args.device)

    # 3. The classifier on real images, and on real images + counterfactuals.
    common = dict(dataset=dataset, epochs=args.epochs, seed=args.seed, limit_real=args.limit_real,
                  limit_test=args.limit_test, device=args.device, resume=True)
    runs = {"real": cgn.train_classifier(out / "classifier-real", train_set="real", **common),
            "real+cf": cgn.train_classifier(out / "classifier-real+cf", train_set="real+cf",
                                            generated=cf, **common)}

    # 4. Their accuracy on the OOD test split (the images whose colours / textures are random).
    test = cgn.MnistVariant(dataset, split="test")
    if args.limit_test:
        from torch.utils.data import Subset
        test = Subset(test, range(min(args.limit_test, len(test))))
    summary = {"cgn": str(args.cgn), "dataset": dataset, "counterfactuals": len(cf),
               "n_test": len(test), "ood_accuracy": {}}
    print(f"\nOOD test accuracy on {dataset} ({len(test):,} images)")
    for name, run in runs.items():
        acc = cgn.evaluate_classifier(run, test, device=args.device)
        summary["ood_accuracy"][name] = acc
        print(f"  trained on {name:8s} {acc:6.2f} %")
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    write_json_atomic(out / "summary.json", summary)
    print(f"wrote {out / 'grid.png'}, {out / 'summary.json'} ({summary['seconds']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
