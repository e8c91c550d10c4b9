"""The world, the stand-ins and their checks in ``cgn reproduce imagenet``.

The world is the default Wildlife MNIST world, built into ``RUN/world``, or a built world folder.
The stand-ins (BigGAN-deep, U2-Net, the four judges) are either given by path or trained with
their presets by their own trainers and cached like a download::

    $CGN_HOME/stand-ins/<world key>/<kind>-<preset>-<config digest>/

The world key is the sha256 of the world's split digests (from its manifest), so every run on
the same world content, wherever its folder is, finds the same stand-ins; the config digest
covers the stand-in's resolved config without its data paths and execution settings (threads,
device). A stand-in whose training was cut short is resumed by its trainer; a finished one is
reused. The stand-ins keep their presets' seeds, so a run with another ``--seed`` reuses them.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from cgn.config import override, to_dict
from cgn.core.results import read_results
from cgn.errors import CGNError
from cgn.paths import cache_dir

JUDGE_FILES = ("world_classifier", "shape_judge", "texture_judge", "background_judge")
# fields of a stand-in's config that say where the data are or how it runs, not what it learns
_NOT_KEYED = {"biggan": ("train.data", "train.threads", "train.device", "train.precision"),
              "u2net": ("data.train", "data.test", "train.threads", "train.device"),
              "judges": ("world", "threads", "device")}


def check_inputs(cfg, out: Path) -> Path:
    """The world folder the run uses; bad input (an unknown world, a stand-in path that is not
    there) is one CGNError line, before anything is written."""
    from cgn.imagenet.world import WORLDS
    from cgn.imagenet.world_data import read_manifest
    if cfg.world in WORLDS:
        world = (out / "world").resolve()
    elif Path(cfg.world).expanduser().is_dir():
        world = Path(cfg.world).expanduser().resolve()
        m = read_manifest(world)
        if int(m["size"]) != cfg.resolution:
            raise CGNError(f"world {world} is {m['size']} px but --resolution is {cfg.resolution}; "
                           f"pass --resolution {m['size']}")
        if not m.get("image_folders") or not (world / "folders" / "train").is_dir():
            raise CGNError(f"world {world} has no image folders (the classifiers read them); rebuild "
                           "it with cgn imagenet world build --image-folders")
    else:
        raise CGNError(f"unknown world {cfg.world!r}: give {', '.join(WORLDS)} (built into RUN/world) "
                       "or the folder of a built world (cgn imagenet world build --image-folders --out DIR)")
    if cfg.world in WORLDS and cfg.resolution not in (32, 64):
        raise CGNError(f"--resolution {cfg.resolution}: wildlife-mnist is built at 32 or 64 px")
    if cfg.biggan and not (Path(cfg.biggan).expanduser() / "config.json").is_file():
        raise CGNError(f"--biggan {cfg.biggan}: no config.json there; give the folder that cgn imagenet "
                       "pretrain biggan exports (RUN/biggan), or leave it out to train one")
    if cfg.u2net and not Path(cfg.u2net).expanduser().is_file():
        raise CGNError(f"--u2net {cfg.u2net} does not exist; give the u2netp.pth of cgn imagenet "
                       "pretrain u2net, or leave it out to train one")
    if cfg.judges:
        missing = [f"{j}.pt" for j in JUDGE_FILES if not (Path(cfg.judges).expanduser() / f"{j}.pt").is_file()]
        if missing:
            raise CGNError(f"--judges {cfg.judges} lacks {', '.join(missing)}; give the run folder of "
                           "cgn imagenet pretrain judges, or leave it out to train them")
    return world


def ensure_world(rep) -> dict:
    """Build the default world into RUN/world unless it is there; returns its manifest."""
    from cgn.imagenet.world import WORLDS, WorldSpec, build_world
    from cgn.imagenet.world_data import read_manifest
    cfg = rep.cfg
    if cfg.world in WORLDS:
        try:
            m = read_manifest(rep.world)
            if m.get("image_folders"):
                rep.log(f"world: {rep.world} built before, skipped")
                return m
        except CGNError:
            pass
        if rep.world.is_dir():  # the run's own folder, its build cut short: start it again
            shutil.rmtree(rep.world)
        rep.log(f"world: building {cfg.world} at {cfg.resolution} px into {rep.world}")
        spec = WorldSpec(world=cfg.world, size=cfg.resolution, textures=cfg.textures,
                         n_train=cfg.n_train, n_test=cfg.n_test)
        return build_world(spec, rep.world, image_folders=True, log=lambda s: rep.run.log(s, echo=False))
    return read_manifest(rep.world)


def world_key(manifest: dict) -> str:
    """sha256 over the world's split digests: the same content gives the same key."""
    digests = {k: v["sha256"] for k, v in sorted(manifest["splits"].items()) if k != "original"}
    return hashlib.sha256(json.dumps(digests, sort_keys=True).encode()).hexdigest()


def _digest(kind: str, c) -> str:
    d = to_dict(c)
    for path in _NOT_KEYED[kind]:
        node = d
        *head, last = path.split(".")
        for part in head:
            node = node[part]
        node.pop(last, None)
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


def stand_in_configs(rep, manifest: dict) -> dict:
    from cgn.presets import preset
    cfg, w = rep.cfg, rep.world
    return {
        "biggan": override(preset(cfg.biggan_preset, "imagenet pretrain biggan"), {
            "model.resolution": cfg.resolution, "model.num_classes": int(manifest["num_classes"]),
            "train.data": str(w / "train.npz"), "train.threads": cfg.threads}),
        "u2net": override(preset(cfg.u2net_preset, "imagenet pretrain u2net"), {
            "data.train": str(w / "train.npz"), "data.test": str(w / "test.npz"),
            "data.image_size": cfg.resolution, "train.threads": cfg.threads}),
        "judges": override(preset(cfg.judges_preset, "imagenet pretrain judges"), {
            "world": str(w), "textures": cfg.textures or "", "threads": cfg.threads}),
    }


def _finished(kind: str, folder: Path, res: dict | None) -> Path | None:
    """The stand-in's file or folder when its run in ``folder`` is finished, else None."""
    if res is None:
        return None
    if kind == "biggan":
        p = folder / "biggan"
        return p if (p / "config.json").is_file() else None
    if kind == "u2net":
        p = folder / Path(res.get("weights", "")).name
        return p if p.is_file() and p.suffix == ".pth" else None
    return folder if all((folder / f"{j}.pt").is_file() for j in JUDGE_FILES) else None


def _train(kind: str, c, folder: Path, log=lambda s: None) -> None:
    if kind == "biggan":
        from cgn.imagenet.biggan_pretrain import train
        train(c, folder, resume=True, quiet=True)
    elif kind == "u2net":
        from cgn.imagenet.u2net_train import train_u2net
        train_u2net(c, folder, resume=True)
    else:
        from cgn.imagenet.world_judges_train import train_judges
        train_judges(c, folder, resume=True, log=log)


def _given_results(kind: str, path: Path) -> dict | None:
    """The results.json of the run that made a stand-in given by path, when it is there."""
    run = path.parent if kind in ("biggan", "u2net") else path
    try:
        return read_results(run)
    except CGNError:
        return None


def ensure_stand_ins(rep, *, registry=None, pack_dir: Path | None = None) -> dict:
    """Paths of the three stand-ins and ``pretrain_time_s``: the sum of their runs'
    ``train_seconds`` (None when a given stand-in's run is unknown). A missing stand-in is
    installed from the ones shipped with cgn when they match (:mod:`cgn.imagenet.shipped`),
    otherwise trained; with ``jobs > 1`` the ones to train are trained in worker processes."""
    from cgn.imagenet import shipped
    from cgn.imagenet.world_data import read_manifest
    manifest = read_manifest(rep.world)
    key = world_key(manifest)[:16]
    configs = stand_in_configs(rep, manifest)
    given = {"biggan": rep.cfg.biggan, "u2net": rep.cfg.u2net, "judges": rep.cfg.judges}
    folders = {kind: cache_dir("stand-ins", key, f"{kind}-{c.preset}-{_digest(kind, c)}")
               for kind, c in configs.items() if not given[kind]}
    to_train = []
    for kind, folder in folders.items():
        if _finished(kind, folder, read_results(folder)) is not None:
            rep.log(f"stand-in {kind}: cached, {folder}; skipped")
            continue
        entry = shipped.find(kind, key, configs[kind].preset, _digest(kind, configs[kind]), registry)
        if entry is not None and not (folder / "checkpoints").is_dir():
            shipped.install(entry, folder, pack_dir)
            rep.log(f"stand-in {kind}: installed the one shipped with cgn into {folder}")
        else:
            to_train.append(kind)
    if to_train:
        for kind in to_train:
            rep.log(f"stand-in {kind}: training with preset {configs[kind].preset} into {folders[kind]}")
        _train_all({k: (k, configs[k], str(folders[k])) for k in to_train}, rep)
    out: dict = {"world_key": key, "train_seconds": {}}
    for kind in configs:
        if given[kind]:
            path = Path(given[kind]).expanduser().resolve()
            res = _given_results(kind, path)
            rep.log(f"stand-in {kind}: given, {path}")
        else:
            res = read_results(folders[kind])
            path = _finished(kind, folders[kind], res)
            if path is None:
                raise CGNError(f"the {kind} stand-in in {folders[kind]} did not finish; rerun to resume it")
        out[kind] = str(path)
        out["train_seconds"][kind] = None if res is None else res.get("train_seconds")
    secs = out["train_seconds"].values()
    out["pretrain_time_s"] = None if None in secs else round(sum(secs), 1)
    return out


def _train_all(tasks: dict, rep) -> None:
    """Train the stand-ins of ``tasks`` (kind: (kind, config, folder)): in this process, or with
    ``jobs > 1`` in worker processes (the BigGAN's hour beside the U2-Net and the judges)."""
    import os
    workers = min(rep.cfg.jobs, len(tasks))
    if workers <= 1:
        for kind, c, folder in tasks.values():
            _train(kind, c, Path(folder), lambda s: rep.run.log(f"judges: {s}", echo=False))
        return
    from cgn.core.workers import run_in_workers
    threads = rep.cfg.threads or max(1, (os.cpu_count() or 1) // workers)

    def on_done(kind, _result, error):
        rep.log(f"stand-in {kind}: " + ("trained" if error is None else f"failed: {error}"))

    thread_field = {"biggan": "train.threads", "u2net": "train.threads", "judges": "threads"}
    tasks = {k: (kind, override(c, {thread_field[kind]: threads}), folder) for k, (kind, c, folder) in tasks.items()}
    run_in_workers(_train_in_worker, tasks, workers, threads, on_done)


def _train_in_worker(kind: str, c, folder: str) -> None:
    _train(kind, c, Path(folder))


# -- the stand-ins' checks ----------------------------------------------------------------------
def gan_check(rep) -> dict:
    """The BigGAN stand-in: class accuracy (world classifier), shape accuracy (its U2-Net masks
    read by the shape judge), IS of its samples and of the real test split (world classifier)."""
    from cgn.core.metrics import calc_metric
    from cgn.imagenet.biggan import BigGAN
    from cgn.imagenet.quality import class_probabilities, inception_score
    from cgn.imagenet.u2net import U2Net
    from cgn.imagenet.world_metrics import gan_samples
    from cgn.imagenet.world_quality import evaluate_world_split
    cfg, n = rep.cfg, rep.cfg.eval_samples
    g = BigGAN.from_pretrained(rep.stand_ins["biggan"]).eval()
    s = gan_samples(g, n, seed=cfg.seed, truncation=cfg.gan_truncation)
    u2 = U2Net.from_pretrained(rep.stand_ins["u2net"])
    acc = calc_metric("gan_class_accuracy", world_classifier=rep.judge("world_classifier"), **s)
    shape = calc_metric("gan_shape_accuracy", u2net=u2, shape_judge=rep.judge("shape_judge"), **s)
    x = (s["gan_images"] + 1) / 2
    probs = class_probabilities((x[a:a + 100] for a in range(0, n, 100)), rep.inception(),
                                total=-(-n // 100))
    is_gan = inception_score(probs)
    real = evaluate_world_split(f"{rep.world}:test", classifier=rep.inception(),
                                metrics=["inception_score"], limit=n)
    return {"class_accuracy": acc, "shape_accuracy": shape, "inception_score": is_gan[0],
            "inception_score_std": is_gan[1], "real_inception_score": real.inception_score[0],
            "real_inception_score_std": real.inception_score[1], "n": n, "real_n": real.n_images,
            "truncation": cfg.gan_truncation}


def u2net_iou(rep) -> dict:
    """The U2-Net stand-in's mean IoU and MAE against the test split's ground-truth masks."""
    from cgn.core.metrics import calc_metric
    from cgn.imagenet.saliency import MaskedImages, load_masked_split
    from cgn.imagenet.u2net import U2Net
    images, masks = load_masked_split(rep.world / "test.npz")
    return calc_metric("mask_iou", model=U2Net.from_pretrained(rep.stand_ins["u2net"]),
                       mask_set=MaskedImages(images, masks, rep.cfg.resolution), batch_size=256)
