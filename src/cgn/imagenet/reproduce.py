"""``cgn reproduce imagenet``: the ImageNet half of the paper on a world, in one resumable command.

Stages (each a call into the existing trainers and evaluators, each skipped when its output is
complete, so rerunning the same command resumes):

    world          the default Wildlife MNIST world (built into RUN/world) or a built world folder
    stand-ins      BigGAN-deep, U2-Net and the four judges, trained with their presets and cached
                   under $CGN_HOME/stand-ins/<world>/ like a download (or given by path)
    gan            the BigGAN stand-in's class accuracy and Inception Score (world classifier),
                   the real test split's Inception Score
    u2net          the U2-Net stand-in's mean IoU on the test split
    cgn_*          the CGN with all losses and each loss ablation (cgn imagenet train [--ablate X])
    eval_*         mechanisms (judges on counterfactuals with three different classes), IS, mu_mask
    cf_set         the counterfactual training set (cgn imagenet generate --mode random)
    classifier_*   the ensemble as the baseline (real images) and with counterfactuals, each
                   evaluated on the world (top-1, shape bias per head, IN-9 and the BG-gap)
    lime           LIME heatmaps of both classifiers on a few test images

A finished stage writes ``RUN/stages/<name>.json`` (its numbers and seconds); the tables,
figures and ``summary.json`` are written from them (:mod:`cgn.imagenet.reproduce_tables`). With
``jobs > 1`` the independent chains (the full CGN with its classifier, each ablation, the
baseline classifier) run in worker processes.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Literal

from cgn.config import check, override
from cgn.core.lock import share_with_children
from cgn.core import runcontrol
from cgn.core.rundir import RunDir
from cgn.errors import CGNError
from cgn.io import read_json, write_json_atomic

ABLATION_NAMES = ("shape", "text", "bg", "rec")
STAGES_DIR = "stages"


@dataclass
class WorldReproduceConfig:
    world: str = field(default="wildlife-mnist", metadata={
        "help": "wildlife-mnist (build the default world into RUN/world) or the folder of a built "
                "world (cgn imagenet world build --image-folders)"})
    resolution: int = field(default=32, metadata={
        "help": "image side of the world and of every stand-in (a given world must have it)"})
    n_train: int = field(default=0, metadata={"help": "wildlife-mnist: keep the first N training images (0: all)"})
    n_test: int = field(default=0, metadata={"help": "wildlife-mnist: keep the first N test images (0: all)"})
    textures: str | None = field(default=None, metadata={
        "help": "wildlife texture folder (none: the built-in procedural set)"})
    biggan: str | None = field(default=None, metadata={
        "help": "a trained BigGAN stand-in folder (config.json + pytorch_model.bin); none: train "
                "one with biggan_preset, cached under $CGN_HOME"})
    u2net: str | None = field(default=None, metadata={
        "help": "a trained U2-Net stand-in file (u2netp.pth); none: train one with u2net_preset, cached"})
    judges: str | None = field(default=None, metadata={
        "help": "a folder with the four judges (world_classifier.pt, shape_judge.pt, ...); none: "
                "train them with judges_preset, cached"})
    biggan_preset: str = field(default="world-32", metadata={"help": "preset of the BigGAN stand-in"})
    u2net_preset: str = field(default="u2netp-32", metadata={"help": "preset of the U2-Net stand-in"})
    judges_preset: str = field(default="judges-32", metadata={"help": "preset of the judges"})
    cgn_preset: str = field(default="world-32-cgn", metadata={"help": "preset of cgn imagenet train"})
    classifier_preset: str = field(default="world-32-classifier", metadata={
        "help": "preset of the classifiers (the baseline: the same without counterfactuals)"})
    classifier_arch: str | None = field(default=None, metadata={
        "help": "backbone of the classifiers (none: the preset's, resnet18; tiny: a CPU test net)"})
    cgn_episodes: int | None = field(default=None, metadata={
        "help": "episodes of the CGN with all losses (none: the preset's, 300)"})
    cgn_batch_size: int | None = field(default=None, metadata={
        "help": "CGN samples per micro-step (none: the preset's)"})
    cgn_batch_acc: int | None = field(default=None, metadata={
        "help": "CGN micro-steps per episode (none: the preset's)"})
    ablations: list[Literal["shape", "text", "bg", "rec"]] = field(
        default_factory=lambda: list(ABLATION_NAMES), metadata={
            "help": "losses to ablate, one CGN each (cgn imagenet train --ablate X); empty: none"})
    ablation_episodes: int = field(default=100, metadata={
        "help": "episodes of each ablation; the full CGN is also evaluated at this episode"})
    n_counterfactuals: int = field(default=50_000, metadata={
        "help": "counterfactual training images for the classifier (its val split: a tenth)"})
    epochs: int | None = field(default=None, metadata={"help": "classifier epochs (none: the preset's)"})
    eval_samples: int = field(default=2000, metadata={
        "help": "samples of each Inception Score, mu_mask and mechanism evaluation (>= 10)"})
    gan_truncation: float = field(default=1.0, metadata={
        "help": "noise truncation of the BigGAN check (1.0: the noise the CGN trains on)"})
    lime_images: int = field(default=3, metadata={"help": "test images explained with LIME (0: none)"})
    lime_samples: int = field(default=1000, metadata={"help": "LIME perturbations per model and image"})
    seed: int = field(default=0, metadata={"help": "seed of the CGNs, samples, classifiers and LIME"})
    threads: int = runcontrol.worker_threads()
    jobs: int = field(default=1, metadata={"resume": "free",
        "help": "run the independent chains (full CGN + its classifier, each ablation, the "
                "baseline classifier) in up to N worker processes; may change when resuming"})
    results: str | None = field(default=None, metadata={"resume": "free",
        "help": "also copy the tables, figures and summary.json into this folder"})

    def __post_init__(self):
        from cgn.presets import find
        check(self.resolution >= 8, f"resolution must be >= 8, got {self.resolution}")
        check(min(self.n_train, self.n_test) >= 0, "n_train and n_test must be >= 0 (0: all)")
        for name, cmd in (("biggan_preset", "imagenet pretrain biggan"), ("u2net_preset", "imagenet pretrain u2net"),
                          ("judges_preset", "imagenet pretrain judges"), ("cgn_preset", "imagenet train"),
                          ("classifier_preset", "imagenet train-classifier")):
            try:
                find(getattr(self, name), cmd)
            except CGNError as e:
                raise ValueError(f"{name}: {e}") from None
        for n in ("cgn_episodes", "cgn_batch_size", "cgn_batch_acc", "epochs"):
            check(getattr(self, n) is None or getattr(self, n) >= 1, f"{n} must be >= 1")
        check(all(a in ABLATION_NAMES for a in self.ablations), f"ablations: choose from {ABLATION_NAMES}")
        check(self.ablation_episodes >= 1, "ablation_episodes must be >= 1")
        check(self.n_counterfactuals >= 1, "n_counterfactuals must be >= 1")
        check(self.eval_samples >= 10, "eval_samples must be >= 10 (the Inception Score's 10 splits)")
        check(0 < self.gan_truncation <= 1, "gan_truncation must be in (0, 1]")
        check(self.lime_images >= 0 and self.lime_samples >= 2, "lime_images >= 0, lime_samples >= 2")
        check(self.jobs >= 1 and self.threads >= 0, "jobs must be >= 1, threads >= 0")


# Every stage tiny, through the real code: the test of the command (tests/test_reproduce_imagenet.py).
QUICK = {"n_train": 64, "n_test": 32, "biggan_preset": "biggan-tiny", "u2net_preset": "u2net-tiny",
         "judges_preset": "judges-tiny", "cgn_episodes": 2, "cgn_batch_size": 2, "cgn_batch_acc": 1,
         "ablation_episodes": 1, "n_counterfactuals": 32, "epochs": 1, "classifier_arch": "tiny",
         "eval_samples": 20, "lime_images": 1, "lime_samples": 10}


def quick_config(**overrides) -> WorldReproduceConfig:
    return replace(WorldReproduceConfig(**QUICK), **overrides)


class WorldReproduction:
    def __init__(self, cfg: WorldReproduceConfig, out: str | os.PathLike, command: str):
        from cgn.imagenet import reproduce_standins as si
        self.cfg, self.out, self.command = cfg, Path(out), command
        self.world = si.check_inputs(cfg, self.out)  # one line before any work
        # every worker process opens the run too: no samples/ or checkpoints/ (unused here) to
        # make and remove, which raced between workers on a resume
        self.run = RunDir(self.out, asdict(cfg), resume=True, tensorboard=False, subdirs=False)
        self.run.check_resume(WorldReproduceConfig, asdict(cfg))
        self.quick = all(getattr(cfg, k) == v for k, v in QUICK.items())
        self.stand_ins: dict | None = None
        self.session: tuple[str, float] | None = None  # (start stamp, perf_counter at start)
        self._judges: dict = {}
        self._generator = None

    # -- stages ----------------------------------------------------------------------------------
    def log(self, message: str) -> None:
        self.run.log(message)

    def stage_path(self, name: str) -> Path:
        return self.out / STAGES_DIR / f"{name}.json"

    def done(self, name: str) -> dict | None:
        p = self.stage_path(name)
        return read_json(p, "stage record")["result"] if p.is_file() else None

    def stage(self, name: str, fn: Callable[[], dict]) -> dict:
        """``fn()``'s result, or the stored one when the stage finished before (skipped)."""
        res = self.done(name)
        if res is not None:
            self.log(f"{name}: done before, skipped")
            return res
        self.log(f"{name}: running")
        t0 = time.perf_counter()
        res = fn()
        dt = time.perf_counter() - t0
        write_json_atomic(self.stage_path(name), {"result": res, "seconds": round(dt, 1)})
        self.log(f"{name}: done in {dt:.1f} s")
        self.tick()
        return res

    def tick(self) -> None:
        """Record this session's wall time so far, stand-in training excluded (wall_time_s sums
        the sessions of the run); only the parent process times the run."""
        if self.session is None:
            return
        path = self.out / "timing.json"
        rec = read_json(path, "timing record") if path.is_file() else {"sessions": {}}
        rec["sessions"][self.session[0]] = round(time.perf_counter() - self.session[1], 1)
        write_json_atomic(path, rec)

    def rel(self, path: Path) -> str:
        return str(Path(path).relative_to(self.out))

    # -- what the stages share -------------------------------------------------------------------
    def judge(self, name: str):
        from cgn.imagenet.world_judges import load_judge
        if name not in self._judges:
            self._judges[name] = load_judge(Path(self.stand_ins["judges"]) / f"{name}.pt", name)
        return self._judges[name]

    def generator(self, checkpoint: str):
        """The CGN of a checkpoint (relative to RUN), in eval mode. Building a CGN costs seconds,
        so checkpoints of the architecture already built load their state into that model."""
        from cgn.core.checkpoint import load_checkpoint
        from cgn.imagenet.generate import load_generator
        from cgn.imagenet.model import CHECKPOINT_KIND, architecture
        path = self.out / checkpoint
        if self._generator is not None:
            ck = load_checkpoint(path, kind=CHECKPOINT_KIND)
            if ck["extra"].get("architecture") == architecture(self._generator):
                self._generator.load_cgn_state(ck["model"], f"checkpoint {path}")
                return self._generator.eval()
        self._generator = load_generator(path)
        return self._generator

    def inception(self):
        from cgn.imagenet.world_judges import WorldInception
        return WorldInception(self.judge("world_classifier"))

    # -- CGNs --------------------------------------------------------------------------------------
    def cgn_dir(self, name: str) -> Path:
        return self.out / "cgn" / name

    def train_cgn(self, name: str, ablate: str | None, episodes: int, keep_every: int = 0) -> dict:
        from cgn.core.perceptual import resolve_vgg16
        from cgn.imagenet.config import ABLATIONS
        from cgn.imagenet.train import train
        from cgn.presets import preset
        cfg = self.cfg
        sets = {"model.biggan": self.stand_ins["biggan"], "model.u2net": self.stand_ins["u2net"],
                "train.episodes": episodes, "train.seed": cfg.seed, "train.keep_every": keep_every}
        for key, value in (("train.batch_size", cfg.cgn_batch_size), ("train.batch_acc", cfg.cgn_batch_acc)):
            if value is not None:
                sets[key] = value
        c = override(preset(cfg.cgn_preset, "imagenet train"), {**sets, **(ABLATIONS[ablate] if ablate else {})})
        resolve_vgg16(c.loss.feature_extractor, weights=c.loss.vgg16 or None, allow_download=False)
        out = self.cgn_dir(name)
        train(c, out, resume=True, quiet=True)
        sheets = sorted((out / "samples").glob("sheet_ep*.png"))
        return {"checkpoint": self.rel(out / "checkpoints" / "last.pt"), "episodes": episodes,
                "ablate": ablate, "sheet": self.rel(sheets[-1]) if sheets else None}

    def quality(self, name: str, checkpoint: str) -> dict:
        """IS (world classifier) and mu_mask of eval_samples random counterfactuals."""
        from cgn.imagenet.generate import DatasetSpec, generate_dataset
        from cgn.imagenet.quality import evaluate_folder
        folder = self.out / "eval" / name
        model = self.generator(checkpoint)
        spec = DatasetSpec("random", self.cfg.seed, 0.5, None, checkpoint, True)
        generate_dataset(model, folder, "val", self.cfg.eval_samples, spec, batch_size=64)
        q = evaluate_folder(folder / "val", classifier=self.inception(),
                            metrics=("inception_score", "mu_mask"))
        return {"inception_score": q.inception_score[0], "inception_score_std": q.inception_score[1],
                "mu_mask": q.mu_mask, "n": q.n_images}

    def mechanisms(self, checkpoint: str) -> dict:
        from cgn.imagenet.world_metrics import evaluate_mechanisms
        model = self.generator(checkpoint)
        return evaluate_mechanisms(model, shape_judge=self.judge("shape_judge"),
                                   texture_judge=self.judge("texture_judge"),
                                   background_judge=self.judge("background_judge"), u2net=model.u2net,
                                   n=self.cfg.eval_samples, seed=self.cfg.seed)

    def full_episodes(self) -> int:
        from cgn.presets import preset
        return self.cfg.cgn_episodes or preset(self.cfg.cgn_preset, "imagenet train").train.episodes

    def run_full_chain(self) -> None:
        """The CGN with all losses, its evaluations, its counterfactuals and their classifier."""
        n_full, n_abl = self.full_episodes(), self.cfg.ablation_episodes
        keep = n_abl if self.cfg.ablations and n_abl < n_full else 0
        full = self.stage("cgn_full", lambda: self.train_cgn("full", None, n_full, keep))
        self.stage("eval_full", lambda: {"mechanisms": self.mechanisms(full["checkpoint"]),
                                         "quality": self.quality("full", full["checkpoint"]),
                                         "episodes": n_full})
        if keep:
            ck = self.rel(self.cgn_dir("full") / "checkpoints" / f"ep{n_abl:07d}.pt")
            self.stage("eval_full_at_ablation", lambda: {"quality": self.quality(f"full-ep{n_abl}", ck),
                                                         "episodes": n_abl})
        self.stage("cf_set", lambda: self.cf_set(full["checkpoint"]))
        self.stage("classifier_cgn", lambda: self.classifier("cgn", with_cf=True))

    def run_ablation(self, ablate: str) -> None:
        name = f"no_{ablate}"
        res = self.stage(f"cgn_{name}", lambda: self.train_cgn(name, ablate, self.cfg.ablation_episodes))
        self.stage(f"eval_{name}", lambda: {"quality": self.quality(name, res["checkpoint"]),
                                            "episodes": res["episodes"]})

    # -- counterfactuals and classifiers ----------------------------------------------------------
    def cf_set(self, checkpoint: str) -> dict:
        from cgn.imagenet.generate import DatasetSpec, generate_dataset
        model = self.generator(checkpoint)
        spec = DatasetSpec("random", self.cfg.seed, 0.5, None, checkpoint, True)
        sizes = {"train": self.cfg.n_counterfactuals, "val": max(1, self.cfg.n_counterfactuals // 10)}
        for split, n in sizes.items():
            generate_dataset(model, self.out / "cf", split, n, spec, batch_size=64)
        return {"folder": "cf", **sizes}

    def classifier(self, name: str, with_cf: bool) -> dict:
        from cgn.imagenet.classifier_train import load_classifier, train_classifier
        from cgn.imagenet.imagefolder import eval_transform
        from cgn.imagenet.world_eval import evaluate_world
        from cgn.presets import preset
        cfg, res = self.cfg, self.cfg.resolution
        sets = {"data.train_dir": str(self.world / "folders" / "train"),
                "data.val_dir": str(self.world / "folders" / "test"),
                "data.cf_dir": str(self.out / "cf") if with_cf else "", "data.image_size": res,
                "data.resize_size": res, "seed": cfg.seed, "tensorboard": False}
        for key, value in (("optim.epochs", cfg.epochs), ("model.arch", cfg.classifier_arch)):
            if value is not None:
                sets[key] = value
        out = self.out / "classifier" / name
        train_classifier(override(preset(cfg.classifier_preset, "imagenet train-classifier"), sets), out, resume=True)
        model, ccfg = load_classifier(out / "checkpoints" / "last.pt")
        d = ccfg.data
        metrics = evaluate_world(model.eval(), self.world, transform=eval_transform(d.image_size, d.resize_size),
                                 batch_size=ccfg.eval.batch_size)
        return {"checkpoint": self.rel(out / "checkpoints" / "last.pt"), "metrics": metrics}

    # -- the whole run -----------------------------------------------------------------------------
    def tasks(self) -> list[str]:
        return ["full", *[f"ablation:{a}" for a in self.cfg.ablations], "baseline"]

    def run_task(self, task: str) -> None:
        if task == "full":
            self.run_full_chain()
        elif task == "baseline":
            self.stage("classifier_baseline", lambda: self.classifier("baseline", with_cf=False))
        else:
            self.run_ablation(task.split(":", 1)[1])

    def run_all(self) -> dict:
        from cgn.imagenet import reproduce_standins as si
        from cgn.imagenet.reproduce_tables import lime_figures, write_outputs
        runcontrol.set_threads(self.cfg.threads)
        t0 = time.perf_counter()
        si.ensure_world(self)
        world_s = time.perf_counter() - t0
        self.stand_ins = si.ensure_stand_ins(self)
        # stand-in training is timed apart (pretrain_time_s); the world's build counts
        self.session = (time.strftime("%Y-%m-%dT%H:%M:%S"), time.perf_counter() - world_s)
        try:  # a stopped session's time counts too (tick also runs after every stage)
            self.stage("gan", lambda: si.gan_check(self))
            self.stage("u2net", lambda: si.u2net_iou(self))
            workers = min(self.cfg.jobs, len(self.tasks()))
            if workers <= 1:
                for task in self.tasks():
                    self.run_task(task)
            else:
                self._run_parallel(workers)
            self.stage("lime", lambda: lime_figures(self))
        finally:
            self.tick()
        return write_outputs(self)

    def _run_parallel(self, workers: int) -> None:
        from cgn.core.workers import run_in_workers
        threads = self.cfg.threads or max(1, (os.cpu_count() or 1) // workers)
        self.log(f"running {len(self.tasks())} chains in {workers} worker processes, "
                 f"{threads} torch thread(s) each")

        def on_done(task: str, _result, error: BaseException | None) -> None:
            self.log(f"[{task}] " + ("finished" if error is None else f"failed: {error}"))
            self.tick()

        share_with_children(self.out)  # the workers write into this run under its lock
        run_in_workers(_run_task_in_worker, {t: (self.cfg, str(self.out), self.command, self.stand_ins, t)
                                             for t in self.tasks()}, workers, threads, on_done)


def _run_task_in_worker(cfg: WorldReproduceConfig, out: str, command: str, stand_ins: dict, task: str) -> None:
    rep = WorldReproduction(cfg, out, command)
    rep.stand_ins = stand_ins
    rep.run_task(task)
