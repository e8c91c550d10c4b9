"""``cgn reproduce mnist``: the paper's MNIST table (SPEC §9) in one command, resumable.

For each dataset: get a CGN (the authors' checkpoint, or train one with the preset recipe),
generate the counterfactual set (and the plain-GAN set when "real+gan" is asked for), train the
classifier on each training set, and write into the run directory:

    config.json, log.txt                 the resolved config and what ran
    table3.json / table3.md              our rows beside the published ones
    samples_<dataset>.png                real training images vs counterfactuals
    mask_timeline_<dataset>.png          masks of fixed noise through CGN training (trained CGNs)
    ablation_n_counterfactuals.{json,md,png}   OOD accuracy vs number of counterfactuals (option)
    table4.json / table4.md              the SSIM-loss ablation (option)
    <dataset>/<cgn>/...                  the CGN run, generated sets and classifier runs

Every step whose output is complete is skipped, so rerunning the same command resumes.

With ``jobs > 1`` the datasets run concurrently, one per worker process (spawned, never forked),
each with ``threads`` torch threads (default: the CPU count divided by the number of workers);
the parent writes the tables from the rows each worker returns, in the order of ``datasets``.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import signal
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np

from cgn.config import check
from cgn.core.interrupt import restore_sigterm, sigterm_as_interrupt
from cgn.core.lock import share_with_children
from cgn.core.results import read_results, results_path
from cgn.core.rundir import RunDir
from cgn.errors import CGNError
from cgn.io import write_json_atomic, write_text_atomic
from cgn.mnist import published, variants
from cgn.mnist.classify import TRAIN_SETS, ClassifierConfig, train_classifier
from cgn.mnist.counterfactuals import CounterfactualSet, GenerateConfig, checkpoint_source, generate

REFERENCE_FILES = {"colored-mnist": "colored_mnist.pth", "double-colored-mnist": "double_colored_mnist.pth",
                   "wildlife-mnist": "wildlife_mnist.pth"}


@dataclass
class ReproduceConfig:
    datasets: list[Literal["colored-mnist", "double-colored-mnist", "wildlife-mnist"]] = field(
        default_factory=lambda: list(variants.VARIANTS), metadata={"help": "datasets to reproduce"})
    cgn: Literal["reference", "trained"] = field(default="trained", metadata={
        "help": "trained: train a CGN per dataset with the preset recipe; reference: the "
                "authors' CGNs from reference_dir"})
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
    precision: Literal["bf16", "fp32"] = field(default="bf16", metadata={
        "help": "precision of the counterfactual generation: bf16 autocast or fp32"})
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
    threads: int = field(default=0, metadata={"resume": "free",
        "help": "torch CPU threads per process (0: torch's default; with jobs > 1: the CPU count "
                "divided by the number of worker processes)"})
    jobs: int = field(default=1, metadata={"resume": "free",
        "help": "run the datasets concurrently in up to N worker processes. The small MNIST models "
                "use many cores better this way than with more threads; results equal 1 job at "
                "the same thread count. jobs and threads may change when resuming"})
    limit_real: int | None = field(default=None, metadata={
        "help": "use only the first N real training images (smoke tests, probes)"})

    def __post_init__(self):
        for d in self.datasets:
            check(d in variants.VARIANTS, f"unknown dataset {d!r}; choose from {', '.join(variants.VARIANTS)}")
        for t in self.train_sets:
            check(t in TRAIN_SETS, f"unknown train set {t!r}; choose from {', '.join(TRAIN_SETS)}")
        check(self.cgn != "reference" or self.reference_dir is not None,
              "--cgn reference needs the folder with the authors' checkpoints: --cgn reference DIR")
        check(self.n_counterfactuals >= 1 and self.cf_ratio >= 1, "n_counterfactuals and cf_ratio must be >= 1")
        check(all(s >= 1 for s in self.ablation_sizes), "ablation sizes must be >= 1")
        check(self.ssim_weight is None or self.ssim_weight > 0, "ssim_weight must be > 0")
        check(self.jobs >= 1, f"jobs must be >= 1, got {self.jobs}")
        check(self.threads >= 0, f"threads must be >= 0, got {self.threads}")
        for d in self.cgn_runs:
            check(d in variants.VARIANTS, f"--cgn-run: unknown dataset {d!r}")


# The main job of the README: a quick Colored-MNIST run that finishes in under 15 minutes on 2 cores.
QUICK = {"datasets": ["colored-mnist"], "cgn": "trained", "cgn_steps": 1500, "n_counterfactuals": 20_000,
         "train_sets": ["real", "real+cf"], "epochs": 2}


class Reproduction:
    def __init__(self, cfg: ReproduceConfig, out: str | Path, command: str, resume: bool = True):
        self.cfg, self.out, self.command = cfg, Path(out), command
        for dataset, run_dir in cfg.cgn_runs.items():  # fail before any work, not halfway
            if results_path(run_dir) is None:
                raise CGNError(f"--cgn-run {dataset}={run_dir}: no results.json there; finish that "
                               "`cgn train-cgn` run first (rerun it with --resume)")
        for dataset in cfg.datasets if cfg.cgn == "reference" else []:
            path = Path(cfg.reference_dir) / REFERENCE_FILES[dataset]
            if not path.is_file():
                raise CGNError(f"{path} not found; --cgn reference DIR needs {REFERENCE_FILES[dataset]} in DIR")
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

    # -- steps ---------------------------------------------------------------------------------
    def cgn_checkpoint(self, dataset: str, kind: str) -> tuple[Path, bool, Path | None]:
        """(checkpoint, is_reference_format, CGN run dir or None) for kind reference|trained|trained+ssim."""
        if kind == "reference":
            path = Path(self.cfg.reference_dir) / REFERENCE_FILES[dataset]
            if not path.is_file():
                raise CGNError(f"{path} not found; --cgn reference DIR needs {REFERENCE_FILES[dataset]} in DIR")
            return path, True, None
        if kind == "trained" and dataset in self.cfg.cgn_runs:
            run_dir = Path(self.cfg.cgn_runs[dataset])
            res = read_results(run_dir)
            if res is None:
                raise CGNError(f"--cgn-run {dataset}={run_dir}: no results.json there; finish that "
                               "`cgn train-cgn` run first (rerun it with --resume)")
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
        if dataset == "wildlife-mnist" and self.cfg.textures is not None:
            changes["train.textures"] = self.cfg.textures
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

    def classifier(self, dataset: str, kind: str | None, train_set: str, generated: Path | None,
                   n: int) -> dict:
        name = f"clf-{train_set}" + (f"-{n}" if train_set != "real" else "")
        out = self.out / dataset / (kind or "real") / name
        done = read_results(out)
        if done is not None:
            return done
        ccfg = ClassifierConfig(dataset=dataset, train_set=train_set,
                                generated=None if generated is None else str(generated),
                                epochs=self.cfg.epochs, seed=self.cfg.seed, data_seed=self.cfg.data_seed,
                                textures=self.cfg.textures if dataset == "wildlife-mnist" else None,
                                threads=self.cfg.threads, limit_real=self.cfg.limit_real)
        t0 = time.perf_counter()
        res = train_classifier(ccfg, out, resume=True)
        self.run.log(f"[{dataset}] classifier {train_set} ({kind or 'no CGN'}, n={n:,}): train "
                     f"{res['train_acc']:.2f} / OOD test {res['test_acc']:.2f} "
                     f"({time.perf_counter() - t0:.0f} s)")
        return res

    def row(self, dataset: str, kind: str | None, train_set: str, n: int, res: dict) -> dict:
        return {"dataset": dataset, "cgn": kind if kind in ("reference", "trained") else (kind or None),
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
        failed: dict[str, BaseException] = {}
        share_with_children(self.out)  # the workers write into this run under its lock
        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_worker_init, initargs=(threads,))
        previous = sigterm_as_interrupt()  # in the parent: SIGTERM stops the workers like Ctrl-C
        try:
            futures = {pool.submit(_worker_run_dataset, self.cfg, str(self.out), self.command, d): d
                       for d in self.cfg.datasets}
            pending = set(futures)
            while pending:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in finished:
                    dataset = futures[fut]
                    try:
                        done[dataset] = fut.result()
                    except BrokenProcessPool:
                        failed[dataset] = CGNError(
                            f"a worker process died (out of memory?) before {dataset} finished; finished "
                            "steps are kept: rerun the same command to resume (perhaps with fewer --jobs)")
                    except Exception as e:  # noqa: BLE001 - reported below, after the others finish
                        failed[dataset] = e
                    if dataset in failed:
                        self.run.log(f"[{dataset}] failed: {failed[dataset]}")
                self.rows = [r for d in self.cfg.datasets if d in done for r in done[d]]
                self.write_tables()
        except BaseException:  # Ctrl-C or SIGTERM: let the workers checkpoint and stop
            _stop_workers(pool)
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            restore_sigterm(previous)
        for dataset in self.cfg.datasets:
            if dataset in failed:
                raise failed[dataset]

    # -- outputs -------------------------------------------------------------------------------
    def samples_figure(self, dataset: str, generated: Path | None) -> None:
        from cgn.mnist.preview import make_grid, save_png, stack_vertical, titled
        real = variants.load_split(dataset, "train", seed=self.cfg.data_seed,
                                   textures=self.cfg.textures if dataset == "wildlife-mnist" else None)
        panels = [titled(make_grid(real["images"][:20], 10), f"{dataset}: real training images", 2)]
        if generated is not None:
            ds = CounterfactualSet(generated)
            panels.append(titled(make_grid(ds.images(np.arange(min(20, len(ds)))), 10),
                                 f"counterfactuals ({self.cfg.cgn} CGN): shape label per group of "
                                 f"{self.cfg.cf_ratio}", 2))
        save_png(self.out / f"samples_{dataset}.png", stack_vertical(panels))

    def write_tables(self) -> None:
        main = [r for r in self.rows if "ablation" not in r and r["cgn"] != "trained+ssim"]
        write_json_atomic(self.out / "table3.json", main)
        write_text_atomic(self.out / "table3.md", table3_markdown(main, self.command))
        abl = [r for r in self.rows if r.get("ablation") == "n_counterfactuals"]
        if abl:
            write_json_atomic(self.out / "ablation_n_counterfactuals.json", abl)
            write_text_atomic(self.out / "ablation_n_counterfactuals.md", ablation_markdown(abl))
            ablation_plot(abl, self.out / "ablation_n_counterfactuals.png")
        ssim = [r for r in self.rows if r["train_set"] == "real+cf" and "ablation" not in r]
        if self.cfg.ssim_weight is not None and ssim:
            write_json_atomic(self.out / "table4.json", ssim)
            write_text_atomic(self.out / "table4.md", table4_markdown(ssim, self.cfg.ssim_weight))


# -- worker processes (jobs > 1) -------------------------------------------------------------------
_in_task = False


def _worker_sigterm(signum, frame):
    # Inside a dataset: unwind like Ctrl-C (the CGN trainer saves a checkpoint). Idle: just exit.
    if _in_task:
        raise KeyboardInterrupt
    os._exit(128 + signum)


def _worker_init(threads: int) -> None:
    import torch
    torch.set_num_threads(threads)
    # The parent stops workers with SIGTERM; a terminal's Ctrl-C reaches the parent only once.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _worker_sigterm)
    if os.environ.get("CGN_PROGRESS", "auto") == "auto":
        os.environ["CGN_PROGRESS"] = "0"  # several progress bars on one terminal garble it; log lines remain


def _worker_run_dataset(cfg: ReproduceConfig, out: str, command: str, dataset: str) -> list[dict]:
    global _in_task
    _in_task = True
    try:
        return Reproduction(cfg, out, command).run_dataset(dataset)
    except KeyboardInterrupt:
        sys.stderr.flush()
        os._exit(130)  # stopped by the parent: do not go on to another dataset
    finally:
        _in_task = False


def _stop_workers(pool) -> None:
    for p in list((getattr(pool, "_processes", None) or {}).values()):
        if p.is_alive():
            p.terminate()


def _fmt(v) -> str:
    return "?" if v is None else f"{v:.2f}".rstrip("0").rstrip(".") if isinstance(v, float) else str(v)


SET_NAMES = {"real": "Original", "real+gan": "Original + GAN", "real+cf": "Original + CGN", "cf": "CGN only"}


def table3_markdown(rows: list[dict], command: str) -> str:
    ds = [d for d in published.DATASETS if any(r["dataset"] == d for r in rows)]
    head = "| training data | source | " + " | ".join(ds) + " |\n|---|---|" + "---|" * len(ds) + "\n"
    lines = []
    for (source, ts), vals in published.PUBLISHED.items():
        cells = [f"{_fmt(vals[d][0])} / {_fmt(vals[d][1])}" for d in ds]
        lines.append(f"| {SET_NAMES[ts]} | {source} | " + " | ".join(cells) + " |")
    keys = []
    for r in rows:
        k = (r["train_set"], r["cgn"], r["n_counterfactuals"])
        if k not in keys:
            keys.append(k)
    for ts, cgn, n in keys:
        cells = []
        for d in ds:
            hit = [r for r in rows if (r["train_set"], r["cgn"], r["n_counterfactuals"], r["dataset"]) == (ts, cgn, n, d)]
            cells.append(f"**{_fmt(hit[0]['train_acc'])} / {_fmt(hit[0]['test_acc'])}**" if hit else "–")
        src = "cgn (this run)" + (f", {cgn} CGN, {n:,} images" if cgn else "")
        lines.append(f"| {SET_NAMES[ts]} | {src} | " + " | ".join(cells) + " |")
    return ("# MNIST: train / OOD-test accuracy (%)\n\n" + head + "\n".join(lines) +
            f"\n\nOurs in bold. Command: `{command}`\n")


def ablation_markdown(rows: list[dict]) -> str:
    out = "| dataset | CGN | counterfactuals | train acc | OOD test acc |\n|---|---|---|---|---|\n"
    for r in sorted(rows, key=lambda r: (r["dataset"], r["n_counterfactuals"])):
        out += f"| {r['dataset']} | {r['cgn']} | {r['n_counterfactuals']:,} | {r['train_acc']:.2f} | {r['test_acc']:.2f} |\n"
    return "# OOD accuracy vs number of counterfactuals (Original + CGN)\n\n" + out


def ablation_plot(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for d in sorted({r["dataset"] for r in rows}):
        pts = sorted((r["n_counterfactuals"], r["test_acc"]) for r in rows if r["dataset"] == d)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=d)
    ax.set_xscale("log")
    ax.set_xlabel("counterfactual images")
    ax.set_ylabel("OOD test accuracy (%)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    from cgn.io import atomic_write
    with atomic_write(path) as f:
        fig.savefig(f, format="png", dpi=120)
    plt.close(fig)


def table4_markdown(rows: list[dict], weight: float) -> str:
    ds = [d for d in published.DATASETS if any(r["dataset"] == d for r in rows)]
    out = "| CGN | " + " | ".join(ds) + " |\n|---|" + "---|" * len(ds) + "\n"
    for kind, label in (("reference", "authors' CGNs (study)"), ("trained", "own CGNs (study)")):
        out += f"| {label} | " + " | ".join(_fmt(published.STUDY_SSIM[kind][d]) for d in ds) + " |\n"
    for kind in sorted({r["cgn"] for r in rows}):
        cells = [next((_fmt(r["test_acc"]) for r in rows if r["cgn"] == kind and r["dataset"] == d), "–") for d in ds]
        label = f"{kind} (this run" + (f", SSIM weight {weight}" if kind == "trained+ssim" else "") + ")"
        out += f"| {label} | " + " | ".join(f"**{c}**" for c in cells) + " |\n"
    return "# SSIM-loss ablation: OOD test accuracy (%), Original + CGN\n\n" + out


def command_line(argv: list[str]) -> str:
    import shlex
    return "cgn " + shlex.join(argv)


def quick_config(**overrides) -> ReproduceConfig:
    return replace(ReproduceConfig(**QUICK), **overrides)
