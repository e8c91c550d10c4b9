"""The distributed helper in one process: without a torchrun environment every collective is the
identity and nothing joins a process group."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as tdist

from cgn.core.distributed import DistInfo, init_distributed, is_main_process, shutdown_distributed
from cgn.errors import CGNError

TORCHRUN_VARS = ("WORLD_SIZE", "RANK", "LOCAL_RANK")


@pytest.fixture
def no_torchrun(monkeypatch):
    for name in TORCHRUN_VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_single_process_without_torchrun_env(no_torchrun):
    info = init_distributed("cpu")
    assert info == DistInfo(device=torch.device("cpu"))
    assert (info.rank, info.world_size, info.local_rank, info.backend) == (0, 1, 0, None)
    assert info.is_main and not info.enabled
    assert not tdist.is_initialized()
    t = torch.tensor([1.5, -2.0], dtype=torch.float64)
    assert info.all_reduce_sum(t) is t and t.tolist() == [1.5, -2.0]
    assert info.all_reduce_mean(t) is t and t.tolist() == [1.5, -2.0]
    assert info.all_gather_object({"a": 1}) == [{"a": 1}]
    info.barrier()
    shutdown_distributed(info)
    assert not tdist.is_initialized()
    assert is_main_process()


def test_world_size_one_is_a_single_process(no_torchrun):
    no_torchrun.setenv("WORLD_SIZE", "1")
    no_torchrun.setenv("RANK", "0")
    no_torchrun.setenv("LOCAL_RANK", "0")
    info = init_distributed("auto")
    assert info.world_size == 1 and not info.enabled and not tdist.is_initialized()
    assert info.device.type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_is_main_process_reads_the_rank(no_torchrun):
    no_torchrun.setenv("RANK", "1")
    assert not is_main_process()
    no_torchrun.setenv("RANK", "0")
    assert is_main_process()


def test_bad_torchrun_env_is_one_clear_error(no_torchrun):
    no_torchrun.setenv("WORLD_SIZE", "two")
    with pytest.raises(CGNError, match="WORLD_SIZE='two' is not an integer"):
        init_distributed("cpu")
    no_torchrun.setenv("RANK", "first")
    with pytest.raises(CGNError, match="RANK='first'"):
        is_main_process()


def test_other_ranks_are_not_main():
    info = DistInfo(rank=1, world_size=2, local_rank=1, backend="gloo")
    assert info.enabled and not info.is_main
