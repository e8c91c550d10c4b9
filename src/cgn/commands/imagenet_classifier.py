"""``cgn imagenet train-classifier`` and ``cgn imagenet evaluate-classifier``: the invariant
classifier ensemble (SPEC §7) and its evaluations (SPEC §8). Multi-GPU: start the same command
with ``torchrun --nproc_per_node=N -m cgn imagenet ...``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cgn.errors import CGNError

# CLI option -> config field (options left unset keep the preset's / stored run's value)
_FIELDS = {
    "train_dir": "data.train_dir", "val_dir": "data.val_dir", "cf_dir": "data.cf_dir",
    "cf_ratio": "data.cf_ratio", "class_index": "data.class_index",
    "image_size": "data.image_size", "resize_size": "data.resize_size", "workers": "data.workers",
    "arch": "model.arch", "weights": "model.weights_file", "epochs": "optim.epochs",
    "batch_size": "optim.batch_size", "lr": "optim.lr", "cue_conflict": "eval.cue_conflict_dir",
    "in9": "eval.in9_dir", "eval_batch_size": "eval.batch_size", "seed": "seed",
    "device": "device", "max_steps": "max_steps", "checkpoint_every": "checkpoint_every",
    "log_every": "log_every",
}
_PATHS = {"train_dir", "val_dir", "cf_dir", "class_index", "weights", "cue_conflict", "in9"}


def _abs(p: str) -> str:
    return str(Path(p).expanduser().resolve()) if p else ""


def _add_data_args(p: argparse.ArgumentParser, train: bool) -> None:
    g = p.add_argument_group("data")
    if train:
        g.add_argument("--train-dir", help="ImageFolder of real training images (wnid folders)")
    g.add_argument("--val-dir", help="ImageFolder of real validation images")
    g.add_argument("--cf-dir", help="counterfactual dataset folder (DIR/train, DIR/val)")
    if train:
        g.add_argument("--cf-ratio", type=float,
                       help="counterfactual images per real image in each step (default 1)")
        g.add_argument("--baseline", action="store_true",
                       help="train on real images only (no counterfactual data)")
    g.add_argument("--class-index", help="folder-name -> ImageNet index file for folders not "
                                         "named by wnid")
    g.add_argument("--cue-conflict", help="cue-conflict stimuli folder (shape bias)")
    g.add_argument("--in9", help="IN-9 backgrounds challenge folder holding original/, "
                                 "mixed_same/, mixed_rand/")
    g.add_argument("--image-size", type=int, help="crop size (default 224)")
    g.add_argument("--resize-size", type=int, help="evaluation resize (default 256)")
    g.add_argument("--workers", type=int, help="DataLoader workers (default 4)")
    g.add_argument("--eval-batch-size", type=int, help="evaluation batch size per process")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train-classifier", help="train the invariant classifier ensemble on real "
                                                "+ counterfactual images (or evaluate a run)",
                       description=__doc__)
    p.add_argument("--out", required=True, help="run directory (config, logs, checkpoints)")
    p.add_argument("--preset", default="paper", help="starting config (paper, paper_baseline, "
                                                     "study_mini, study_mini_baseline, smoke)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out exactly")
    p.add_argument("--evaluate-only", action="store_true",
                   help="evaluate the run's last checkpoint (or --checkpoint) instead of training")
    p.add_argument("--checkpoint", help="with --evaluate-only: the checkpoint to evaluate")
    _add_data_args(p, train=True)
    g = p.add_argument_group("model and optimisation")
    g.add_argument("--arch", help="torchvision architecture of the backbone (default resnet50)")
    g.add_argument("--no-pretrained", action="store_true", help="random backbone initialisation")
    g.add_argument("--weights", help="local state dict of the torchvision classifier")
    g.add_argument("--epochs", type=int)
    g.add_argument("--batch-size", type=int, help="real images per step and process (default 32)")
    g.add_argument("--lr", type=float)
    g.add_argument("--seed", type=int)
    g.add_argument("--device", help="auto (default), cpu, cuda")
    g.add_argument("--max-steps", type=int, help="stop after N steps (0 = no limit)")
    g.add_argument("--checkpoint-every", type=int, help="checkpoint every N steps (and per epoch)")
    g.add_argument("--log-every", type=int, help="training log line every N steps")
    g.add_argument("--no-tensorboard", action="store_true", help="metrics.jsonl only")
    g.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="any other config field, e.g. --set optim.lr_step_epochs=10")
    p.set_defaults(func=_train)

    e = sub.add_parser("evaluate-classifier",
                       help="top-k, counterfactual heads, shape bias and IN-9 of a checkpoint "
                            "(or of a plain torchvision classifier)")
    src = e.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="an ensemble checkpoint (train-classifier)")
    src.add_argument("--plain", metavar="ARCH", help="a plain torchvision classifier instead")
    e.add_argument("--weights", help="with --plain: local state dict (default: torchvision's "
                                     "ImageNet weights)")
    e.add_argument("--no-pretrained", action="store_true", help="with --plain: random weights")
    _add_data_args(e, train=False)
    e.add_argument("--metrics", help="comma list of imagenet_topk, cf_head_accuracy, "
                                     "shape_bias, in9_bg_gap (default: all with data)")
    e.add_argument("--include-same-category", action="store_true",
                   help="shape bias: count cue-conflict images whose shape = texture category")
    e.add_argument("--in9-normalization", choices=["in9", "imagenet"])
    e.add_argument("--device", help="auto (default), cpu, cuda")
    e.add_argument("--out", help="also write the metrics to this JSON file")
    e.set_defaults(func=_evaluate)


def _overrides(args: argparse.Namespace) -> dict:
    ov = {}
    for opt, key in _FIELDS.items():
        v = getattr(args, opt, None)
        if v is not None:
            ov[key] = _abs(v) if opt in _PATHS else v
    if getattr(args, "no_pretrained", False):
        ov["model.pretrained"] = False
    if getattr(args, "no_tensorboard", False):
        ov["tensorboard"] = False
    if getattr(args, "baseline", False):
        if args.cf_dir:
            raise CGNError("--baseline trains without counterfactual data; drop --cf-dir")
        ov["data.cf_dir"] = ""
    for a in getattr(args, "set", []) or []:
        if "=" not in a:
            raise CGNError(f"--set {a!r}: write it as section.field=value")
        k, v = a.split("=", 1)
        ov[k.strip()] = v.strip()
    return ov


def _train(args: argparse.Namespace) -> int:
    from cgn.config import check_resume, override, to_dict
    from cgn.core.distributed import init_distributed, shutdown_distributed
    from cgn.imagenet.classifier_config import ClassifierTrainConfig, config_from_dict, preset_config
    from cgn.imagenet.classifier_train import (evaluate_model, load_classifier,
                                               train_classifier)
    from cgn.io import write_json_atomic

    out = Path(args.out).expanduser().resolve()
    ov = _overrides(args)
    stored = out / "config.json"
    if args.evaluate_only:
        ckpt = Path(args.checkpoint) if args.checkpoint else out / "checkpoints" / "last.pt"
        model, cfg = load_classifier(ckpt)
        cfg = override(cfg, {k: v for k, v in ov.items()})
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
    if args.resume and stored.exists():
        old = config_from_dict(json.loads(stored.read_text())["config"])
        cfg = override(old, ov)
        check_resume(ClassifierTrainConfig, to_dict(old), to_dict(cfg),
                     f"--resume continues the stored config of {out}",
                     "drop those options or start a new run with another --out")
    else:
        cfg = override(preset_config(args.preset), ov)
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

    if args.checkpoint:
        model, cfg = load_classifier(args.checkpoint)
    else:
        if args.weights and args.no_pretrained:
            raise CGNError("--weights and --no-pretrained contradict each other; choose one")
        w = weights_arg(not args.no_pretrained, _abs(args.weights) if args.weights else "")
        model = plain_classifier(args.plain, w)
        cfg = override(ClassifierTrainConfig(), {"model.arch": args.plain})
    ov = _overrides(args)
    if args.include_same_category:
        ov["eval.exclude_same_category"] = False
    if args.in9_normalization:
        ov["eval.in9_normalization"] = args.in9_normalization
    cfg = override(cfg, ov)
    which = [m.strip() for m in args.metrics.split(",") if m.strip()] if args.metrics else None
    dist = init_distributed(cfg.device)
    try:
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
