"""``cgn train-classifier`` and ``cgn classify``: the MNIST invariant classifier."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    from cgn.mnist.classify import TRAIN_SETS, ClassifierConfig
    from cgn.mnist.variants import VARIANTS
    d = ClassifierConfig()
    p = sub.add_parser(
        "train-classifier", help="train the MNIST CNN on real / GAN / counterfactual data; report OOD accuracy",
        description="Train the paper's MNIST classifier (Adadelta 1.0, StepLR 0.7, batch 64, "
                    "10 epochs) on one of four training sets and report train and OOD test "
                    "accuracy. Writes a run directory with config, metrics, checkpoint, result.json.")
    p.add_argument("--dataset", required=True, choices=VARIANTS)
    p.add_argument("--train-set", default=d.train_set, choices=TRAIN_SETS)
    p.add_argument("--generated", default=None, metavar="DIR", help="output of `cgn generate`")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--data-seed", type=int, default=d.data_seed, help="seed of the fixed OOD test set")
    p.add_argument("--textures", default=None, metavar="DIR", help="wildlife texture folder")
    p.add_argument("--official-test", action="store_true")
    p.add_argument("--precision", choices=["bf16", "fp32"], default=d.precision,
                   help="bf16 autocast (default) or fp32 training")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--limit-real", type=int, default=None, metavar="N",
                   help="use only the first N real training images (smoke tests)")
    p.add_argument("--max-steps", type=int, default=None,
                   help="stop (with a checkpoint) after this many steps; --resume continues")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", required=True, metavar="RUN_DIR")
    p.add_argument("--resume", action="store_true", help="continue the run in RUN_DIR")
    p.set_defaults(func=_train)

    c = sub.add_parser("classify", help="accuracy of a classifier checkpoint on an .npz of images",
                       description="Print the accuracy of a `cgn train-classifier` checkpoint on an "
                                   ".npz with `images` and `labels` (the `cgn data build` contract).")
    c.add_argument("--checkpoint", required=True)
    c.add_argument("--images", required=True, metavar="FILE.npz")
    c.add_argument("--predictions", default=None, metavar="OUT.npz",
                   help="also write the predictions (with the input's labels, fg_class, bg_class)")
    c.add_argument("--device", default="auto")
    c.set_defaults(func=_classify)


def _train(args) -> int:
    from cgn.config import from_dict
    from cgn.mnist.classify import ClassifierConfig, train_classifier
    cfg = from_dict(ClassifierConfig, {
        "dataset": args.dataset, "train_set": args.train_set, "generated": args.generated,
        "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed,
        "data_seed": args.data_seed, "textures": args.textures, "official_test": args.official_test,
        "precision": args.precision, "threads": args.threads, "limit_real": args.limit_real,
        "device": args.device})
    result = train_classifier(cfg, args.out, resume=args.resume, max_steps=args.max_steps)
    if "interrupted_at_step" in result:
        print(json.dumps(result))
        return 0
    print(json.dumps({k: result[k] for k in ("dataset", "train_set", "train_acc", "test_acc")}))
    return 0


def _classify(args) -> int:
    import numpy as np

    from cgn.core.device import resolve_device
    from cgn.errors import CGNError
    from cgn.io import save_npz_atomic
    from cgn.mnist.classify import load_classifier, predict_file

    device = resolve_device(args.device)
    model, _ = load_classifier(args.checkpoint, device)
    try:
        z = np.load(args.images, allow_pickle=False)
        images = z["images"]
        labels = z["labels"] if "labels" in z.files else None
    except (OSError, ValueError, KeyError) as e:
        raise CGNError(f"{args.images} is not an .npz with an `images` array ({type(e).__name__}); "
                       "write one with `cgn data build`") from None
    if images.ndim != 4 or images.shape[1:] != (32, 32, 3) or images.dtype != np.uint8:
        raise CGNError(f"{args.images}: images must be uint8 [N, 32, 32, 3], got "
                       f"{images.dtype} {list(images.shape)}")
    pred = predict_file(model, images, device=device)
    out = {"n": int(len(pred))}
    if labels is not None:
        out["accuracy"] = round(100.0 * float(np.mean(pred == labels)), 3)
    if args.predictions:
        extra = {k: z[k] for k in ("labels", "fg_class", "bg_class") if k in z.files}
        save_npz_atomic(args.predictions, predictions=pred, **extra)
        out["predictions"] = args.predictions
    print(json.dumps(out))
    return 0
