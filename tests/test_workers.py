"""cgn.core.workers: tasks in spawned worker processes, failures reported in task order, and a
SIGTERM to the parent unwinding the tasks in flight like Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from cgn.core.workers import run_in_workers

SRC = Path(__file__).resolve().parents[1] / "src"


def _task(x: int, delay: float) -> dict:
    import torch
    time.sleep(delay)
    if x < 0:
        raise ValueError(f"task {x} failed")
    return {"value": x * 10, "threads": torch.get_num_threads(), "pid": os.getpid(),
            "progress": os.environ.get("CGN_PROGRESS")}


def test_results_come_back_from_other_processes_and_the_first_failure_in_task_order_is_raised(monkeypatch):
    monkeypatch.delenv("CGN_PROGRESS", raising=False)
    seen: dict[str, tuple] = {}

    def on_done(key, result, error):
        seen[key] = (result, error)

    # "late" fails after "early" has failed: the error raised is the one of the earlier task.
    tasks = {"a": (1, 0.0), "late": (-1, 1.5), "early": (-2, 0.0), "b": (2, 0.0)}
    with pytest.raises(ValueError, match="task -1 failed"):
        run_in_workers(_task, tasks, workers=2, threads=2, on_done=on_done)
    assert set(seen) == set(tasks)  # the other tasks ran to the end
    for key, value in (("a", 10), ("b", 20)):
        result, error = seen[key]
        assert error is None and result["value"] == value
        assert result["threads"] == 2 and result["pid"] != os.getpid()
        assert result["progress"] == "0"  # no progress bars from workers sharing a terminal
    assert seen["early"][0] is None and str(seen["early"][1]) == "task -2 failed"
    assert "CGN_PROGRESS" not in os.environ


def test_sigterm_to_the_parent_unwinds_the_running_tasks(tmp_path):
    (tmp_path / "sigterm_job.py").write_text(textwrap.dedent("""
        import sys, time
        from pathlib import Path
        from cgn.core.workers import run_in_workers

        def task(folder, name):
            Path(folder, name + ".started").touch()
            try:
                time.sleep(120)
            finally:  # what a trainer does on KeyboardInterrupt: save, then leave
                Path(folder, name + ".saved").touch()

        if __name__ == "__main__":
            try:
                run_in_workers(task, {n: (sys.argv[1], n) for n in ("x", "y")}, 2, 1,
                               lambda *a: None)
            except KeyboardInterrupt:
                sys.exit(130)
    """))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), str(tmp_path)])}
    proc = subprocess.Popen([sys.executable, str(tmp_path / "sigterm_job.py"), str(tmp_path)], env=env)
    try:
        deadline = time.monotonic() + 120
        while not all((tmp_path / f"{n}.started").exists() for n in "xy"):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
    assert all((tmp_path / f"{n}.saved").exists() for n in "xy")
