"""``cgn train-classifier`` and ``cgn classify``: the MNIST invariant classifier."""

from __future__ import annotations

import argparse
import json

from cgn import cliargs


FIELDS = ["dataset", "train_set", "generated", "epochs", "batch_size", "lr", "seed", "data_seed",
          "textures", "official_test", "precision", "threads", "limit_real", "device"]


def register(sub: argparse._SubParsersAction) -> None:
    from cgn.mnist.classify import ClassifierConfig
    p = sub.add_parser(
        "train-classifier", help="train the MNIST CNN on real / GAN / counterfactual data; report OOD accuracy",
        description="Train the paper's MNIST classifier (Adadelta 1.0, StepLR 0.7, batch 64, "
                    "10 epochs) on one of four training sets and report train and OOD test "
                    "accuracy. Writes a run directory with config, metrics, checkpoint, results.json.")
    cliargs.add_fields(p, ClassifierConfig, FIELDS, required=["dataset"])
    p.add_argument("--max-steps", type=int, default=None, metavar="N",
                   help="stop (with a checkpoint) after this many steps; --resume continues "
                        "(default: no limit)")
    p.add_argument("--out", required=True, metavar="RUN_DIR",
                   help="run directory (config, metrics, checkpoints, results.json)")
    p.add_argument("--resume", action="store_true",
                   help=cliargs.RESUME_HELP + " (with the run's stored settings; options given may "
                        "change only --max-steps and how it runs: --device, --threads)")
    cliargs.add_config_options(p, "gamma=0.5")
    p.set_defaults(func=_train)

    c = sub.add_parser("classify", help="accuracy of a classifier checkpoint on an .npz of images",
                       description="Print the accuracy of a cgn train-classifier checkpoint on an "
                                   ".npz with images and labels (the cgn data build contract).")
    c.add_argument("--checkpoint", required=True, metavar="FILE",
                   help="a cgn train-classifier checkpoint (or its run directory)")
    c.add_argument("--images", required=True, metavar="FILE.npz",
                   help="uint8 images [N, 32, 32, 3] (and labels), as cgn data build writes them")
    c.add_argument("--predictions", default=None, metavar="OUT.npz",
                   help="also write the predictions (with the input's labels, fg_class, bg_class)")
    cliargs.add_device_option(c)
    cliargs.add_threads_option(c)
    c.set_defaults(func=_classify)


def _train(args) -> int:
    from cgn.mnist.classify import ClassifierConfig, train_classifier
    # --resume continues the stored config: a changed setting other than how it runs is refused
    cfg = cliargs.resolve_or_resume(args, ClassifierConfig, args.out, required=["dataset"])
    result = train_classifier(cfg, args.out, resume=args.resume, max_steps=args.max_steps)
    if "interrupted_at_step" in result:
        print(json.dumps(result))
        return 0
    print(json.dumps({k: result[k] for k in ("dataset", "train_set", "train_acc", "test_acc")}))
    return 0


def _classify(args) -> int:
    import numpy as np

    from cgn.core import runcontrol
    from cgn.core.device import resolve_device
    from cgn.errors import warn
    from cgn.io import save_npz_atomic
    from cgn.mnist.classify import load_classifier, predict_file

    runcontrol.set_threads(args.threads)
    device = resolve_device(args.device)
    model, _ = load_classifier(args.checkpoint, device)
    z = _load_images(args.images)
    images, labels = z["images"], z.get("labels")
    pred = predict_file(model, images, device=device)
    out = {"n": int(len(pred))}
    if labels is not None:
        out["accuracy"] = round(100.0 * float(np.mean(pred == labels)), 3)
    else:
        warn(f"{args.images} has no labels: predictions only, no accuracy")
    if args.predictions:
        extra = {k: z[k] for k in ("labels", "fg_class", "bg_class") if k in z}
        save_npz_atomic(args.predictions, predictions=pred, **extra)
        out["predictions"] = args.predictions
    print(json.dumps(out))
    return 0


def _load_images(path: str) -> dict:
    """The arrays of an ``.npz`` in the ``cgn data build`` contract, checked: uint8 images
    [N, 32, 32, 3] and, when present, integer class labels [N] (also fg_class / bg_class)."""
    import zipfile

    import numpy as np

    from cgn.errors import CGNError
    fix = "write one with `cgn data build`"
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in ("images", "labels", "fg_class", "bg_class") if k in z.files}
    except FileNotFoundError:
        raise CGNError(f"{path} does not exist; check the path") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise CGNError(f"{path} is not a readable .npz ({type(e).__name__}; truncated or not an "
                       f"archive); {fix}") from None
    images = arrays.get("images")
    if images is None:
        raise CGNError(f"{path} has no `images` array; {fix}")
    if images.ndim != 4 or images.shape[1:] != (32, 32, 3) or images.dtype != np.uint8:
        raise CGNError(f"{path}: images must be uint8 [N, 32, 32, 3], got {images.dtype} {list(images.shape)}")
    for key in ("labels", "fg_class", "bg_class"):
        a = arrays.get(key)
        if a is None:
            continue
        if a.ndim != 1 or len(a) != len(images) or not np.issubdtype(a.dtype, np.integer):
            raise CGNError(f"{path}: `{key}` must be integer class indices, one per image ([{len(images)}]), "
                           f"got {a.dtype} {list(a.shape)}; {fix}")
    return arrays
