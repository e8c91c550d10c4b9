"""``cgn generate``: a counterfactual (or plain-GAN) dataset from an MNIST CGN, in shards."""

from __future__ import annotations

import argparse
import time

from cgn.config import from_dict


def _count(text: str) -> int:
    """Accept 100000, 1e5, 100_000."""
    try:
        v = float(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if v != int(v) or v < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return int(v)


def register(sub: argparse._SubParsersAction) -> None:
    from cgn.mnist.counterfactuals import GenerateConfig
    d = GenerateConfig()
    p = sub.add_parser(
        "generate", help="sample a counterfactual dataset (resumable shards) from an MNIST CGN",
        description="Sample N images from a CGN: masks per shape label, CF_RATIO counterfactuals "
                    "each with random texture and background labels (SPEC §5). Each image stores "
                    "its labels and seeds and can be regenerated exactly. Rerun the same command "
                    "to resume an interrupted run.")
    p.add_argument("--checkpoint", required=True, help="a cgn MNIST CGN checkpoint (or the authors' "
                   "file with --reference-format)")
    p.add_argument("--reference-format", action="store_true",
                   help="the checkpoint is one of the authors' plain state dicts")
    p.add_argument("--n", type=_count, default=d.n, help=f"number of images (default {d.n:,}; 1e6 works)")
    p.add_argument("--cf-ratio", type=int, default=d.cf_ratio, help=f"counterfactuals per mask (default {d.cf_ratio})")
    p.add_argument("--seed", type=int, default=d.seed, help="run seed (default 0)")
    p.add_argument("--no-counterfactual", action="store_true",
                   help="plain CGN samples (one label and noise for all mechanisms): the GAN baseline")
    p.add_argument("--shard-size", type=_count, default=d.shard_size)
    p.add_argument("--batch-size", type=_count, default=d.batch_size)
    p.add_argument("--precision", choices=["bf16", "fp32"], default=d.precision,
                   help="bf16 autocast (default; fast on CPUs with AVX-512/AMX) or fp32")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", required=True, metavar="DIR")
    p.set_defaults(func=run)


def run(args) -> int:
    from cgn.core.device import resolve_device
    from cgn.mnist.counterfactuals import GenerateConfig, checkpoint_source, generate
    from cgn.mnist.model import load_generator

    cfg = from_dict(GenerateConfig, {"n": args.n, "cf_ratio": args.cf_ratio, "seed": args.seed,
                                     "counterfactual": not args.no_counterfactual,
                                     "shard_size": args.shard_size, "batch_size": args.batch_size,
                                     "precision": args.precision})
    device = resolve_device(args.device)
    model, info = load_generator(args.checkpoint, reference_format=args.reference_format, device=device)
    t0 = time.perf_counter()
    manifest = generate(model, cfg, args.out, source=checkpoint_source(args.checkpoint, info), device=device)
    dt = time.perf_counter() - t0
    kind = "counterfactual" if cfg.counterfactual else "plain"
    print(f"{args.out}: {cfg.n:,} {kind} images in {manifest['n_shards']} shard(s) "
          f"({dt:.1f} s, {cfg.n / max(dt, 1e-9):,.0f} images/s incl. resumed shards)")
    return 0
