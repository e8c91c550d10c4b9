"""Merge the tables of `cgn reproduce mnist` run directories into results/mnist/.

    python scripts/collect_results.py RUN_DIR [RUN_DIR ...] --out results/mnist

Rows are merged by (dataset, cgn, train_set, n_counterfactuals); a later run directory wins.
Ablation rows (number of counterfactuals) are merged the same way into one table and one plot.
SSIM-ablation rows (table4.json of runs made with --ssim-weight) are merged by (dataset, cgn) into
one table4.json / table4.md. Figures (samples_*.png, mask_timeline_*.png) are copied alongside,
and table3.md lists every command that produced a row. Put runs whose table3 rows should lose
(e.g. SSIM-ablation runs that reuse another run's classifiers) first.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from cgn.io import write_json_atomic, write_text_atomic
from cgn.mnist.tables import ablation_markdown, ablation_plot, table3_markdown, table4_markdown


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, default=Path("results/mnist"))
    ap.add_argument("--machine", default="", help="a line describing the machine, for the notes")
    a = ap.parse_args()
    rows: dict[tuple, dict] = {}
    ablation: dict[tuple, dict] = {}
    ssim: dict[tuple, dict] = {}
    ssim_weights: set[float] = set()
    for run in a.runs:
        for r in json.loads((run / "table3.json").read_text()):
            rows[(r["dataset"], r["cgn"], r["train_set"], r["n_counterfactuals"])] = r
        abl = run / "ablation_n_counterfactuals.json"
        for r in json.loads(abl.read_text()) if abl.exists() else []:
            ablation[(r["dataset"], r["cgn"], r["n_counterfactuals"])] = r
        run_cfg = json.loads((run / "config.json").read_text()).get("config", {})
        t4 = run / "table4.json"
        for r in json.loads(t4.read_text()) if t4.exists() else []:
            ssim[(r["dataset"], r["cgn"])] = r
            ssim_weights.add(float(run_cfg["ssim_weight"]))
        # figures are named by the CGN they show, so runs with different CGNs do not overwrite
        kind = run_cfg.get("cgn", "")
        for png in list(run.glob("samples_*.png")) + list(run.glob("mask_timeline_*.png")):
            a.out.mkdir(parents=True, exist_ok=True)
            name = png.name
            if kind and png.name.startswith("samples_"):
                name = f"{png.stem}_{kind}{png.suffix}"
            shutil.copyfile(png, a.out / name)
    if ablation:
        abl_rows = sorted(ablation.values(), key=lambda r: (r["dataset"], str(r["cgn"]), r["n_counterfactuals"]))
        write_json_atomic(a.out / "ablation_n_counterfactuals.json", abl_rows)
        write_text_atomic(a.out / "ablation_n_counterfactuals.md", ablation_markdown(abl_rows))
        ablation_plot(abl_rows, a.out / "ablation_n_counterfactuals.png")
    if ssim:
        if len(ssim_weights) != 1:
            raise SystemExit(f"SSIM-ablation runs with different weights {sorted(ssim_weights)}; collect one")
        t4_rows = sorted(ssim.values(), key=lambda r: (r["dataset"], str(r["cgn"])))
        write_json_atomic(a.out / "table4.json", t4_rows)
        t4_md = table4_markdown(t4_rows, ssim_weights.pop())
        t4_cmds = sorted({r["command"] for r in t4_rows})
        t4_md += "\nCommands:\n\n" + "\n".join(f"- `{c}`" for c in t4_cmds) + "\n"
        write_text_atomic(a.out / "table4.md", t4_md)
    merged = sorted(rows.values(), key=lambda r: (r["dataset"], str(r["cgn"]), r["train_set"], r["n_counterfactuals"]))
    write_json_atomic(a.out / "table3.json", merged)
    md = table3_markdown(merged, "see below")
    cmds = sorted({r["command"] for r in merged})
    md = md.replace("Command: `see below`", "Commands:\n\n" + "\n".join(f"- `{c}`" for c in cmds))
    if a.machine:
        md += f"\nMachine: {a.machine}\n"
    write_text_atomic(a.out / "table3.md", md)
    print(md)


if __name__ == "__main__":
    main()
