"""``cgn imagenet train | generate | metrics``: the ImageNet CGN (docs/reference.md#imagenet-cgn).

Multi-GPU training: ``torchrun --nproc_per_node=N -m cgn imagenet train ...`` (NCCL on GPUs,
gloo on CPUs).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cgn import cliargs
from cgn.core import runcontrol
from cgn.io import read_json
from cgn.errors import CGNError

# weight option -> config field; the path given (or the downloaded default) is checked first
WEIGHT_FIELDS = {"biggan": "model.biggan", "u2net": "model.u2net", "cgn": "model.cgn",
                 "vgg16": "loss.vgg16"}
# a preset whose architecture no download provides (a world's) needs its stand-in's file
STAND_IN = {
    "biggan": "the {preset} preset's BigGAN is not BigGAN-deep-256: pass --biggan DIR, the folder "
              "that cgn imagenet pretrain biggan exports (RUN/biggan), or --random-init (pipeline "
              "checks only)",
    "u2net": "the {preset} preset's U2-Net is not the downloadable u2net.pth: pass --u2net FILE, "
             "the u2netp.pth that cgn imagenet pretrain u2net writes, or --random-init (pipeline "
             "checks only)",
}
TRAIN_FIELDS = ["loss.feature_extractor", "loss.allow_download", "train.episodes",
                "train.batch_acc", "train.batch_size", "train.seed"]


def register(sub: argparse._SubParsersAction) -> None:
    from cgn.imagenet.config import ABLATIONS, ImageNetCGNConfig
    from cgn.imagenet.weights import WEIGHT_ASSETS
    from cgn.presets import presets
    known = presets("imagenet train")
    defaults = {n: q.build() for n, q in known.items()}
    t = sub.add_parser("train", help="train the ImageNet CGN (BigGAN-deep mechanisms + U2-Net)",
                       description="Train the ImageNet CGN: BigGAN-deep shape, texture and "
                                   "background mechanisms and a U2-Net, from pretrained weights. "
                                   "Multi-GPU: torchrun --nproc_per_node=N -m cgn imagenet train "
                                   "... (NCCL on GPUs, gloo on CPUs).")
    t.add_argument("--preset", default="imagenet-256", choices=list(known),
                   help="imagenet-256 (the paper), world-32-cgn (the recipe on a 32-px world, from "
                        "its stand-ins) or tiny (CPU check) (default: imagenet-256)")
    t.add_argument("--out", required=True, metavar="RUN_DIR",
                   help="run directory (config, logs, checkpoints, sample sheets)")
    t.add_argument("--resume", action="store_true", help=cliargs.RESUME_HELP)
    notes = {path: f"the file of cgn download {WEIGHT_ASSETS[kind][0]} when present"
             for kind, path in WEIGHT_FIELDS.items() if kind != "cgn"}
    cliargs.add_fields(t, ImageNetCGNConfig, WEIGHT_FIELDS.values(), defaults=defaults,
                       notes=notes)
    t.add_argument("--weights-dir", metavar="DIR",
                   help="download root holding weights/ (default: $CGN_HOME)")
    t.add_argument("--random-init", action="store_true",
                   help="no pretrained BigGAN/U2-Net: random weights (pipeline checks only)")
    t.add_argument("--ablate", choices=list(ABLATIONS),
                   help="the paper's ablation: train without L_shape (mask losses), L_text, L_bg "
                        "or L_rec (L1 and perceptual); sets their weights to 0")
    cliargs.add_fields(t, ImageNetCGNConfig, TRAIN_FIELDS, defaults=defaults)
    cliargs.add_config_options(t, "optim.lr_shape=1e-5")
    cliargs.add_device_option(t)
    cliargs.add_threads_option(t)
    t.add_argument("--quiet", action="store_true", help="no progress output")
    t.set_defaults(func=_train)

    g = sub.add_parser("generate", help="counterfactual datasets, interpolation sheets and GIFs",
                       description="Generate from an ImageNet CGN: counterfactual datasets "
                                   "(random or fixed classes, regenerable from their labels.csv), "
                                   "interpolation sheets between classes and GIFs.")
    g.add_argument("--cgn", metavar="FILE",
                   help="CGN weights: our checkpoint (last.pt) or the authors' cgn.pth (default: "
                        "the downloaded cgn-imagenet)")
    g.add_argument("--out", required=True, metavar="DIR", help="output folder")
    g.add_argument("--mode", required=True, choices=["random", "fixed", "interp", "gif"],
                   help="random: random classes per image; fixed: the --classes for every image; "
                        "interp: an interpolation sheet; gif: a chain of interpolations")
    g.add_argument("--split", default="train", choices=["train", "val"],
                   help="dataset split folder to write (default: train)")
    g.add_argument("--n", type=int, default=16, metavar="N",
                   help="images to generate (random / fixed) (default: 16)")
    g.add_argument("--seed", type=int, default=0, metavar="N",
                   help="seed of classes and noise (default: 0)")
    g.add_argument("--truncation", type=float, default=0.5, metavar="X",
                   help="noise truncation in (0, 1] (default: 0.5)")
    g.add_argument("--classes", type=int, nargs=3, metavar=("SHAPE", "TEXTURE", "BACKGROUND"),
                   help="classes of the three mechanisms (ImageNet indices, or a world's classes)")
    g.add_argument("--batch-size", type=int, default=1, metavar="N",
                   help="images per forward pass; with 1, regeneration from labels.csv is "
                        "bit-identical (default: 1)")
    g.add_argument("--save-masks", action="store_true", help="also write masks/ (for mu_mask)")
    g.add_argument("--interp", choices=["shape", "texture", "background", "all"], default="all",
                   help="interp: the mechanism(s) to interpolate (default: all)")
    g.add_argument("--to", type=int, metavar="CLASS", help="interp: the class to interpolate to")
    g.add_argument("--midpoints", type=int, default=6, metavar="N",
                   help="interpolation steps between the two classes (default: 6)")
    g.add_argument("--gif", action="store_true", help="interp: also write the frames as a GIF")
    g.add_argument("--steps", nargs="+", metavar="MECH:CLASS",
                   help="gif: chain of interpolations, e.g. texture:293 background:147 shape:330 all:992")
    g.add_argument("--frame-ms", type=int, default=40, metavar="MS",
                   help="GIF frame duration in ms (default: 40)")
    g.add_argument("--noise", metavar="FILE",
                   help="(1, z) noise file for interp/gif (default: seeded from --seed)")
    cliargs.add_device_option(g)
    cliargs.add_threads_option(g)
    g.set_defaults(func=_generate)

    m = sub.add_parser("metrics", help="Inception Score, FID and mu_mask of a folder of generated images",
                       description="Inception Score and mu_mask (the mean mask) of a folder of "
                                   "generated images, as in the paper's Table 2, and FID against "
                                   "a folder of real images or its cached statistics.")
    src = m.add_mutually_exclusive_group(required=True)
    src.add_argument("--folder", metavar="DIR", help="generated images (e.g. DIR/train; masks/ inside)")
    src.add_argument("--world-split", metavar="DIR:SPLIT",
                     help="instead of a folder, the real images and masks of a world split (e.g. "
                          "worlds/wl32:test; cgn imagenet world build)")
    m.add_argument("--metrics", nargs="+", choices=["inception_score", "mu_mask", "fid"],
                   help="metrics to compute (default: inception_score and mu_mask, and fid when "
                        "--fid-reference is given)")
    m.add_argument("--inception", default="tf", choices=["tf", "torchvision", "world"],
                   help="network of IS and FID: tf, the TF Inception graph of the published numbers "
                        "(torch-fidelity's weights; cgn download inception-tf), torchvision's "
                        "Inception-v3 (cgn download inception-v3; other numbers), or world: a "
                        "world's classifier (--classifier RUN/world_classifier.pt of cgn imagenet "
                        "pretrain judges) (default: tf)")
    m.add_argument("--classifier", default="auto", metavar="WEIGHTS",
                   help="weights of the chosen --inception: auto (its file in $CGN_HOME/weights or "
                        "the torch hub cache) | random (pipeline checks only) | PATH; --inception "
                        "world: the world classifier's file (default: auto)")
    m.add_argument("--allow-download", dest="download", action="store_true",
                   help="allow downloading the Inception weights")
    m.add_argument("--download", dest="download", action="store_true",
                   help=argparse.SUPPRESS)  # the older spelling, hidden as elsewhere
    m.add_argument("--fid-reference", metavar="DIR_OR_NPZ",
                   help="FID reference: a folder of real images, an .npz of their statistics, or "
                        "a world split DIR:SPLIT")
    m.add_argument("--save-reference-stats", metavar="NPZ",
                   help="write the reference statistics (mu, sigma, n, network) to this .npz, to "
                        "pass as --fid-reference next time")
    m.add_argument("--splits", type=int, default=10, metavar="N",
                   help="Inception Score: splits the images are scored in (default: 10)")
    m.add_argument("--limit", type=int, metavar="N", help="use the first N images (default: all)")
    m.add_argument("--batch-size", type=int, default=50, metavar="N",
                   help="images per forward pass (default: 50)")
    cliargs.add_device_option(m)
    cliargs.add_threads_option(m)
    m.add_argument("--json", metavar="FILE", help="also write the result to this file")
    m.set_defaults(func=_metrics)


def _train(args: argparse.Namespace) -> int:
    from cgn.config import override
    from cgn.core.distributed import is_main_process
    from cgn.core.perceptual import resolve_vgg16
    from cgn.imagenet.config import ABLATIONS, ImageNetCGNConfig
    from cgn.imagenet.train import train
    from cgn.imagenet.weights import resolve_weight
    from cgn.presets import preset

    runcontrol.set_threads(args.threads)
    values = cliargs.given(args)
    resume_only = args.resume and (Path(args.out) / "checkpoints" / "last.pt").is_file()
    if resume_only:
        # The run's own config with --episodes / --set; the trainer keeps what a resume may not
        # change (cgn.config.resume_diff: only the run's length may).
        from cgn.config import from_dict
        stored = read_json(Path(args.out) / "config.json", "run config")["config"]
        cfg = from_dict(ImageNetCGNConfig, stored)
        if "train.episodes" in values:
            cfg = override(cfg, {"train.episodes": values["train.episodes"]})
        cfg = override(cfg, cliargs.set_values(args))
        records = train(cfg, args.out, resume=True, device=args.device, quiet=args.quiet)
        if records and is_main_process():
            print(json.dumps(records[-1]))
        return 0
    cfg = cliargs.start(args, ImageNetCGNConfig, lambda: preset(args.preset, "imagenet train"))
    weights = {kind: values.pop(path, None) for kind, path in WEIGHT_FIELDS.items()}
    sets: dict[str, object] = dict(ABLATIONS[args.ablate]) if args.ablate else {}
    if args.random_init:
        sets["model.random_init"] = True
    if weights["cgn"]:
        sets["model.cgn"] = resolve_weight(weights["cgn"], "cgn", required=True)
    planned = cliargs.apply(cfg, args, {**sets, **values})
    # Random weights only when asked for (--random-init, the tiny preset) or when --cgn provides
    # every weight; a downloaded file only for the architecture it is (BigGAN-deep-256, the full
    # U2-Net; the VGG16 file only where the style features are ImageNet's): a world's stand-ins
    # are always given by path.
    random_init = planned.model.random_init
    need = not (random_init or weights["cgn"])
    fits = {"biggan": planned.model.biggan_arch == "deep-256", "u2net": planned.model.u2net_arch == "full",
            "vgg16": planned.loss.feature_extractor in ("auto", "imagenet")}
    for kind in ("biggan", "u2net", "vgg16"):
        given = weights[kind]
        if not given and (random_init or not fits[kind]):
            if need and kind != "vgg16":
                raise CGNError(STAND_IN[kind].format(preset=planned.preset))
            continue
        v = resolve_weight(given, kind, required=need and kind != "vgg16",
                           directory=args.weights_dir)
        if v:
            sets[WEIGHT_FIELDS[kind]] = v
    cfg = cliargs.apply(cfg, args, {**sets, **values})
    # the style features must be there before the run directory is made
    resolve_vgg16(cfg.loss.feature_extractor, weights=cfg.loss.vgg16 or None,
                  allow_download=cfg.loss.allow_download)
    records = train(cfg, args.out, resume=args.resume, device=args.device, quiet=args.quiet)
    if records and is_main_process():
        print(json.dumps(records[-1]))
    return 0


def _load_noise(path: str | None, seed: int, z_dim: int, truncation: float):
    import torch

    from cgn.core.checkpoint import torch_load
    from cgn.imagenet.model import truncated_noise
    if path:
        u = torch_load(path, what="noise file")
        if not isinstance(u, torch.Tensor) or tuple(u.shape) != (1, z_dim):
            raise CGNError(f"noise file {path} must hold a (1, {z_dim}) tensor")
        return u.float()
    return truncated_noise(1, z_dim, truncation, torch.Generator().manual_seed(seed))


def _generate(args: argparse.Namespace) -> int:
    from cgn.core.device import resolve_device
    from cgn.imagenet import generate as gen
    from cgn.imagenet.train import save_png
    from cgn.imagenet.weights import resolve_weight

    runcontrol.set_threads(args.threads)
    cgn_path = resolve_weight(args.cgn, "cgn", required=True)
    device = resolve_device(args.device)
    if not 0 < args.truncation <= 1:
        raise CGNError("--truncation must be in (0, 1]")
    model = gen.load_generator(cgn_path, device, truncation=args.truncation)
    out = Path(args.out)
    if args.mode in ("random", "fixed"):
        spec = gen.DatasetSpec(mode=args.mode, seed=args.seed, truncation=args.truncation,
                               classes=list(args.classes) if args.classes else None,
                               source=str(Path(cgn_path).resolve()), save_masks=args.save_masks)
        n_new = gen.generate_dataset(model, out, args.split, args.n, spec, batch_size=args.batch_size)
        print(f"{out / args.split}: {n_new} new image(s), {args.n} in total")
        return 0
    if not args.classes:
        raise CGNError(f"--mode {args.mode} needs --classes SHAPE TEXTURE BACKGROUND")
    u = _load_noise(args.noise, args.seed, model.z_dim, args.truncation)
    # every class named must be one of the CGN's (a world's BigGAN has few): checked before writing
    named = list(args.classes) + ([args.to] if args.mode == "interp" and args.to is not None else [])
    if args.mode == "gif":
        named += [c for _, c in gen.parse_steps(args.steps or [])]
    model.class_vector(named)
    out.mkdir(parents=True, exist_ok=True)
    s, t, b = args.classes
    if args.mode == "interp":
        if args.to is None:
            raise CGNError("--mode interp needs --to CLASS")
        res = gen.interpolate(model, u, args.classes, args.to, args.interp, args.midpoints, args.truncation)
        stem = out / f"interp_{args.interp}_{s}-{t}-{b}_to_{args.to}"
        save_png(stem.with_suffix(".png"), gen.interpolation_sheet(res, args.interp))
        print(stem.with_suffix(".png"))
        if args.gif:
            gen.save_gif(stem.with_suffix(".gif"), list(gen.to_unit(res.composite()).cpu()), args.frame_ms)
            print(stem.with_suffix(".gif"))
        return 0
    steps = gen.parse_steps(args.steps or [])
    frames = gen.interpolation_frames(model, u, args.classes, steps, args.midpoints, args.truncation)
    name = out / ("gif_" + f"{s}-{t}-{b}_" + "_".join(f"{m}{c}" for m, c in steps) + ".gif")
    gen.save_gif(name, frames, args.frame_ms)
    print(name)
    return 0


def _metrics(args: argparse.Namespace) -> int:
    from cgn.core.device import resolve_device
    from cgn.imagenet.quality import evaluate_folder, load_extractor, needs_classifier
    from cgn.io import write_json_atomic

    runcontrol.set_threads(args.threads)
    device = resolve_device(args.device)
    metrics = args.metrics or ["inception_score", "mu_mask"] + (["fid"] if args.fid_reference else [])
    if args.save_reference_stats and not args.fid_reference:
        raise CGNError("--save-reference-stats needs --fid-reference DIR (the folder of real images)")
    if args.fid_reference and "fid" not in metrics:
        raise CGNError("--fid-reference is given but --metrics does not include fid; add fid")
    if "fid" in metrics and not args.fid_reference:
        raise CGNError("FID needs a reference: give --fid-reference with a folder of real images or "
                       "an .npz of their statistics")
    clf = None
    if needs_classifier(metrics):
        clf = load_extractor(args.inception, args.classifier, allow_download=args.download)
    evaluate = evaluate_folder
    if args.world_split:
        from cgn.imagenet.world_quality import evaluate_world_split as evaluate
    res = evaluate(args.folder or args.world_split, classifier=clf,
                   classifier_description=clf.description if clf else "", metrics=metrics,
                   splits=args.splits, limit=args.limit, batch_size=args.batch_size, device=device,
                   fid_reference=args.fid_reference, save_reference_stats=args.save_reference_stats)
    source = ({"folder": str(Path(args.folder).resolve())} if args.folder else
              {"world_split": args.world_split})
    d = {**source, **res.as_dict()}
    if args.json:
        write_json_atomic(args.json, d)
    json.dump(d, sys.stdout, indent=2)
    print()
    return 0
