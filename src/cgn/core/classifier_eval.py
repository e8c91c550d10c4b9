"""Evaluation for the classifier trainer: every sample counted once, summed over ranks.

:func:`eval_loader` gives each rank its share of the set (:class:`ShardSampler`: the shares
partition it, no padding); :func:`evaluate_counts` sums per-batch counts over the loader and over
DDP ranks -- partial last batches counted by their real size -- before anything is divided;
:func:`evaluate_accuracy` turns them into top-k accuracies.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from cgn.core.batches import to_device
from cgn.core.distributed import DistInfo
from cgn.core.progress import progress
from cgn.errors import CGNError


class ShardSampler(Sampler):
    """Indices ``rank, rank + W, ...`` of ``range(n)``: a partition of the set, no padding."""

    def __init__(self, n: int, rank: int = 0, world_size: int = 1):
        self.n, self.rank, self.world_size = n, rank, world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.n, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world_size))


def eval_loader(dataset: Dataset, batch_size: int, dist: DistInfo | None = None,
                workers: int = 0, collate_fn: Callable | None = None) -> DataLoader:
    """A loader over this rank's share of ``dataset`` (the shares partition the set)."""
    dist = dist or DistInfo()
    return DataLoader(dataset, batch_size=batch_size,
                      sampler=ShardSampler(len(dataset), dist.rank, dist.world_size),  # type: ignore[arg-type]
                      num_workers=workers, pin_memory=dist.device.type == "cuda",
                      collate_fn=collate_fn)


def topk_correct(logits: torch.Tensor, target: torch.Tensor, topk: Sequence[int]) -> torch.Tensor:
    """Number of rows whose target is among the ``k`` largest logits, for each k: [len(topk)]."""
    maxk = min(max(topk), logits.shape[1])
    pred = logits.topk(maxk, dim=1).indices                     # [B, maxk]
    hit = pred.eq(target.view(-1, 1))                           # [B, maxk]
    return torch.stack([hit[:, :min(k, maxk)].any(dim=1).sum() for k in topk])


@torch.no_grad()
def evaluate_counts(model: nn.Module, loader: Iterable,
                    count_fn: Callable[[nn.Module, Any], Mapping[str, torch.Tensor]],
                    device: torch.device | None = None, dist: DistInfo | None = None,
                    desc: str = "eval") -> dict[str, float]:
    """Sum ``count_fn(model, batch)`` (a dict of scalar counts) over the loader and over ranks.

    Every rank must call this (the sums are all-reduced); give each rank its own share of the
    data (:func:`eval_loader`).
    """
    dist = dist or DistInfo()
    device = device or dist.device
    totals: dict[str, torch.Tensor] = {}
    n_batches = len(loader) if hasattr(loader, "__len__") else None  # type: ignore[arg-type]
    it = progress(loader, total=n_batches, desc=desc) if dist.is_main else loader
    for batch in it:
        counts = count_fn(model, to_device(batch, device))
        for k, v in counts.items():
            v = torch.as_tensor(v, dtype=torch.float64, device=device).detach()
            totals[k] = totals[k] + v if k in totals else v
    # every rank must reduce the same keys, even a rank whose share was empty
    keys = sorted(set().union(*dist.all_gather_object(sorted(totals))))
    vec = torch.stack([totals.get(k, torch.zeros((), dtype=torch.float64, device=device))
                       for k in keys]) if keys else torch.zeros(0, dtype=torch.float64, device=device)
    dist.all_reduce_sum(vec)
    return {k: float(v) for k, v in zip(keys, vec.tolist())}


def _default_predict(model: nn.Module, batch: Any) -> Any:
    return model(batch[0])


def _default_target(batch: Any) -> Any:
    return batch[1]


@torch.no_grad()
def evaluate_accuracy(model: nn.Module, loader: Iterable, topk: Sequence[int] = (1, 5), *,
                      predict: Callable[[nn.Module, Any], Any] = _default_predict,
                      target: Callable[[Any], Any] = _default_target,
                      device: torch.device | None = None, dist: DistInfo | None = None,
                      desc: str = "accuracy") -> dict:
    """Top-k accuracy (percent) over every sample of the loader (and of all ranks).

    ``predict(model, batch)`` returns logits ``[B, C]`` -- or a dict of them, one per
    prediction head; ``target(batch)`` returns labels ``[B]`` -- or a dict with the same keys.
    Returns ``{"top1": .., "top5": .., "n": N}``, or ``{head: {...}}`` for dict predictions.
    """
    def count(m: nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        logits, y = predict(m, batch), target(batch)
        single = not isinstance(logits, Mapping)
        lg = {"": logits} if single else logits
        ys = {k: y for k in lg} if not isinstance(y, Mapping) else y
        out = {}
        for k, v in lg.items():
            c = topk_correct(v, ys[k], topk)
            for kk, ci in zip(topk, c):
                out[f"{k}\0top{kk}"] = ci
            out[f"{k}\0n"] = torch.tensor(len(ys[k]))
        return out

    sums = evaluate_counts(model, loader, count, device=device, dist=dist, desc=desc)
    heads = sorted({k.split("\0")[0] for k in sums})
    if not heads:
        raise CGNError("evaluation data set is empty; check the folder")
    res: dict[str, dict] = {}
    for h in heads:
        n = sums[f"{h}\0n"]
        if n == 0:
            raise CGNError("evaluation data set is empty; check the folder")
        res[h] = {f"top{k}": 100.0 * sums[f"{h}\0top{k}"] / n for k in topk}
        res[h]["n"] = int(n)
    return res[""] if heads == [""] else res
