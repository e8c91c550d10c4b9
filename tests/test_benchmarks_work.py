"""benchmarks/step_work.py: the FLOP count and the bounds it puts on a step (no timing asserted)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import step_work  # noqa: E402
from conftest import require_mnist  # noqa: E402


def test_count_gflop_counts_forward_and_backward_of_a_conv():
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, requires_grad=True)
    fwd = 2 * (2 * 4 * 8 * 8) * (3 * 9) / 1e9  # MACs per output element = Cin * k * k
    assert step_work.count_gflop(lambda: torch.nn.functional.conv2d(x, w, padding=1)) == pytest.approx(fwd)
    # backward: the input's and the weight's gradients, each as much work as the forward
    both = step_work.count_gflop(lambda: torch.nn.functional.conv2d(x, w, padding=1).sum().backward())
    assert both == pytest.approx(3 * fwd)
    # inside torch.autograd.grad (the floor's backward), where FlopCounterMode's module hooks fail
    lin = torch.nn.Linear(5, 7)
    z = torch.randn(3, 5, requires_grad=True)
    assert step_work.count_gflop(lambda: torch.autograd.grad(lin(z).sum(), z)) == pytest.approx(2 * 2 * 3 * 5 * 7 / 1e9)


def test_bounds():
    gflop = {"original": 40.0, "cgn": 30.0, "floor": 20.0}
    seconds = {"original": 0.2, "default": 0.12, "floor": 0.08}
    b = step_work.bounds(gflop, seconds, peak=500.0)
    assert b["rest_gflop"] == pytest.approx(10.0)
    assert b["least_step"] == pytest.approx(0.08 + 10.0 / 500.0)  # the floor, then the rest at the peak
    assert b["best_speedup"] == pytest.approx(0.2 / 0.1)
    assert b["least_over_floor"] == pytest.approx(0.1 / 0.08)
    assert b["rates"] == pytest.approx({"original": 200.0, "default": 250.0, "floor": 250.0})
    assert b["reachable"]  # 1.25x the floor, just
    assert not step_work.bounds(gflop, seconds, peak=300.0)["reachable"]  # 2.0x at best, 1.42x floor
    assert step_work.bounds(gflop, {**seconds, "original": 0.3}, peak=300.0)["reachable"]  # 2.65x


def test_step_gflop_of_the_real_step(tmp_path):
    """One real CGN step each (randomly initialised VGG16): the floor is part of the step, and the
    original-like step, which runs every VGG stage, does at least the default's work."""
    require_mnist()
    from cgn_train_step import make_trainer
    trainers = {m: make_trainer("colored-mnist", m, tmp_path, "random") for m in ("original-like", "ours-auto", "floor")}
    g = step_work.step_gflop(trainers)
    assert 0 < g["floor"] < g["cgn"] <= g["original"]
    assert trainers["ours-auto"].step == 1  # the counted call was a real step
