"""``cgn imagenet train-classifier`` and ``cgn imagenet evaluate-classifier``: the invariant
classifier ensemble (docs/reference.md#classifier-ensemble) and its evaluations
(docs/reference.md#evaluations). Multi-GPU: start the same command with
``torchrun --nproc_per_node=N -m cgn imagenet ...``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cgn import cliargs
from cgn.core import runcontrol
from cgn.errors import CGNError

DATA_FIELDS = ["data.val_dir", "data.cf_dir", "data.class_index", "eval.cue_conflict_dir",
               "eval.in9_dir", "data.image_size", "data.resize_size", "data.workers",
               "eval.batch_size"]
MODEL_FIELDS = ["model.arch", "model.pretrained", "model.weights_file", "optim.epochs",
                "optim.batch_size", "optim.lr", "seed", "device", "threads", "max_steps",
                "checkpoint_every", "log_every", "tensorboard"]
# options given as paths are made absolute (the run directory records where its data lives)
_PATHS = {"data.train_dir", "data.val_dir", "data.cf_dir", "data.class_index",
          "model.weights_file", "eval.cue_conflict_dir", "eval.in9_dir"}


def _add_data_args(p: argparse.ArgumentParser, train: bool, **defaults) -> None:
    from cgn.imagenet.classifier_config import ClassifierTrainConfig
    g = p.add_argument_group("data")
    paths = (["data.train_dir"] if train else []) + DATA_FIELDS
    if train:
        paths.insert(3, "data.cf_ratio")
    cliargs.add_fields(g, ClassifierTrainConfig, paths, **defaults)
    if train:
        g.add_argument("--baseline", action="store_true",
                       help="train on real images only (no counterfactual data)")


def register(sub: argparse._SubParsersAction) -> None:
    from cgn.imagenet.classifier_config import ClassifierTrainConfig
    from cgn.presets import presets
    known = presets("imagenet train-classifier")
    defaults = {"defaults": {n: q.build() for n, q in known.items()}}
    p = sub.add_parser("train-classifier", help="train the invariant classifier ensemble on real "
                                                "+ counterfactual images (or evaluate a run)",
                       description="Train the invariant classifier ensemble (a shared backbone "
                                   "with shape, texture and background heads) on real and "
                                   "counterfactual ImageNet images, evaluating it as it goes. "
                                   "Multi-GPU: start the same command with torchrun "
                                   "--nproc_per_node=N -m cgn imagenet ...")
    p.add_argument("--out", required=True, metavar="RUN_DIR",
                   help="run directory (config, logs, checkpoints)")
    p.add_argument("--preset", default="paper", choices=list(known),
                   help="starting config (default: paper)")
    p.add_argument("--resume", action="store_true", help=cliargs.RESUME_HELP_STORED)
    p.add_argument("--evaluate-only", action="store_true",
                   help="evaluate the run's last checkpoint (or --checkpoint) instead of training")
    p.add_argument("--checkpoint", metavar="FILE",
                   help="with --evaluate-only: the checkpoint to evaluate (default: the run's "
                        "checkpoints/last.pt)")
    _add_data_args(p, train=True, **defaults)
    g = p.add_argument_group("model and optimisation")
    cliargs.add_fields(g, ClassifierTrainConfig, MODEL_FIELDS, **defaults)
    cliargs.add_config_options(g, "optim.lr_step_epochs=10")
    p.set_defaults(func=_train)

    e = sub.add_parser("evaluate-classifier",
                       help="top-k, counterfactual heads, shape bias and IN-9 of a checkpoint "
                            "(or of a plain torchvision classifier)",
                       description="Evaluate an ensemble checkpoint, or a plain torchvision "
                                   "classifier: ImageNet top-k, the counterfactual heads, shape "
                                   "bias on cue-conflict stimuli and the IN-9 background gap.")
    src = e.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", metavar="FILE",
                     help="an ensemble checkpoint (cgn imagenet train-classifier)")
    src.add_argument("--plain", metavar="ARCH", help="a plain torchvision classifier instead")
    checkpoint = {"template": "the checkpoint's; with --plain: {}"}
    cliargs.add_fields(e, ClassifierTrainConfig, ["model.weights_file", "model.pretrained"],
                       notes={"model.weights_file": "torchvision's ImageNet weights",
                              "model.pretrained": "on"})
    _add_data_args(e, train=False, **checkpoint)
    e.add_argument("--world", metavar="DIR",
                   help="evaluate on a world instead (cgn imagenet world build): top-1 on its test "
                        "split, shape bias per head on cue_conflict, accuracies on original / "
                        "mixed_same / mixed_rand and the BG-gap, all as fractions")
    e.add_argument("--metrics", help="comma list of imagenet_topk, cf_head_accuracy, "
                                     "shape_bias, in9_bg_gap (default: all with data); with "
                                     "--world: of world_top1, world_shape_bias, world_in9")
    cliargs.add_fields(e, ClassifierTrainConfig,
                       ["eval.exclude_same_category", "eval.in9_normalization", "device"], **checkpoint)
    cliargs.add_threads_option(e)
    e.add_argument("--out", metavar="FILE", help="also write the metrics to this JSON file")
    cliargs.add_config_options(e, "eval.in9_variants=original,mixed_rand", config_file=False)
    e.set_defaults(func=_evaluate)


def _given(args: argparse.Namespace) -> dict:
    return cliargs.absolute(cliargs.given(args), _PATHS)


def _overrides(args: argparse.Namespace) -> dict:
    """The config options given (``--set`` is applied with them by :func:`cliargs.apply`)."""
    ov = _given(args)
    if getattr(args, "baseline", False):
        if ov.get("data.cf_dir"):
            raise CGNError("--baseline trains without counterfactual data; drop --cf-dir")
        ov["data.cf_dir"] = ""
    return ov


def _train(args: argparse.Namespace) -> int:
    from cgn.core.distributed import init_distributed, shutdown_distributed
    from cgn.imagenet.classifier_config import ClassifierTrainConfig, config_from_dict
    from cgn.presets import preset
    from cgn.imagenet.classifier_train import (evaluate_model, load_classifier,
                                               train_classifier)
    from cgn.io import write_json_atomic

    out = Path(args.out).expanduser().resolve()
    ov = _overrides(args)
    if args.evaluate_only:
        ckpt = Path(args.checkpoint) if args.checkpoint else out / "checkpoints" / "last.pt"
        model, cfg = load_classifier(ckpt)
        cfg = cliargs.apply(cfg, args, ov)
        runcontrol.set_threads(cfg.threads)
        dist = init_distributed(cfg.device)
        try:
            res = evaluate_model(model, cfg, dist=dist)
        finally:
            shutdown_distributed(dist)
        if dist.is_main:
            if out.is_dir():
                write_json_atomic(out / "eval.json", {"checkpoint": str(ckpt), "metrics": res})
            json.dump(res, sys.stdout, indent=1)
            print()
        return 0
    # its --preset has a default, so a resume cannot tell a given one: refuse_base=False
    cfg = cliargs.resolve_or_resume(
        args, ClassifierTrainConfig, out, lambda: preset(args.preset, "imagenet train-classifier"),
        values=ov, stored=config_from_dict, refuse_base=False)
    dist = init_distributed(cfg.device)
    try:
        result = train_classifier(cfg, out, resume=args.resume, dist=dist)
    finally:
        shutdown_distributed(dist)
    if dist.is_main:
        json.dump(result, sys.stdout, indent=1)
        print()
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from cgn.config import override
    from cgn.core.distributed import init_distributed, shutdown_distributed
    from cgn.imagenet.classifier_config import ClassifierTrainConfig
    from cgn.imagenet.classifier_train import evaluate_model, load_classifier, plain_classifier
    from cgn.imagenet.ensemble import weights_arg
    from cgn.io import write_json_atomic

    runcontrol.set_threads(args.threads)
    ov = _overrides(args)
    if args.checkpoint:
        model, cfg = load_classifier(args.checkpoint)
    else:
        given = _given(args)
        weights, pretrained = given.get("model.weights_file"), given.get("model.pretrained", True)
        if weights and not pretrained:
            raise CGNError("--weights and --no-pretrained contradict each other; choose one")
        model = plain_classifier(args.plain, weights_arg(pretrained, weights or ""))
        cfg = override(ClassifierTrainConfig(), {"model.arch": args.plain})
    cfg = cliargs.apply(cfg, args, ov)
    which = [m.strip() for m in args.metrics.split(",") if m.strip()] if args.metrics else None
    other = sorted(set(_given(args)) & {"data.val_dir", "data.cf_dir", "eval.cue_conflict_dir", "eval.in9_dir"})
    if args.world and other:
        raise CGNError(f"--world evaluates on the world's own splits; drop "
                       f"{', '.join(cliargs.flag(k).name for k in other)} (or evaluate them in another run)")
    dist = init_distributed(cfg.device)
    try:
        if args.world:
            res = _evaluate_world(model, cfg, args.world, which, dist)
        else:
            res = evaluate_model(model, cfg, which=which, dist=dist, strict=which is not None)
    finally:
        shutdown_distributed(dist)
    if not res:
        raise CGNError("nothing evaluated: point at data with --val-dir, --cf-dir, "
                       "--cue-conflict or --in9")
    if dist.is_main:
        if args.out:
            write_json_atomic(Path(args.out).expanduser(), {
                "checkpoint": args.checkpoint or f"plain:{args.plain}", "metrics": res})
        json.dump(res, sys.stdout, indent=1)
        print()
    return 0


def _evaluate_world(model, cfg, world: str, which, dist) -> dict:
    """The world evaluations of the model, its images in the checkpoint's evaluation transform."""
    from cgn.imagenet.imagefolder import eval_transform
    from cgn.imagenet.world_eval import evaluate_world
    d = cfg.data
    model = model.to(dist.device).eval()
    return evaluate_world(model, Path(world).expanduser(), which=which,
                          transform=eval_transform(d.image_size, d.resize_size),
                          batch_size=cfg.eval.batch_size, workers=d.workers, dist=dist)
