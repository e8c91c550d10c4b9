"""Run independent tasks of a pipeline in worker processes (``cgn reproduce mnist --jobs N``).

:func:`run_in_workers` starts the workers with the ``spawn`` context (never ``fork``: torch's
threads and locks do not survive a fork), each with its own number of torch threads, and calls
back in the parent as each task finishes. A failed task does not stop the others; once all have
finished, the first failure in task order is raised.

Stopping: in the parent, SIGTERM stops the run like Ctrl-C. Either way the parent sends SIGTERM
to its workers; a worker inside a task unwinds like Ctrl-C (a trainer saves its checkpoint) and
exits, an idle one exits at once. Workers ignore SIGINT, which a terminal sends to the whole
process group: the parent alone decides when they stop.

Workers that write into a locked run directory need the parent to call
:func:`cgn.core.lock.share_with_children` first.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable, Hashable

from cgn.core.interrupt import restore_sigterm, sigterm_as_interrupt
from cgn.errors import CGNError


def run_in_workers(fn: Callable[..., Any], tasks: dict[Hashable, tuple], workers: int, threads: int,
                   on_done: Callable[[Hashable, Any, BaseException | None], None]) -> None:
    """Run ``fn(*args)`` for each ``key: args`` of ``tasks`` in up to ``workers`` processes with
    ``threads`` torch threads each. ``fn`` must be a module-level function (it is pickled by name).
    ``on_done(key, result, error)`` runs in the parent as each task finishes (``error`` is None on
    success); afterwards the first failed task's error, in the order of ``tasks``, is raised."""
    failed: dict[Hashable, BaseException] = {}
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_worker_init, initargs=(threads,))
    previous = sigterm_as_interrupt()  # in the parent: SIGTERM stops the workers like Ctrl-C
    try:
        futures = {pool.submit(_worker_run, fn, args): key for key, args in tasks.items()}
        pending = set(futures)
        while pending:
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for fut in finished:
                key = futures[fut]
                result = None
                try:
                    result = fut.result()
                except BrokenProcessPool:
                    failed[key] = CGNError(
                        f"a worker process died (out of memory?) before {key} finished; finished "
                        "steps are kept: rerun the same command to resume (perhaps with fewer --jobs)")
                except Exception as e:  # noqa: BLE001 - raised below, after the others finish
                    failed[key] = e
                on_done(key, result, failed.get(key))
    except BaseException:  # Ctrl-C or SIGTERM: let the workers checkpoint and stop
        _stop_workers(pool)
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        restore_sigterm(previous)
    for key in tasks:
        if key in failed:
            raise failed[key]


# -- inside a worker process ------------------------------------------------------------------------
_in_task = False


def _worker_sigterm(signum, frame):
    # Inside a task: unwind like Ctrl-C (a trainer saves a checkpoint). Idle: just exit.
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


def _worker_run(fn: Callable[..., Any], args: tuple) -> Any:
    global _in_task
    _in_task = True
    try:
        return fn(*args)
    except KeyboardInterrupt:
        sys.stderr.flush()
        os._exit(130)  # stopped by the parent: do not go on to another task
    finally:
        _in_task = False


def _stop_workers(pool: ProcessPoolExecutor) -> None:
    for p in list((getattr(pool, "_processes", None) or {}).values()):
        if p.is_alive():
            p.terminate()
