"""The tables of ``cgn reproduce mnist``: our rows beside the published numbers (Markdown), the
number-of-counterfactuals ablation (Markdown and plot), and the SSIM-loss ablation (Table 4).

A row is ``{dataset, cgn, train_set, n_counterfactuals, train_acc, test_acc, command}`` (accuracies
in percent); ablation rows also carry ``"ablation": "n_counterfactuals"``. ``scripts/collect_results.py``
merges the rows of several run directories and writes them with the same functions.

:func:`write_epoch_curves`: the OOD test accuracy after every classifier epoch
(``ood_accuracy_per_epoch.{json,png}``), from the classifiers' ``metrics.jsonl``.
"""

from __future__ import annotations

from pathlib import Path

from cgn.io import write_json_atomic, write_text_atomic
from cgn.mnist import published


def write_tables(out: Path, rows: list[dict], command: str, ssim_weight: float | None) -> None:
    """table3.{json,md}, and when they have rows ablation_n_counterfactuals.{json,md,png} and
    table4.{json,md} (runs with an SSIM weight)."""
    main = [r for r in rows if "ablation" not in r and r["cgn"] != "trained+ssim"]
    write_json_atomic(out / "table3.json", main)
    write_text_atomic(out / "table3.md", table3_markdown(main, command))
    abl = [r for r in rows if r.get("ablation") == "n_counterfactuals"]
    if abl:
        write_json_atomic(out / "ablation_n_counterfactuals.json", abl)
        write_text_atomic(out / "ablation_n_counterfactuals.md", ablation_markdown(abl))
        ablation_plot(abl, out / "ablation_n_counterfactuals.png")
    ssim = [r for r in rows if r["train_set"] == "real+cf" and "ablation" not in r]
    if ssim_weight is not None and ssim:
        write_json_atomic(out / "table4.json", ssim)
        write_text_atomic(out / "table4.md", table4_markdown(ssim, ssim_weight))


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
    fig, ax = _pyplot().subplots(figsize=(5, 3.5))
    for d in sorted({r["dataset"] for r in rows}):
        pts = sorted((r["n_counterfactuals"], r["test_acc"]) for r in rows if r["dataset"] == d)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=d)
    ax.set_xscale("log")
    ax.set_xlabel("counterfactual images")
    ax.set_ylabel("OOD test accuracy (%)")
    ax.legend()
    ax.grid(alpha=0.3)
    _save_figure(fig, path)


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save_figure(fig, path: Path) -> None:
    from cgn.io import atomic_write
    fig.tight_layout()
    with atomic_write(path) as f:
        fig.savefig(f, format="png", dpi=120)
    _pyplot().close(fig)


def write_epoch_curves(out: Path, curves: list[dict]) -> None:
    """``ood_accuracy_per_epoch.json`` (the curves: ``{dataset, cgn, train_set,
    n_counterfactuals, epochs, test_acc}``) and ``.png`` (one line per dataset and training set:
    colour = dataset, line style = training set); nothing when there are no curves."""
    if not curves:
        return
    write_json_atomic(out / "ood_accuracy_per_epoch.json", curves)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4))
    colours = {d: f"C{i}" for i, d in enumerate(sorted({c["dataset"] for c in curves}))}
    styles = dict(zip(SET_NAMES, ("-", ":", "--", "-.")))
    for c in curves:
        ax.plot(c["epochs"], c["test_acc"], marker="o", markersize=3, color=colours[c["dataset"]],
                linestyle=styles.get(c["train_set"], "-"),
                label=f"{c['dataset']}: {SET_NAMES.get(c['train_set'], c['train_set'])}")
    ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
    ax.set_xlabel("classifier epoch")
    ax.set_ylabel("OOD test accuracy (%)")
    ax.set_title("OOD test accuracy after each classifier epoch", fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(alpha=0.3)
    _save_figure(fig, out / "ood_accuracy_per_epoch.png")


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
