"""The shared classifier training loop: data order, exact resume, sample-exact evaluation."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from cgn.core.batches import BatchStream, EpochSampler, ZipStream
from cgn.core.checkpoint import load_checkpoint
from cgn.core.classifier_eval import eval_loader, evaluate_accuracy, topk_correct
from cgn.core.classifier_trainer import StepOutput, Trainer, batchnorm_eval
from cgn.core.distributed import DistInfo
from cgn.errors import CGNError


class NoisyPoints(Dataset):
    """Fixed points with a random augmentation (noise drawn from torch's global RNG)."""

    def __init__(self, n: int = 22, dim: int = 5, classes: int = 3):
        g = torch.Generator().manual_seed(123)
        self.x = torch.randn(n, dim, generator=g)
        self.y = torch.randint(0, classes, (n,), generator=g)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i] + 0.1 * torch.randn(self.x.shape[1]), self.y[i]


def _net(dim: int = 5, classes: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(dim, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.2),
                         nn.Linear(16, classes))


def _loss(model, batch):
    x, y = batch
    out = model(x)
    return StepOutput(F.cross_entropy(out, y), {"acc": ((out.argmax(1) == y).sum(), len(y))})


def _train(out, *, epochs=3, resume=False, max_steps=None, checkpoint_every=0, seed=0):
    model = _net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, 1, gamma=0.5)
    data = BatchStream(NoisyPoints(), batch_size=4, seed=seed)
    evals = NoisyPoints(n=7)

    def eval_fn(m, epoch):
        return evaluate_accuracy(m, eval_loader(evals, 3), topk=(1, 2))

    tr = Trainer(model, _loss, opt, data, epochs=epochs, out=out, config={"seed": seed},
                 kind="toy", resume=resume, scheduler=sched, eval_fn=eval_fn, log_every=2,
                 checkpoint_every=checkpoint_every, max_steps=max_steps)
    return tr, tr.fit()


def test_sampler_partitions_and_resumes():
    s1 = EpochSampler(10, seed=3, batch_size=2, samples_per_epoch=23)
    order, seeds = s1.sequence(0)
    assert len(order) == 23 and set(order.tolist()) == set(range(10))
    assert not torch.equal(order, s1.sequence(1)[0])                  # a new order each epoch
    # two ranks: padded to 24, dealt round-robin; the union of the ranks' k-th batches is the
    # k-th chunk of 2 x batch positions of the single-process sequence
    ranks = [EpochSampler(10, seed=3, batch_size=2, samples_per_epoch=23, rank=r, world_size=2)
             for r in range(2)]
    per_rank = [list(iter(r)) for r in ranks]
    assert [len(p) for p in per_rank] == [12, 12] and ranks[0].steps_per_epoch == 6
    single = list(zip(seeds.tolist(), order.tolist()))
    for k in range(5):
        union = sorted(per_rank[0][2 * k:2 * k + 2] + per_rank[1][2 * k:2 * k + 2])
        assert union == sorted(single[4 * k:4 * k + 4])
    # resuming at batch 2 skips exactly the first two batches
    ranks[1].set_epoch(0, start_batch=2)
    assert list(iter(ranks[1])) == per_rank[1][4:] and len(ranks[1]) == 8


def test_zipstream_needs_enough_steps():
    a = BatchStream(NoisyPoints(), 4, seed=0)
    b = BatchStream(NoisyPoints(), 2, seed=1, samples_per_epoch=2 * a.steps_per_epoch)
    z = ZipStream(a, b)
    batches = list(z.epoch(0))
    assert len(batches) == a.steps_per_epoch == 6
    assert [len(bb[0]) for _, (bb) in batches][:2] == [2, 2]
    with pytest.raises(ValueError):
        ZipStream(a, BatchStream(NoisyPoints(), 8, seed=1))


def test_exact_resume_mid_epoch_and_at_epoch_end(tmp_path):
    straight, res = _train(tmp_path / "a")
    assert res["step"] == 18 and res["epoch"] == 3
    # interrupted mid-epoch (step 8 of 18, epoch 2 of 3) and again at an epoch end
    _train(tmp_path / "b", max_steps=8, checkpoint_every=5)
    ck = load_checkpoint(tmp_path / "b" / "checkpoints" / "last.pt", kind="toy")
    assert (ck["step"], ck["extra"]["epoch"], ck["extra"]["step_in_epoch"]) == (8, 1, 2)
    _train(tmp_path / "b", resume=True, max_steps=12)
    resumed, res_b = _train(tmp_path / "b", resume=True)
    assert res_b == res
    for (k, v), (k2, v2) in zip(straight.module.state_dict().items(),
                                resumed.module.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k
    rows_a = (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()
    rows_b = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    assert rows_a == rows_b
    evals = [json.loads(r) for r in rows_a if "eval/top1" in r]
    assert [e["epoch"] for e in evals] == [1, 2, 3] and all(e["eval/n"] == 7 for e in evals)
    # the optimiser's lr followed the schedule across the interruption
    assert resumed.optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5 ** 3)


def test_new_run_refuses_existing_dir_and_resume_without_checkpoint_starts(tmp_path):
    _train(tmp_path / "a", epochs=1)
    with pytest.raises(CGNError, match="--resume"):
        _train(tmp_path / "a", epochs=1)
    tr, res = _train(tmp_path / "fresh", epochs=1, resume=True)
    assert res["step"] == 6


def test_item_seeds_make_augmentation_independent_of_history():
    ds = NoisyPoints()
    s = BatchStream(ds, 4, seed=5)
    full = [b[0] for b in s.epoch(2)]
    torch.manual_seed(999)                    # the global RNG has no say
    tail = [b[0] for b in s.epoch(2, start_step=3)]
    assert all(torch.equal(a, b) for a, b in zip(full[3:], tail))
    assert len(tail) == len(full) - 3


class Fixed(nn.Module):
    """Returns the logits stored in the batch (to check counting)."""

    def __init__(self):
        super().__init__()
        self.p = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return x


def test_evaluate_accuracy_counts_every_sample():
    # 7 samples, batch 3 (a partial last batch of 1): top-1 hits 4, top-2 hits 6
    logits = torch.tensor([[3., 2, 1], [1, 3, 2], [2, 1, 3], [3, 2, 1], [1, 2, 3], [2, 3, 1],
                           [3, 1, 2]])
    y = torch.tensor([0, 2, 2, 1, 2, 1, 1])
    data = list(zip(logits, y))
    res = evaluate_accuracy(Fixed(), eval_loader(data, 3), topk=(1, 2))
    assert res == {"top1": pytest.approx(100 * 4 / 7), "top2": pytest.approx(100 * 6 / 7), "n": 7}
    # dict predictions and targets, one entry per head
    res = evaluate_accuracy(Fixed(), eval_loader(data, 4), topk=(1,),
                            predict=lambda m, b: {"a": b[0], "b": -b[0]},
                            target=lambda b: {"a": b[1], "b": b[1]})
    assert res["a"]["top1"] == pytest.approx(100 * 4 / 7) and res["b"]["n"] == 7
    assert res["b"]["top1"] == pytest.approx(100 * 1 / 7)
    assert topk_correct(logits, y, (1, 3)).tolist() == [4, 7]
    # two ranks' shares partition the set (no padding)
    shares = [list(eval_loader(data, 2, DistInfo(rank=r, world_size=2)).sampler) for r in (0, 1)]
    assert sorted(shares[0] + shares[1]) == list(range(7))
    with pytest.raises(CGNError, match="empty"):
        evaluate_accuracy(Fixed(), eval_loader([], 3))


def test_batchnorm_eval_freezes_statistics():
    net = _net()
    net.train()
    batchnorm_eval(net)
    assert not net[1].training and net[3].training
    before = net[1].running_mean.clone()
    net(torch.randn(8, 5))
    assert torch.equal(before, net[1].running_mean)
