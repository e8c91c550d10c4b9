"""``cgn reproduce mnist``: CGNs, counterfactual sets, classifiers and the paper's table;
``cgn reproduce imagenet``: the ImageNet experiments on a world (cgn.imagenet.reproduce)."""

from __future__ import annotations

import argparse

from cgn import cliargs

FIELDS = ["datasets", "n_counterfactuals", "cf_ratio", "train_sets", "epochs", "cgn_steps", "seed",
          "textures", "precision", "ablation_sizes", "ssim_weight", "threads", "jobs", "limit_real",
          "limit_test"]


def register(sub: argparse._SubParsersAction) -> None:
    from cgn.mnist.reproduce import QUICK, QUICK_CGN_STEPS, ReproduceConfig
    p = sub.add_parser("reproduce", help="reproduce the paper's MNIST table or its ImageNet experiments "
                                         "(on a world) in one command (resumable)",
                       description="Reproduce published results end to end.")
    rsub = p.add_subparsers(dest="target", metavar="TARGET")
    rsub.required = True
    m = rsub.add_parser(
        "mnist", help="Table 3 on Colored / Double-colored / Wildlife MNIST",
        description="For each dataset: take the authors' CGN (--cgn reference DIR), the CGN shipped "
                    "with cgn (--cgn pretrained) or train one with "
                    "the preset recipe (--cgn trained), generate counterfactuals, train the classifier "
                    "on each training set and write Markdown + JSON tables beside the published "
                    "numbers. Rerun the same command to resume (--jobs and --threads may change, "
                    "--ablation-sizes may gain sizes). "
                    "--jobs N runs up to N datasets at once in separate processes.")
    m.add_argument("--cgn", nargs="+", metavar="KIND",
                   help="'trained' (default: train CGNs with the preset recipe), 'pretrained' (the "
                        "CGNs shipped with cgn) or 'reference DIR' (the authors' *_mnist.pth files in DIR)")
    m.add_argument("--cgn-run", action="append", default=[], metavar="DATASET=RUN_DIR",
                   help="with --cgn trained: use this finished cgn train-cgn run for DATASET "
                        "instead of training one (repeatable)")
    cliargs.add_fields(m, ReproduceConfig, FIELDS)
    quick = ", ".join(f"{k}={cliargs.show(v)}" for k, v in QUICK.items())
    m.add_argument("--quick", action="store_true",
                   help=f"the README's quick run: {quick} (explicit options still apply)")
    m.add_argument("--train-cgn", action="store_true",
                   help="train the CGNs with the preset recipe instead of taking the shipped ones "
                        f"(= --cgn trained; with --quick for {QUICK_CGN_STEPS:,} steps unless --cgn-steps says otherwise)")
    m.add_argument("--out", required=True, metavar="RUN_DIR",
                   help="run directory (tables, CGNs, counterfactual sets, classifiers)")
    cliargs.add_config_options(m, "data_seed=1")
    m.set_defaults(func=run)
    _register_imagenet(rsub)


def _register_imagenet(rsub) -> None:
    import dataclasses

    from cgn.imagenet.reproduce import QUICK, WorldReproduceConfig
    i = rsub.add_parser(
        "imagenet", help="the ImageNet experiments on a world: stand-ins, CGN + ablation, classifiers",
        description="The ImageNet half of the paper on a world with ground truth (docs/world.md, "
                    "\"One command\"): build the world, train (or reuse from $CGN_HOME) the BigGAN, "
                    "U2-Net and judge stand-ins, check the GAN and the U2-Net, train the CGN and its "
                    "loss ablation, evaluate the mechanisms, IS and mu_mask, generate counterfactuals, "
                    "train the classifier ensemble without and with them, evaluate top-1, shape bias "
                    "and the BG-gap, explain both with LIME, and write tables, figures and "
                    "summary.json. Rerun the same command to resume (--jobs, --threads and "
                    "--results may change). --jobs N runs the independent chains at once.")
    cliargs.add_fields(i, WorldReproduceConfig, [f.name for f in dataclasses.fields(WorldReproduceConfig)])
    quick = ", ".join(f"{k}={cliargs.show(v)}" for k, v in QUICK.items())
    i.add_argument("--quick", action="store_true",
                   help=f"every stage tiny, through the real code (the test of the command): {quick} "
                        "(explicit options still apply)")
    i.add_argument("--out", required=True, metavar="RUN_DIR",
                   help="run directory (world, CGNs, counterfactuals, classifiers, tables, figures)")
    cliargs.add_config_options(i, "eval_samples=5000")
    i.set_defaults(func=run_imagenet)


def run_imagenet(args) -> int:
    import json

    from cgn.config import from_dict
    from cgn.imagenet.reproduce import QUICK, WorldReproduceConfig, WorldReproduction
    cfg = cliargs.resolve(args, WorldReproduceConfig,
                          lambda: from_dict(WorldReproduceConfig, QUICK if args.quick else {}))
    rep = WorldReproduction(cfg, args.out, cliargs.command_line(args.argv))
    summary = rep.run_all()
    print((rep.out / "claims.md").read_text())
    print(json.dumps({k: summary[k] for k in ("gan", "u2net", "cgn", "wall_time_s", "pretrain_time_s")}))
    return 0


def resolve_config(args):
    """The ReproduceConfig the options of ``cgn reproduce mnist`` ask for."""
    from cgn.config import from_dict
    from cgn.errors import CGNError
    from cgn.mnist.reproduce import QUICK, QUICK_CGN_STEPS, ReproduceConfig

    values = cliargs.given(args)
    cgn = args.cgn
    if args.train_cgn:
        if cgn is not None and cgn != ["trained"]:
            raise CGNError(f"--train-cgn trains the CGNs; drop --cgn {' '.join(cgn)}")
        cgn = ["trained"]
        if args.quick:
            values.setdefault("cgn_steps", QUICK_CGN_STEPS)
    if cgn is not None:
        if cgn[0] not in ("trained", "pretrained", "reference") or (cgn[0] == "reference") != (len(cgn) == 2) \
                or len(cgn) > 2:
            raise CGNError("--cgn takes 'trained', 'pretrained' or 'reference DIR'")
        values.update({"cgn": cgn[0], "reference_dir": cgn[1] if len(cgn) == 2 else None})
    runs = {}
    for item in args.cgn_run:
        if "=" not in item:
            raise CGNError(f"--cgn-run {item!r}: write it as DATASET=RUN_DIR")
        k, v = item.split("=", 1)
        runs[k] = v
    if runs:
        values["cgn_runs"] = runs
    cfg = cliargs.resolve(args, ReproduceConfig, lambda: from_dict(ReproduceConfig, QUICK if args.quick else {}),
                          values=values)
    if cfg.cgn_runs and cfg.cgn != "trained":
        raise CGNError("--cgn-run applies to --cgn trained")
    return cfg


def run(args) -> int:
    from cgn.mnist.reproduce import Reproduction
    cfg = resolve_config(args)
    rep = Reproduction(cfg, args.out, cliargs.command_line(args.argv))
    rep.run_all()
    print((rep.out / "table3.md").read_text())
    return 0
