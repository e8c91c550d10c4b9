"""Merge the tables of `cgn reproduce mnist` run directories into results/mnist/.

    python scripts/collect_results.py RUN_DIR [RUN_DIR ...] --out results/mnist

Rows are merged by (dataset, cgn, train_set, n_counterfactuals); a later run directory wins.
Ablation rows (number of counterfactuals) are merged the same way into one table and one plot.
Figures (samples_*.png, mask_timeline_*.png, table4.*) are copied alongside, and table3.md lists
every command that produced a row.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from cgn.io import write_json_atomic, write_text_atomic
from cgn.mnist.reproduce import ablation_markdown, ablation_plot, table3_markdown


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, default=Path("results/mnist"))
    ap.add_argument("--machine", default="", help="a line describing the machine, for the notes")
    a = ap.parse_args()
    rows: dict[tuple, dict] = {}
    ablation: dict[tuple, dict] = {}
    for run in a.runs:
        for r in json.loads((run / "table3.json").read_text()):
            rows[(r["dataset"], r["cgn"], r["train_set"], r["n_counterfactuals"])] = r
        abl = run / "ablation_n_counterfactuals.json"
        for r in json.loads(abl.read_text()) if abl.exists() else []:
            ablation[(r["dataset"], r["cgn"], r["n_counterfactuals"])] = r
        # figures are named by the CGN they show, so runs with different CGNs do not overwrite
        kind = json.loads((run / "config.json").read_text()).get("config", {}).get("cgn", "")
        for png in list(run.glob("samples_*.png")) + list(run.glob("mask_timeline_*.png")) + \
                list(run.glob("table4.*")):
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
