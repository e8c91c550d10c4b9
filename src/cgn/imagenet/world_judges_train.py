"""Training the world's four judges with the shared training loop (``cgn imagenet pretrain judges``).

One step of a judge, batch of B inputs x (:mod:`cgn.imagenet.world_judges_data`) and labels y::

    loss = CE(JudgeNet(x), y)      Adam(lr, betas (0.9, 0.999))

The judges are trained one after the other, each in its own run directory under ``RUN``, by
:class:`cgn.core.classifier_trainer.Trainer` (exact resume, clean stops, progress bars,
``metrics.jsonl``); after every epoch (and at the end) the judge is tested on the world's test
split. Run directory::

    RUN/config.json                  the config (a rerun needs --resume and the same settings)
    RUN/<judge>/                     the judge's run: config.json, log.txt, metrics.jsonl, checkpoints/
    RUN/<judge>.pt                   its weights (cgn.imagenet.world_judges file format)
    RUN/results.json                 {"accuracy": {judge: held-out fraction}, "judges": {...}, ...}

The world classifier's results also say which cue it follows (``cue_conflict``: the shares of
the cue-conflict images it labels with their shape, texture and background class).
``--resume`` skips judges whose run finished with the configured number of epochs and continues
the others from their last checkpoint.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from cgn.config import check_resume, from_dict, to_dict
from cgn.core import runcontrol
from cgn.core.batches import BatchStream
from cgn.core.classifier_eval import eval_loader, evaluate_counts, topk_correct
from cgn.core.classifier_trainer import StepOutput, Trainer
from cgn.core.device import resolve_device
from cgn.core.distributed import DistInfo
from cgn.core.results import read_results, write_results
from cgn.core.seeding import seed_everything
from cgn.errors import CGNError
from cgn.imagenet.world_data import read_manifest
from cgn.imagenet.world_judges import JUDGES, build_judge, save_judge
from cgn.imagenet.world_judges_config import JudgesConfig
from cgn.imagenet.world_judges_data import JudgeSet, judge_set, stacked, texture_set
from cgn.io import read_json, write_json_atomic

KIND = "world-judge"


def step_loss(model: nn.Module, batch) -> StepOutput:
    x, y = batch
    logits = model(x)
    return StepOutput(F.cross_entropy(logits, y), {"acc": (topk_correct(logits, y, (1,))[0], len(y))})


def held_out_accuracy(model: nn.Module, data: JudgeSet, batch_size: int, dist: DistInfo) -> dict:
    """``{"accuracy": fraction, "n": N}`` of ``model`` on ``data``."""
    sums = evaluate_counts(model, eval_loader(data, batch_size, dist, collate_fn=stacked),
                           lambda m, b: {"hits": topk_correct(m(b[0]), b[1], (1,))[0],
                                         "n": torch.tensor(len(b[1]))},
                           dist=dist, desc="held-out accuracy")
    if not sums.get("n"):
        raise CGNError("the world's test split gives the judge no images")
    return {"accuracy": sums["hits"] / sums["n"], "n": int(sums["n"])}


def _open_run(cfg: JudgesConfig, out: Path, resume: bool) -> None:
    stored = out / "config.json"
    if stored.is_file():
        if not resume:
            raise CGNError(f"{out} already holds a judges run; pass --resume to continue it or "
                           "choose another --out")
        old = from_dict(JudgesConfig, read_json(stored, "run config")["config"])
        check_resume(JudgesConfig, to_dict(old), to_dict(cfg),
                     f"--resume continues the stored config of {out}",
                     "drop those options or start a new run with another --out")
    elif out.exists() and not out.is_dir():
        raise CGNError(f"--out {out} is a file; give a folder for the run")
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(stored, {"config": to_dict(cfg)})


def train_judges(cfg: JudgesConfig, out: str | os.PathLike, *, resume: bool = False,
                 log: Callable[[str], None] = lambda s: None) -> dict:
    """Train (or resume) the four judges into ``out``; returns the results (also results.json)."""
    if not cfg.world:
        raise CGNError("--world DIR is required: the world folder the judges learn to read")
    out = Path(out)
    manifest = read_manifest(cfg.world)  # a missing or damaged world fails before anything is written
    if manifest.get("world") != "npz":
        texture_set(manifest, cfg.textures or None)  # so does a wrong texture folder
    runcontrol.set_threads(cfg.threads)
    dist = DistInfo(device=resolve_device(cfg.device))
    _open_run(cfg, out, resume)
    world = {"root": str(Path(cfg.world).resolve()), "train_sha256": manifest["splits"]["train"]["sha256"],
             "world": manifest.get("world"), "num_classes": int(manifest["num_classes"])}
    judges: dict[str, dict] = {}
    for judge in JUDGES:
        done = read_results(out / judge)
        if done and done.get("epochs") == cfg.epochs and (out / f"{judge}.pt").is_file():
            log(f"{judge}: done (held-out accuracy {done['accuracy']:.4f}); skipped")
        else:
            reads, names = JUDGES[judge]
            log(f"{judge}: training ({reads} -> {names}{'' if names == 'class' else ' class'})")
            done = _train_one(cfg, judge, out, world, int(manifest["size"]), dist, resume)
            log(f"{judge}: held-out accuracy {done['accuracy']:.4f} ({done['n']} test images)")
        judges[judge] = done
    results = {"accuracy": {j: r["accuracy"] for j, r in judges.items()},
               "files": {j: f"{j}.pt" for j in judges}, "judges": judges, "world": world,
               "size": int(manifest["size"]), "preset": cfg.preset,
               "train_seconds": round(sum(r["train_seconds"] for r in judges.values()), 1),
               "threads": torch.get_num_threads(), "device": str(dist.device)}
    write_results(out, results)
    return results


def _train_one(cfg: JudgesConfig, judge: str, out: Path, world: dict, size: int, dist: DistInfo,
               resume: bool) -> dict:
    textures = cfg.textures or None
    train_set = judge_set(cfg.world, "train", judge, limit=cfg.limit_train, textures=textures)
    test_set = judge_set(cfg.world, "test", judge, limit=cfg.limit_test, textures=textures)
    if len(train_set) < cfg.batch_size:
        raise CGNError(f"the {judge} has {len(train_set)} training images, fewer than one batch of "
                       f"{cfg.batch_size}; lower --batch-size")
    seed_everything(cfg.seed)
    model = build_judge(judge, world["num_classes"], cfg.width)
    data = BatchStream(train_set, cfg.batch_size, seed=cfg.seed, dist=dist, collate_fn=stacked,
                       samples_per_epoch=cfg.epoch_images or None)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    clock = {"before": 0.0, "start": time.perf_counter()}
    seconds = lambda: clock["before"] + time.perf_counter() - clock["start"]  # noqa: E731
    sub = out / judge
    trainer = Trainer(model, step_loss, opt, data, epochs=cfg.epochs, out=sub,
                      config={**to_dict(cfg), "judge": judge}, kind=KIND,
                      resume=resume, dist=dist, log_every=cfg.log_every, checkpoint_every=cfg.checkpoint_every,
                      eval_fn=lambda m, epoch: held_out_accuracy(m, test_set, cfg.eval_batch_size, dist),
                      extra_state=lambda: {"train_seconds": seconds()})
    clock["before"] = float(trainer.resumed_extra.get("train_seconds", 0.0))
    clock["start"] = time.perf_counter()
    fit = trainer.fit()
    final = fit["metrics"] or held_out_accuracy(model.eval(), test_set, cfg.eval_batch_size, dist)
    path = save_judge(out / f"{judge}.pt", model, judge=judge, size=size, world=world,
                      accuracy=final["accuracy"])
    res = {"accuracy": final["accuracy"], "n": final["n"], "file": path.name,
           "reads": JUDGES[judge][0], "names": JUDGES[judge][1], "train_images": len(train_set),
           "epochs": trainer.epoch, "steps": fit["step"], "width": cfg.width,
           "parameters": sum(p.numel() for p in model.parameters()),
           "train_seconds": round(seconds(), 1)}
    if judge == "world_classifier":
        res["cue_conflict"] = cue_reading(model, cfg.world, cfg.eval_batch_size, dist, cfg.limit_test)
    write_results(sub, res)
    return res


@torch.no_grad()
def cue_reading(model: nn.Module, world, batch_size: int, dist: DistInfo, limit: int = 0) -> dict:
    """Which cue the world classifier follows: the shares of the cue-conflict images it labels
    with their shape, texture and background class (the three classes differ)."""
    from cgn.imagenet.world_data import load_split_arrays
    data = judge_set(world, "cue_conflict", "world_classifier", limit=limit)
    arrays = load_split_arrays(world, "cue_conflict")[0]
    model.eval()
    pred = torch.cat([model(data.__getitems__(range(a, min(a + batch_size, len(data))))[0]
                            .to(dist.device)).argmax(1).cpu() for a in range(0, len(data), batch_size)])
    n = len(pred)
    return {cue: float((pred == torch.from_numpy(arrays[key][:n])).double().mean())
            for cue, key in (("shape", "labels"), ("texture", "fg_class"), ("background", "bg_class"))}
