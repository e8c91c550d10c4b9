"""The results file of a run directory: ``results.json``, what a finished run reports.

Every trainer (``cgn train-cgn``, ``cgn classify``, ``cgn imagenet-classifier train``) writes it
last, so its presence marks a finished run. Run directories written before the name was shared
hold it as ``result.json`` (``cgn classify``) or ``final_metrics.json`` (the ImageNet
classifier); :func:`read_results` reads those too.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from cgn.errors import CGNError
from cgn.io import write_json_atomic

RESULTS_FILE = "results.json"
OLD_NAMES = ("result.json", "final_metrics.json")  # earlier runs' names, read but never written


def write_results(run_dir: str | os.PathLike, results: dict) -> Path:
    """Write ``results`` (atomically) as the run's ``results.json``; returns its path."""
    path = Path(run_dir) / RESULTS_FILE
    write_json_atomic(path, results)
    return path


def results_path(run_dir: str | os.PathLike) -> Path | None:
    """The run's results file (``results.json``, else an old name), or None before it is done."""
    for name in (RESULTS_FILE, *OLD_NAMES):
        path = Path(run_dir) / name
        if path.is_file():
            return path
    return None


def read_results(run_dir: str | os.PathLike) -> dict | None:
    """The results of a finished run, or None when the run has written none (yet)."""
    path = results_path(run_dir)
    if path is None:
        return None
    try:
        results = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        results = None
    if not isinstance(results, dict):
        raise CGNError(f"{path} is damaged (not a JSON object); delete it and rerun the run's "
                       "command with --resume to write it again")
    return results
