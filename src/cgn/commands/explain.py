"""``cgn explain``: LIME heatmaps of the top-5 classes of a plain classifier and of the
invariant ensemble, side by side with their probabilities (the study's Fig. 3)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cgn import cliargs
from cgn.errors import CGNError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("explain", help="LIME heatmaps (top-5 classes) of a plain ImageNet "
                                       "classifier and the ensemble for one image",
                       description=cliargs.plain(__doc__))
    p.add_argument("--checkpoint", required=True, metavar="FILE",
                   help="ensemble checkpoint (cgn imagenet train-classifier)")
    p.add_argument("--image", required=True, metavar="FILE", help="the image to explain")
    p.add_argument("--out", required=True, metavar="FILE.png",
                   help="output PNG (a .json with the classes and probabilities is written next "
                        "to it)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--plain-weights", default="imagenet", metavar="WEIGHTS",
                   help="the plain classifier (the ensemble's architecture): imagenet "
                        "(torchvision's weights), a local state-dict file, or random (untrained, "
                        "for testing the pipeline) (default: imagenet)")
    g.add_argument("--plain-checkpoint", metavar="FILE",
                   help="use another ensemble checkpoint (e.g. a baseline run) as the plain "
                        "classifier")
    g.add_argument("--no-plain", action="store_true", help="explain the ensemble only")
    p.add_argument("--plain-arch", metavar="ARCH", help="architecture of the plain classifier "
                                                        "(default: the ensemble's backbone)")
    p.add_argument("--prediction", default="avg",
                   choices=["avg", "shape", "texture", "background", "shape_texture"],
                   help="which ensemble prediction to explain (default: avg, the averaged logits)")
    p.add_argument("--num-samples", type=int, default=1000, metavar="N",
                   help="LIME perturbations per model (default: 1000)")
    p.add_argument("--top-k", type=int, default=5, metavar="K",
                   help="classes explained per model (default: 5)")
    p.add_argument("--seed", type=int, default=0, metavar="N",
                   help="seed of the LIME perturbations (default: 0)")
    p.add_argument("--image-size", type=int, metavar="N", help="crop size (default: the checkpoint's)")
    p.add_argument("--resize-size", type=int, metavar="N",
                   help="resize before the crop (default: the checkpoint's)")
    cliargs.add_device_option(p)
    cliargs.add_threads_option(p)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from cgn.core import runcontrol
    from cgn.core.device import resolve_device
    from cgn.imagenet.classifier_train import load_classifier, plain_classifier
    from cgn.imagenet.explain import explain_models

    if args.top_k < 1:
        raise CGNError(f"--top-k must be >= 1, got {args.top_k}")
    runcontrol.set_threads(args.threads)
    device = resolve_device(args.device)
    ensemble, cfg = load_classifier(args.checkpoint)
    models = {}
    if not args.no_plain:
        if args.plain_checkpoint:
            plain, _ = load_classifier(args.plain_checkpoint)
            models[f"plain: {Path(args.plain_checkpoint).name}"] = (plain, "avg")
        else:
            arch = args.plain_arch or cfg.model.arch
            w = {"imagenet": "imagenet", "random": None}.get(args.plain_weights, args.plain_weights)
            models[f"plain {arch}"] = (plain_classifier(arch, w), "avg")
    models[f"ensemble ({args.prediction})"] = (ensemble, args.prediction)
    out = Path(args.out).expanduser()
    if out.suffix.lower() != ".png":
        raise CGNError(f"--out {out} must end in .png")
    summary = explain_models(models, args.image, out,
                             image_size=args.image_size or cfg.data.image_size,
                             resize_size=args.resize_size or cfg.data.resize_size,
                             top_k=args.top_k, num_samples=args.num_samples, seed=args.seed,
                             device=device)
    json.dump(summary, sys.stdout, indent=1)
    print()
    return 0
