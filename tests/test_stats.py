"""The log-window statistics shared by the trainers: means, DDP-ready pooling, exact resume."""

from __future__ import annotations

import math
import time

import torch

from cgn.core.distributed import DistInfo
from cgn.core.stats import WindowStats


def test_means_in_insertion_order_and_reset():
    w = WindowStats(every=3)
    steps = [{"g_adv": 0.1, "d_loss": 0.7}, {"g_adv": 0.2, "d_loss": 0.5}, {"g_adv": 0.3, "d_loss": 0.4}]
    for rec in steps:
        w.add(rec)
    assert w.steps == 3 and not w.empty
    time.sleep(0.01)
    out = w.flush()
    assert list(out.means) == ["g_adv", "d_loss"]
    # exactly the running sum divided by the count, as the trainers always logged it
    assert out.means["g_adv"] == (0.0 + 0.1 + 0.2 + 0.3) / 3
    assert out.means["d_loss"] == (0.0 + 0.7 + 0.5 + 0.4) / 3
    assert out.steps == 3 and out.seconds >= 0.01
    assert out.sec_per_step == out.seconds / 3
    assert w.empty and w.steps == 0
    assert w.flush().means == {} and w.flush().sec_per_step >= 0


def test_sum_count_pairs_and_tensors():
    w = WindowStats()
    w.add({"loss": (torch.tensor(2.0), 1), "acc": (torch.tensor(3), 4)})
    w.add({"loss": (torch.tensor(1.0), 1), "acc": (torch.tensor(1), torch.tensor(4))})
    w.add({"never": (5.0, 0)})
    means = w.flush(DistInfo()).means
    assert means["loss"] == 1.5 and means["acc"] == 0.5
    assert math.isnan(means["never"])


def test_ready_every_and_last():
    w = WindowStats(every=3)
    assert [s for s in range(1, 10) if w.ready(s)] == [3, 6, 9]
    assert w.ready(4, last=True) and not w.ready(4)
    assert WindowStats(every=0).every == 1


def _feed(w, values):
    for v in values:
        w.add({"loss": (torch.tensor(v), 1), "acc": (v / 3, 2)})


def test_state_dict_resumes_the_same_rows():
    values = [0.31, 0.27, 0.42, 0.18, 0.55]
    whole = WindowStats()
    _feed(whole, values)
    first = WindowStats()
    _feed(first, values[:2])
    state = first.state_dict()
    assert all(isinstance(x, float) for v in state.values() for x in v)
    resumed = WindowStats()
    resumed.load_state_dict(state, steps=first.steps)
    _feed(resumed, values[2:])
    assert resumed.flush().means == whole.flush().means


def test_running_sums_keep_the_mnist_checkpoint_form():
    rows = [{"g_style": 0.013, "mask_mean": 0.41}, {"g_style": 0.011, "mask_mean": 0.38},
            {"g_style": 0.017, "mask_mean": 0.35}]
    whole = WindowStats()
    for r in rows:
        whole.add(r)
    part = WindowStats()
    part.add(rows[0])
    # checkpoint extra: "sums" (name -> float) and "sum_count" (steps)
    sums, sum_count = part.running_sums(), part.steps
    assert sums == {"g_style": 0.013, "mask_mean": 0.41} and sum_count == 1
    resumed = WindowStats()
    resumed.load_running_sums(sums, sum_count)
    for r in rows[1:]:
        resumed.add(r)
    a, b = resumed.flush(), whole.flush()
    assert a.means == b.means and a.steps == b.steps == 3
