"""``cgn reproduce mnist``: the paper's MNIST table in one command, resumable.

For each dataset: get a CGN (the authors' checkpoint, or train one with the preset recipe),
generate the counterfactual set (and the plain-GAN set when "real+gan" is asked for), train the
classifier on each training set, and write into the run directory:

    config.json, log.txt                 the resolved config and what ran
    table3.json / table3.md              our rows beside the published ones
    samples_<dataset>.png                real training images vs counterfactuals
    mask_timeline_<dataset>.png          masks of fixed noise through CGN training (trained CGNs)
    ablation_n_counterfactuals.{json,md,png}   OOD accuracy vs number of counterfactuals (option)
    ood_accuracy_per_epoch.{json,png}    OOD accuracy after each classifier epoch (table 3's rows)
    table4.json / table4.md              the SSIM-loss ablation (option)
    <dataset>/<cgn>/...                  the CGN run, generated sets and classifier runs

Every step whose output is complete is skipped, so rerunning the same command resumes.

With ``jobs > 1`` the datasets run concurrently, one per worker process (spawned, never forked),
each with ``threads`` torch threads (default: the CPU count divided by the number of workers);
the parent writes the tables from the rows each worker returns, in the order of ``datasets``.

Reference: docs/reference.md#published-mnist-accuracies.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np

from cgn.config import check
from cgn.core.lock import share_with_children
from cgn.core.results import read_results, results_path
from cgn.core import runcontrol
from cgn.core.rundir import RunDir
from cgn.core.workers import run_in_workers
from cgn.errors import CGNError
from cgn.io import read_jsonl, write_json_atomic
from cgn.mnist import tables, variants
from cgn.mnist.classify import TRAIN_SETS, ClassifierConfig, train_classifier
from cgn.mnist.cfdata import CounterfactualSet
from cgn.mnist.counterfactuals import MAX_IMAGES, GenerateConfig, checkpoint_source, generate

REFERENCE_FILES = {"colored-mnist": "colored_mnist.pth", "double-colored-mnist": "double_colored_mnist.pth",
                   "wildlife-mnist": "wildlife_mnist.pth"}


def reference_checkpoint(reference_dir: str, dataset: str) -> Path:
    """The authors' CGN checkpoint of ``dataset`` in ``reference_dir`` (``--cgn reference DIR``)."""
    path = Path(reference_dir) / REFERENCE_FILES[dataset]
    if not path.is_file():
        raise CGNError(f"{path} not found; --cgn reference DIR needs {REFERENCE_FILES[dataset]} in DIR")
    return path


def finished_cgn_run(dataset: str, run_dir: str | Path) -> dict:
    """The results of a finished ``cgn train-cgn`` run given as ``--cgn-run dataset=run_dir``."""
    res = read_results(run_dir)
    if res is None:
        raise CGNError(f"--cgn-run {dataset}={run_dir}: no results.json there; finish that "
                       "`cgn train-cgn` run first (rerun it with --resume)")
    return res


@dataclass
class ReproduceConfig:
    datasets: list[Literal["colored-mnist", "double-colored-mnist", "wildlife-mnist"]] = field(
        default_factory=lambda: list(variants.VARIANTS), metadata={"help": "datasets to reproduce"})
    cgn: Literal["pretrained", "reference", "trained"] = field(default="trained", metadata={
        "help": "trained: train a CGN per dataset with the preset recipe; pretrained: the CGNs "
                "shipped with cgn; reference: the authors' CGNs from reference_dir"})
    reference_dir: str | None = field(default=None, metadata={
        "help": "folder with the authors' *_mnist.pth files (cgn=reference)"})
    n_counterfactuals: int = field(default=100_000, metadata={
        "help": "counterfactual images per dataset (1e6 for the full setting)"})
    cf_ratio: int = field(default=10, metadata={"help": "counterfactuals per sampled mask"})
    train_sets: list[Literal["real", "real+gan", "real+cf", "cf"]] = field(
        default_factory=lambda: list(TRAIN_SETS), metadata={"help": "classifier training sets"})
    epochs: int = field(default=10, metadata={"help": "classifier epochs"})
    seed: int = field(default=0, metadata={
        "help": "seed of the CGNs, the counterfactual sets and the classifiers"})
    data_seed: int = field(default=0, metadata={"help": "seed the variants' splits are built with"})
    textures: str | None = field(default=None, metadata={
        "help": "wildlife texture folder (object/, background/); none: the built-in procedural set"})
    cgn_steps: int | None = field(default=None, metadata={
        "help": "trained CGNs: train this many steps instead of the recipe's"})
    # "free": a counterfactual set keeps the precision it was started in (its manifest says
    # which), so a rerun may ask for auto; sets not yet written follow the new request.
    precision: Literal["auto", "bf16", "fp32"] = field(default="auto", metadata={"resume": "free",
        "help": "precision of the counterfactual generation: auto (bf16 only where it is faster: "
                "AMX CPUs, bf16 GPUs, AVX-512-BF16 CPUs where a probe measures it), bf16 autocast or fp32"})
    ablation_sizes: list[int] = field(default_factory=list, metadata={
        "help": "also train on this many counterfactuals each (e.g. 1e4,1e5,1e6) and plot the OOD "
                "accuracy against the size", "resume": "extend"})
    ssim_weight: float | None = field(default=None, metadata={
        "help": "SSIM ablation (Table 4 of the reproduction study): also train CGNs with this "
                "SSIM loss weight"})
    cgn_runs: dict[str, str] = field(default_factory=dict, metadata={
        "help": "dataset -> a finished cgn train-cgn run directory to use instead of training"})
    # threads and jobs say how the run executes, not what it computes: a rerun may change them
    # (another thread count may change float rounding of the steps still to run, as train-cgn's
    # --resume allows).
    threads: int = runcontrol.worker_threads()
    jobs: int = field(default=1, metadata={"resume": "free",
        "help": "run the datasets concurrently in up to N worker processes. The small MNIST models "
                "use many cores better this way than with more threads; results equal 1 job at "
                "the same thread count. jobs and threads may change when resuming"})
    limit_real: int | None = field(default=None, metadata={
        "help": "use only the first N real training images (smoke tests, probes)"})
    limit_test: int | None = field(default=None, metadata={
        "help": "score only the first N OOD test images (smoke tests, probes; not comparable "
                "with full-test numbers)"})

    def __post_init__(self):
        for d in self.datasets:
            check(d in variants.VARIANTS, f"unknown dataset {d!r}; choose from {', '.join(variants.VARIANTS)}")
        for t in self.train_sets:
            check(t in TRAIN_SETS, f"unknown train set {t!r}; choose from {', '.join(TRAIN_SETS)}")
        check(self.cgn != "reference" or self.reference_dir is not None,
              "--cgn reference needs the folder with the authors' checkpoints: --cgn reference DIR")
        check(self.n_counterfactuals >= 1 and self.cf_ratio >= 1, "n_counterfactuals and cf_ratio must be >= 1")
        check(all(1 <= n <= MAX_IMAGES for n in (self.n_counterfactuals, *self.ablation_sizes)),
              f"counterfactual set sizes must be between 1 and {MAX_IMAGES:,} (300 GB)")
        check(self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}")
        check(self.cgn_steps is None or self.cgn_steps >= 1, f"cgn_steps must be >= 1, got {self.cgn_steps}")
        check(self.ssim_weight is None or self.ssim_weight > 0, "ssim_weight must be > 0")
        check(self.jobs >= 1, f"jobs must be >= 1, got {self.jobs}")
        check(self.threads >= 0, f"threads must be >= 0, got {self.threads}")
        check(self.limit_test is None or self.limit_test >= 1, "limit_test must be >= 1")
        for d in self.cgn_runs:
            check(d in variants.VARIANTS, f"--cgn-run: unknown dataset {d!r}")


# The main job of the README (`make demo`): the shipped colored CGN, its counterfactuals and the
# classifier on real and on real + counterfactual images, in under 10 minutes on 2 cores.
QUICK = {"datasets": ["colored-mnist"], "cgn": "pretrained", "n_counterfactuals": 300_000,
         "train_sets": ["real", "real+cf"], "epochs": 1}
# `--train-cgn`: train the CGN with the preset recipe instead (with --quick: for QUICK_CGN_STEPS,
# rough digits; a paper-quality CGN trains for the recipe's steps or longer, docs/mnist_cgn.md).
QUICK_CGN_STEPS = 1500


class Reproduction:
    def __init__(self, cfg: ReproduceConfig, out: str | Path, command: str, resume: bool = True):
        self.cfg, self.out, self.command = cfg, Path(out), command
        for dataset, run_dir in cfg.cgn_runs.items():  # fail before any work, not halfway
            res = finished_cgn_run(dataset, run_dir)
            self.check_textures(dataset, (res.get("data") or {}).get("texture_set"),
                                f"the CGN of --cgn-run {dataset}={run_dir} was trained")
        for dataset in cfg.datasets if cfg.cgn == "reference" else []:
            reference_checkpoint(cfg.reference_dir, dataset)
        if cfg.cgn == "pretrained":
            from cgn.mnist.pretrained import provenance, shipped_path
            for dataset in cfg.datasets:
                shipped_path(dataset)
            if "wildlife-mnist" in cfg.datasets:  # the only one whose record must be read now
                self.check_textures("wildlife-mnist", provenance("wildlife-mnist").get("texture_set"),
                                    "the shipped CGN wildlife-mnist was trained")
        self.run = RunDir(self.out, asdict(cfg), resume=resume)
        stored, new = self.run.stored_config(), asdict(cfg)
        diff = self.run.check_resume(ReproduceConfig, new)
        changed = [k for k in diff.extended if stored.get(k, []) != new[k]]
        if changed:
            record = json.loads(self.run.config_path.read_text())
            record["config"].update({k: new[k] for k in changed})
            write_json_atomic(self.run.config_path, record)
            self.run.log("resumed with " + ", ".join(f"{k} {stored.get(k, [])} -> {new[k]}" for k in changed))
        self.rows: list[dict] = []

    def check_style_features(self) -> None:
        """Each CGN still to train finds the style features its recipe pins (a dry resolution,
        no weights read); else the one-line error before any work, not after the first
        classifiers."""
        from cgn.core.perceptual import resolve_vgg16
        from cgn.presets import preset
        kinds = ["trained"] if self.cfg.cgn == "trained" else []
        kinds += ["trained+ssim"] if self.cfg.ssim_weight is not None else []
        for dataset in self.cfg.datasets:
            for kind in kinds:
                if kind == "trained" and dataset in self.cfg.cgn_runs:
                    continue
                if results_path(self.out / dataset / kind / "cgn") is None:
                    resolve_vgg16(preset(dataset, "train-cgn", recipe=True).loss.feature_extractor)

    def textures(self, dataset: str) -> str | None:
        """The texture folder the variant is built with (Wildlife MNIST only)."""
        return self.cfg.textures if dataset == "wildlife-mnist" else None

    def check_textures(self, dataset: str, texture_set: str | None, made: str) -> None:
        """A given CGN of Wildlife MNIST is evaluated on the textures it was trained on (else its
        counterfactuals and the real and OOD images would show different ones)."""
        if dataset == "wildlife-mnist" and texture_set:
            from cgn.mnist.textures import matching_textures
            matching_textures(texture_set, self.textures(dataset), made)

    # -- steps ---------------------------------------------------------------------------------
    def cgn_checkpoint(self, dataset: str, kind: str) -> tuple[Path, bool, Path | None]:
        """(checkpoint, is_reference_format, CGN run dir or None) for kind reference|trained|trained+ssim."""
        if kind == "reference":
            return reference_checkpoint(self.cfg.reference_dir, dataset), True, None
        if kind == "pretrained":
            from cgn.mnist.pretrained import shipped_path
            return shipped_path(dataset), False, None
        if kind == "trained" and dataset in self.cfg.cgn_runs:
            run_dir = Path(self.cfg.cgn_runs[dataset])
            res = finished_cgn_run(dataset, run_dir)
            if res.get("dataset") != dataset:
                raise CGNError(f"--cgn-run {dataset}={run_dir} holds a {res.get('dataset')} CGN")
            ckpt = Path(res["checkpoint"])
            ckpt = ckpt if ckpt.exists() else run_dir / "checkpoints" / ckpt.name  # the run dir may have moved
            self.run.log(f"[{dataset}] using the CGN of {run_dir} (mask mean {res.get('mask_mean', float('nan')):.3f})")
            return ckpt, False, run_dir
        from cgn.config import override
        from cgn.mnist.train import train
        from cgn.presets import preset
        cfg = preset(dataset, "train-cgn", recipe=True)
        changes = {"train.data_seed": self.cfg.data_seed, "train.seed": self.cfg.seed,
                   "train.threads": self.cfg.threads}
        if self.cfg.cgn_steps is not None:
            changes["train.max_steps"] = self.cfg.cgn_steps
        if self.textures(dataset) is not None:
            changes["train.textures"] = self.textures(dataset)
        if self.cfg.limit_real is not None:
            changes["train.limit_train"] = max(self.cfg.limit_real, cfg.train.batch_size)
        if kind == "trained+ssim":
            changes["loss.ssim_weight"] = self.cfg.ssim_weight
        cfg = override(cfg, changes)
        run_dir = self.out / dataset / kind / "cgn"
        if results_path(run_dir) is None:
            self.run.log(f"[{dataset}] training a CGN ({kind}): {cfg.train.max_steps or cfg.train.epochs} "
                         f"{'steps' if cfg.train.max_steps else 'epochs'}")
            train(cfg, run_dir, resume=True)
        res = read_results(run_dir)
        self.run.log(f"[{dataset}] CGN ({kind}) ready: mask mean {res.get('mask_mean', float('nan')):.3f}, "
                     f"style features {res.get('feature_extractor', {}).get('kind', '?')}", echo=False)
        return Path(res["checkpoint"]), False, run_dir

    def generated(self, dataset: str, kind: str, ckpt: Path, reference: bool, n: int,
                  counterfactual: bool) -> Path:
        from cgn.mnist.model import load_generator
        out = self.out / dataset / kind / f"{'cf' if counterfactual else 'gan'}-{n}"
        gcfg = GenerateConfig(n=n, cf_ratio=self.cfg.cf_ratio, seed=self.cfg.seed,
                              counterfactual=counterfactual, precision=self.cfg.precision)
        try:
            CounterfactualSet(out)
            return out
        except CGNError:
            pass
        model, info = load_generator(ckpt, reference_format=reference)
        t0 = time.perf_counter()
        generate(model, gcfg, out, source=checkpoint_source(ckpt, info), log=lambda m: self.run.log(m))
        self.run.log(f"[{dataset}] generated {n:,} {'counterfactual' if counterfactual else 'plain'} "
                     f"images in {time.perf_counter() - t0:.0f} s -> {out.relative_to(self.out)}")
        return out

    def classifier_dir(self, dataset: str, kind: str | None, train_set: str, n: int) -> Path:
        return self.out / dataset / (kind or "real") / (f"clf-{train_set}" + (f"-{n}" if train_set != "real" else ""))

    def classifier(self, dataset: str, kind: str | None, train_set: str, generated: Path | None,
                   n: int) -> dict:
        out = self.classifier_dir(dataset, kind, train_set, n)
        done = read_results(out)
        if done is not None:
            return done
        ccfg = ClassifierConfig(dataset=dataset, train_set=train_set,
                                generated=None if generated is None else str(generated),
                                epochs=self.cfg.epochs, seed=self.cfg.seed, data_seed=self.cfg.data_seed,
                                textures=self.textures(dataset),
                                threads=self.cfg.threads, limit_real=self.cfg.limit_real,
                                limit_test=self.cfg.limit_test)
        t0 = time.perf_counter()
        res = train_classifier(ccfg, out, resume=True)
        self.run.log(f"[{dataset}] classifier {train_set} ({kind or 'no CGN'}, n={n:,}): train "
                     f"{res['train_acc']:.2f} / OOD test {res['test_acc']:.2f} "
                     f"({time.perf_counter() - t0:.0f} s)")
        return res

    def row(self, dataset: str, kind: str | None, train_set: str, n: int, res: dict) -> dict:
        return {"dataset": dataset, "cgn": kind if kind in ("pretrained", "reference", "trained") else (kind or None),
                "train_set": train_set, "n_counterfactuals": 0 if train_set == "real" else int(n),
                "train_acc": round(float(res["train_acc"]), 2), "test_acc": round(float(res["test_acc"]), 2),
                "command": self.command}

    # -- the whole run -----------------------------------------------------------------------
    def run_dataset(self, dataset: str) -> list[dict]:
        """Every step for one dataset (each skipped when its output is complete); its table rows."""
        cfg = self.cfg
        kinds = [cfg.cgn] + (["trained+ssim"] if cfg.ssim_weight is not None else [])
        n = cfg.n_counterfactuals
        rows: list[dict] = []
        self.run.log(f"[{dataset}] start", echo=False)
        if "real" in cfg.train_sets:
            rows.append(self.row(dataset, None, "real", 0, self.classifier(dataset, None, "real", None, 0)))
        for kind in kinds:
            ckpt, ref, cgn_dir = self.cgn_checkpoint(dataset, kind)
            if cgn_dir is not None and kind == cfg.cgn:
                tl = cgn_dir / "samples" / "mask_timeline.png"
                if tl.exists():
                    shutil.copyfile(tl, self.out / f"mask_timeline_{dataset}.png")
            sets = [t for t in cfg.train_sets if t != "real"] if kind == cfg.cgn else ["real+cf"]
            for ts in sets:
                gen = self.generated(dataset, kind, ckpt, ref, n, counterfactual=ts != "real+gan")
                res = self.classifier(dataset, kind, ts, gen, n)
                rows.append(self.row(dataset, kind, ts, n, res))
            if kind == cfg.cgn:
                self.samples_figure(dataset, self.generated(dataset, kind, ckpt, ref, n, True)
                                    if any(t in ("real+cf", "cf") for t in sets) else None)
            for size in cfg.ablation_sizes if kind == cfg.cgn else []:
                gen = self.generated(dataset, kind, ckpt, ref, size, True)
                res = self.classifier(dataset, kind, "real+cf", gen, size)
                rows.append({**self.row(dataset, kind, "real+cf", size, res), "ablation": "n_counterfactuals"})
        return rows

    def run_all(self) -> list[dict]:
        self.check_style_features()
        workers = min(self.cfg.jobs, len(self.cfg.datasets))
        if workers <= 1:
            for dataset in self.cfg.datasets:
                self.rows.extend(self.run_dataset(dataset))
                self.write_tables()
        else:
            self._run_parallel(workers)
        self.write_tables()
        return self.rows

    def _run_parallel(self, workers: int) -> None:
        """One dataset per worker process; tables are rewritten as datasets finish. A failed dataset
        does not stop the others: their rows are written, then the first failure is raised."""
        threads = self.cfg.threads or max(1, (os.cpu_count() or 1) // workers)
        self.run.log(f"running {len(self.cfg.datasets)} datasets in {workers} worker processes, "
                     f"{threads} torch thread(s) each")
        done: dict[str, list[dict]] = {}

        def on_done(dataset: str, rows: list[dict] | None, error: BaseException | None) -> None:
            if error is None:
                done[dataset] = rows
            else:
                self.run.log(f"[{dataset}] failed: {error}")
            self.rows = [r for d in self.cfg.datasets if d in done for r in done[d]]
            self.write_tables()

        share_with_children(self.out)  # the workers write into this run under its lock
        run_in_workers(_run_dataset_in_worker, {d: (self.cfg, str(self.out), self.command, d)
                                                for d in self.cfg.datasets}, workers, threads, on_done)

    # -- outputs -------------------------------------------------------------------------------
    def write_tables(self) -> None:
        tables.write_tables(self.out, self.rows, self.command, self.cfg.ssim_weight)
        tables.write_epoch_curves(self.out, self.epoch_curves())

    def epoch_curves(self) -> list[dict]:
        """The OOD accuracy after each epoch of table 3's classifiers (their eval lines)."""
        curves = []
        for r in self.rows:
            if "ablation" in r or r["cgn"] == "trained+ssim":
                continue
            lines = read_jsonl(self.classifier_dir(r["dataset"], r["cgn"], r["train_set"],
                                                   r["n_counterfactuals"]) / "metrics.jsonl")
            pts = [(m["epoch"], m["eval/test_acc"]) for m in lines if "eval/test_acc" in m]
            if pts:
                curves.append({**{k: r[k] for k in ("dataset", "cgn", "train_set", "n_counterfactuals")},
                               "epochs": [e for e, _ in pts], "test_acc": [a for _, a in pts]})
        return curves

    def samples_figure(self, dataset: str, generated: Path | None) -> None:
        from cgn.mnist.preview import make_grid, save_png, stack_vertical, titled
        real = variants.load_split(dataset, "train", seed=self.cfg.data_seed,
                                   textures=self.textures(dataset))
        panels = [titled(make_grid(real["images"][:20], 10), f"{dataset}: real training images", 2)]
        if generated is not None:
            ds = CounterfactualSet(generated)
            panels.append(titled(make_grid(ds.images(np.arange(min(20, len(ds)))), 10),
                                 f"counterfactuals ({self.cfg.cgn} CGN): shape label per group of "
                                 f"{self.cfg.cf_ratio}", 2))
        save_png(self.out / f"samples_{dataset}.png", stack_vertical(panels))


def _run_dataset_in_worker(cfg: ReproduceConfig, out: str, command: str, dataset: str) -> list[dict]:
    return Reproduction(cfg, out, command).run_dataset(dataset)


def quick_config(**overrides) -> ReproduceConfig:
    return replace(ReproduceConfig(**QUICK), **overrides)
