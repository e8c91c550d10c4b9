"""``cgn reproduce mnist``: CGNs, counterfactual sets, classifiers and the paper's table."""

from __future__ import annotations

import argparse

from cgn.commands.generate import _count


def register(sub: argparse._SubParsersAction) -> None:
    from cgn.mnist.classify import TRAIN_SETS
    from cgn.mnist.reproduce import QUICK, ReproduceConfig
    from cgn.mnist.variants import VARIANTS
    d = ReproduceConfig()
    p = sub.add_parser("reproduce", help="reproduce the paper's MNIST table in one command (resumable)",
                       description="Reproduce published results end to end.")
    rsub = p.add_subparsers(dest="target", metavar="TARGET")
    rsub.required = True
    m = rsub.add_parser(
        "mnist", help="Table 3 on Colored / Double-colored / Wildlife MNIST",
        description="For each dataset: take the authors' CGN (--cgn reference DIR) or train one with "
                    "the preset recipe (--cgn trained), generate counterfactuals, train the classifier "
                    "on each training set and write Markdown + JSON tables beside the published "
                    "numbers. Rerun the same command to resume (--jobs and --threads may change, "
                    "--ablation-sizes may gain sizes). "
                    "--jobs N runs up to N datasets at once in separate processes.")
    m.add_argument("--dataset", action="append", choices=VARIANTS, default=None,
                   help="only this dataset (repeatable; default: all three)")
    m.add_argument("--cgn", nargs="+", default=["trained"], metavar="KIND",
                   help="'trained' (default: train CGNs with the preset recipe) or 'reference DIR' "
                        "(the authors' *_mnist.pth files in DIR)")
    m.add_argument("--cgn-run", action="append", default=[], metavar="DATASET=RUN_DIR",
                   help="with --cgn trained: use this finished `cgn train-cgn` run for DATASET "
                        "instead of training one (repeatable)")
    m.add_argument("--size", type=_count, default=None,
                   help=f"counterfactual images (default {d.n_counterfactuals:,}; 1e6 for the full setting)")
    m.add_argument("--cf-ratio", type=int, default=d.cf_ratio)
    m.add_argument("--train-set", action="append", choices=TRAIN_SETS, default=None,
                   help="only this training set (repeatable; default: all four)")
    m.add_argument("--epochs", type=int, default=None, help=f"classifier epochs (default {d.epochs})")
    m.add_argument("--cgn-steps", type=int, default=None, help="trained CGNs: steps instead of the recipe's")
    m.add_argument("--seed", type=int, default=d.seed)
    m.add_argument("--textures", default=None, metavar="DIR", help="wildlife texture folder")
    m.add_argument("--precision", choices=["bf16", "fp32"], default=d.precision,
                   help="precision of counterfactual generation")
    m.add_argument("--ablation-sizes", default=None, metavar="N,N,...",
                   help="also train on this many counterfactuals each (e.g. 1e4,1e5,1e6) and plot")
    m.add_argument("--ssim-weight", type=float, default=None,
                   help="SSIM ablation (study's Table 4): also train CGNs with this SSIM loss weight")
    m.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads per process (default: torch's choice; with --jobs N: "
                        "the CPU count divided by the number of worker processes)")
    m.add_argument("--jobs", type=int, default=d.jobs, metavar="N",
                   help="run the datasets concurrently in up to N worker processes (default 1). The "
                        "small MNIST models use many cores better this way than with more threads; "
                        "results equal --jobs 1 at the same --threads. --jobs and --threads may "
                        "change when resuming")
    m.add_argument("--limit-real", type=int, default=None, metavar="N",
                   help="use only the first N real training images (smoke tests and probes)")
    m.add_argument("--quick", action="store_true",
                   help=f"the README's quick run: {QUICK} (explicit options still apply)")
    m.add_argument("--out", required=True, metavar="RUN_DIR")
    m.set_defaults(func=run)


def run(args) -> int:
    from cgn.config import from_dict
    from cgn.errors import CGNError
    from cgn.mnist.reproduce import QUICK, Reproduction, command_line

    base = dict(QUICK) if args.quick else {}
    cgn = args.cgn
    if cgn[0] not in ("trained", "reference") or (cgn[0] == "reference") != (len(cgn) == 2) or len(cgn) > 2:
        raise CGNError("--cgn takes 'trained' or 'reference DIR'")
    opts = {"cgn": cgn[0], "reference_dir": cgn[1] if len(cgn) == 2 else None,
            "cf_ratio": args.cf_ratio, "seed": args.seed, "textures": args.textures,
            "precision": args.precision, "ssim_weight": args.ssim_weight,
            "threads": args.threads, "jobs": args.jobs, "limit_real": args.limit_real}
    runs = {}
    for item in args.cgn_run:
        if "=" not in item:
            raise CGNError(f"--cgn-run {item!r}: write it as DATASET=RUN_DIR")
        k, v = item.split("=", 1)
        runs[k] = v
    if runs:
        if cgn[0] != "trained":
            raise CGNError("--cgn-run applies to --cgn trained")
        opts["cgn_runs"] = runs
    if args.size is not None:
        opts["n_counterfactuals"] = args.size
    if args.epochs is not None:
        opts["epochs"] = args.epochs
    if args.cgn_steps is not None:
        opts["cgn_steps"] = args.cgn_steps
    if args.dataset:
        opts["datasets"] = args.dataset
    if args.train_set:
        opts["train_sets"] = args.train_set
    if args.ablation_sizes:
        try:
            opts["ablation_sizes"] = [int(float(s)) for s in args.ablation_sizes.split(",") if s]
        except ValueError:
            raise CGNError(f"--ablation-sizes {args.ablation_sizes!r}: give numbers like 1e4,1e5") from None
    from cgn.mnist.reproduce import ReproduceConfig
    cfg = from_dict(ReproduceConfig, {**base, **opts})
    rep = Reproduction(cfg, args.out, command_line(args.argv))
    rep.run_all()
    print((rep.out / "table3.md").read_text())
    return 0
