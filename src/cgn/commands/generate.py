"""``cgn generate``: a counterfactual (or plain-GAN) dataset from an MNIST CGN, in shards."""

from __future__ import annotations

import argparse
import time

from cgn import cliargs
from cgn.core import runcontrol

FIELDS = ["n", "cf_ratio", "seed", "counterfactual", "shard_size", "batch_size", "precision"]


def register(sub: argparse._SubParsersAction) -> None:
    from cgn.mnist.counterfactuals import GenerateConfig
    p = sub.add_parser(
        "generate", help="sample a counterfactual dataset (resumable shards) from an MNIST CGN",
        description="Sample N images from a CGN: masks per shape label, CF_RATIO counterfactuals "
                    "each with random texture and background labels. Each image stores "
                    "its labels and seeds and can be regenerated exactly. Rerun the same command "
                    "to resume an interrupted run.")
    cliargs.add_cgn_option(p)
    cliargs.add_fields(p, GenerateConfig, FIELDS)
    cliargs.add_device_option(p)
    cliargs.add_threads_option(p)
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (shards, manifest)")
    cliargs.add_config_options(p, "cf_ratio=5")
    p.set_defaults(func=run)


def run(args) -> int:
    from cgn.core.device import resolve_device
    from cgn.mnist.counterfactuals import GenerateConfig, checkpoint_source, generate
    from cgn.mnist.model import load_generator

    cfg = cliargs.resolve(args, GenerateConfig)
    runcontrol.set_threads(args.threads)
    device = resolve_device(args.device)
    model, info = load_generator(args.cgn, reference_format=args.reference_format, device=device)
    t0 = time.perf_counter()
    manifest = generate(model, cfg, args.out, source=checkpoint_source(args.cgn, info), device=device)
    dt = time.perf_counter() - t0
    kind = "counterfactual" if cfg.counterfactual else "plain"
    print(f"{args.out}: {cfg.n:,} {kind} images in {manifest['n_shards']} shard(s) "
          f"({dt:.1f} s, {cfg.n / max(dt, 1e-9):,.0f} images/s incl. resumed shards)")
    return 0
