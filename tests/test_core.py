"""Invariants of the shared core: composer, configs, checkpoints, run directories, atomic IO."""

from __future__ import annotations

import dataclasses
import os
from typing import Literal

import numpy as np
import pytest
import torch

from cgn.config import changed_fields, check, from_dict, override, to_dict
from cgn.core.checkpoint import load_checkpoint, load_state_dict_strict, save_checkpoint, torch_load
from cgn.core.composer import compose
from cgn.core.rundir import RunDir
from cgn.core.seeding import rng_state, seed_everything, set_rng_state
from cgn.errors import CGNError
from cgn.io import atomic_write, read_jsonl, save_npz_atomic


def test_composer_invariants():
    g = torch.Generator().manual_seed(0)
    f, b = torch.rand(2, 3, 8, 8, generator=g), torch.rand(2, 3, 8, 8, generator=g)
    assert torch.equal(compose(torch.ones(2, 1, 8, 8), f, b), f)
    assert torch.equal(compose(torch.zeros(2, 1, 8, 8), f, b), b)
    m = torch.rand(2, 1, 8, 8, generator=g)
    x = compose(m, f, b)
    assert torch.allclose(x, m * f + (1 - m) * b)
    # Same foreground and background: the mask does not matter.
    assert torch.allclose(compose(m, f, f), f)
    # A convex combination stays between the two inputs.
    assert (x >= torch.minimum(f, b) - 1e-6).all() and (x <= torch.maximum(f, b) + 1e-6).all()
    with pytest.raises(ValueError):
        compose(torch.ones(2, 8, 8), f, b)


@dataclasses.dataclass
class Inner:
    lr: float = 1e-3
    betas: tuple[float, ...] = (0.5, 0.999)

    def __post_init__(self):
        check(self.lr > 0, f"lr must be positive, got {self.lr}")


@dataclasses.dataclass
class Outer:
    name: Literal["a", "b"] = "a"
    steps: int = 10
    path: str | None = None
    inner: Inner = dataclasses.field(default_factory=Inner)


def test_config_roundtrip_and_overrides():
    cfg = Outer()
    assert from_dict(Outer, to_dict(cfg)) == cfg
    new = override(cfg, ["inner.lr=0.01", "steps=20", "name=b", "inner.betas=0.9,0.99"])
    assert new.inner.lr == 0.01 and new.steps == 20 and new.name == "b" and new.inner.betas == (0.9, 0.99)
    with pytest.raises(CGNError, match="unknown field"):
        override(cfg, ["inner.momentum=0.9"])
    with pytest.raises(CGNError, match="lr must be positive"):
        override(cfg, ["inner.lr=-1"])
    with pytest.raises(CGNError, match="not one of"):
        override(cfg, ["name=c"])
    with pytest.raises(CGNError, match="expected an integer"):
        override(cfg, ["steps=1.5"])
    with pytest.raises(CGNError, match="unknown field"):
        from_dict(Outer, {"stepz": 3})


def test_changed_fields_nested_missing_and_ignored():
    old = {"train": {"epochs": 3, "seed": 0}, "jobs": 1, "gone": 5}
    new = {"train": {"epochs": 4, "seed": 0}, "jobs": 2, "extra": {}}
    assert changed_fields(old, new) == ["gone", "jobs", "train.epochs"]
    assert changed_fields(old, new, ignore=("jobs", "train.epochs")) == ["gone"]
    assert changed_fields(new, new) == []


def test_checkpoint_roundtrip_and_errors(tmp_path):
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(net.parameters())
    net(torch.randn(4, 3)).sum().backward()
    opt.step()
    p = tmp_path / "c.pt"
    save_checkpoint(p, kind="test", step=5, config={"a": 1}, model=net.state_dict(),
                    optim={"opt": opt.state_dict()}, rng=rng_state())
    ck = load_checkpoint(p, kind="test")
    assert ck["step"] == 5 and ck["config"] == {"a": 1} and ck["version"]
    other = torch.nn.Linear(3, 2)
    load_state_dict_strict(other, ck["model"], "c.pt")
    assert torch.equal(other.weight, net.weight)
    with pytest.raises(CGNError, match="'test' checkpoint"):
        load_checkpoint(p, kind="mnist-cgn")
    with pytest.raises(CGNError, match="does not fit this model: .*shape mismatch"):
        load_state_dict_strict(torch.nn.Linear(4, 2), ck["model"], "c.pt")
    with pytest.raises(CGNError, match="missing key"):
        load_state_dict_strict(torch.nn.Sequential(torch.nn.Linear(3, 2)), ck["model"], "c.pt")
    torch.save(net.state_dict(), tmp_path / "plain.pt")
    with pytest.raises(CGNError, match="not a cgn checkpoint"):
        load_checkpoint(tmp_path / "plain.pt")
    (tmp_path / "trunc.pt").write_bytes(p.read_bytes()[:100])
    with pytest.raises(CGNError, match="truncated or corrupt"):
        torch_load(tmp_path / "trunc.pt")
    with pytest.raises(CGNError, match="does not exist"):
        torch_load(tmp_path / "none.pt")


def test_weights_only_refuses_arbitrary_objects(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))
    torch.save({"x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(CGNError):
        torch_load(tmp_path / "evil.pt")


def test_rng_state_restores_all_generators():
    import random
    seed_everything(3)
    st = rng_state()
    a = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_state(st)
    b = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


def test_rundir_layout_and_resume_guard(tmp_path):
    rd = RunDir(tmp_path / "run", {"lr": 1})
    assert (tmp_path / "run" / "config.json").is_file()
    rd.metric({"step": 1, "loss": 0.5})
    rd.metric({"step": 2, "loss": 0.4})
    rd.log("hello", echo=False)
    with pytest.raises(CGNError, match="--resume"):
        RunDir(tmp_path / "run", {"lr": 1})
    rd2 = RunDir(tmp_path / "run", {"lr": 1}, resume=True)
    rd2.truncate_metrics(1)
    assert read_jsonl(tmp_path / "run" / "metrics.jsonl") == [{"step": 1, "loss": 0.5}]
    assert rd2.stored_config() == {"lr": 1}
    assert (tmp_path / "run" / "samples").is_dir() and (tmp_path / "run" / "checkpoints").is_dir()
    RunDir(tmp_path / "bare", {"lr": 1}, subdirs=False)  # a run that keeps its files elsewhere
    assert sorted(os.listdir(tmp_path / "bare")) == [".lock", "config.json"]


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    p = tmp_path / "f.npz"
    save_npz_atomic(p, a=np.arange(3))
    with pytest.raises(RuntimeError):
        with atomic_write(p) as f:
            f.write(b"partial")
            raise RuntimeError("interrupted")
    with np.load(p) as z:
        assert z["a"].tolist() == [0, 1, 2]
    assert [x.name for x in tmp_path.iterdir()] == ["f.npz"]


def test_the_allocator_is_tuned_once_unless_the_user_said_otherwise(monkeypatch):
    """Every computing command keeps freed memory for the next step (cgn.core.allocator), once
    per process; CGN_MALLOC=default or the user's own MALLOC_*_THRESHOLD_ leave glibc alone."""
    from cgn.core import allocator
    from cgn.core.runcontrol import set_threads
    monkeypatch.setattr(allocator, "_state", None)
    monkeypatch.setenv("CGN_MALLOC", "default")
    assert allocator.keep_freed_memory() == "left alone (CGN_MALLOC=default)"
    monkeypatch.setattr(allocator, "_state", None)
    monkeypatch.delenv("CGN_MALLOC")
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "1000")
    assert "set by the user" in allocator.keep_freed_memory()
    monkeypatch.setattr(allocator, "_state", None)
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_")
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    set_threads(0)  # what a command calls first
    assert allocator._state in ("tuned", "left alone (no glibc mallopt)")
    assert allocator.keep_freed_memory() in ("tuned already", "left alone (no glibc mallopt)")
    x = torch.ones(3 << 20)  # allocations still work, and big blocks are freed as usual
    assert float(x.sum()) == 3 << 20
