"""Data order for the classifier trainer: deterministic per epoch, sharded, resumable at any batch.

- :class:`EpochSampler`: the data order of epoch ``e`` is a pure function of ``(seed, e)``: a
  permutation (several, concatenated, when an epoch draws more samples than the set holds),
  padded to a multiple of the world size and dealt out round-robin, so that the union of the
  ranks' ``k``-th batches is the same contiguous chunk of the epoch sequence whatever the number
  of processes. Every position also carries its own seed.
- :class:`SeededItems` seeds torch's RNG with that seed around the item's transform, so
  augmentations do not depend on worker processes or on where a resumed run restarted.
- :class:`BatchStream`: batches of one dataset; ``epoch(e, start_step)`` skips the first
  ``start_step`` batches without loading them. :class:`ZipStream` runs several streams in
  lock-step (e.g. real + counterfactual).
- :func:`to_device`: moves a (nested) batch to the device.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Iterator, Mapping

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from cgn.core.distributed import DistInfo
from cgn.core.seeding import generator
from cgn.errors import CGNError


class EpochSampler(Sampler):
    """Yields ``(item_seed, index)`` pairs for one rank; see the module docstring.

    n_items: size of the dataset; samples_per_epoch: how many items an epoch draws (default
    ``n_items``; more than ``n_items`` concatenates fresh permutations); shuffle=False keeps the
    natural order (repeated as needed).
    """

    def __init__(self, n_items: int, *, seed: int, batch_size: int, shuffle: bool = True,
                 samples_per_epoch: int | None = None, rank: int = 0, world_size: int = 1):
        if n_items <= 0:
            raise CGNError("the training set is empty; check the dataset folder")
        self.n_items = int(n_items)
        self.seed = int(seed)
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.samples = int(samples_per_epoch if samples_per_epoch is not None else n_items)
        if self.samples <= 0:
            raise CGNError(f"samples per epoch must be positive, got {self.samples}")
        self.rank, self.world_size = rank, world_size
        self.per_rank = math.ceil(self.samples / world_size)
        self.epoch, self.start_batch = 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = int(epoch), int(start_batch)

    def sequence(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole epoch (all ranks, padded): item indices [T] and per-position seeds [T]."""
        g = generator(self.seed * 1_000_003 + epoch)
        reps = math.ceil(self.samples / self.n_items)
        if self.shuffle:
            order = torch.cat([torch.randperm(self.n_items, generator=g) for _ in range(reps)])
        else:
            order = torch.arange(self.n_items).repeat(reps)
        order = order[: self.samples]
        total = self.per_rank * self.world_size
        if total > self.samples:  # pad by wrapping around, as every rank needs as many items
            order = torch.cat([order, order[: total - self.samples]])
        seeds = torch.randint(0, 2**62, (total,), generator=g)
        return order, seeds

    def _mine(self) -> tuple[torch.Tensor, torch.Tensor]:
        order, seeds = self.sequence(self.epoch)
        sl = slice(self.rank, None, self.world_size)
        skip = self.start_batch * self.batch_size
        return order[sl][skip:], seeds[sl][skip:]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order, seeds = self._mine()
        return iter(zip(seeds.tolist(), order.tolist()))

    def __len__(self) -> int:
        return max(0, self.per_rank - self.start_batch * self.batch_size)

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.per_rank / self.batch_size)


class SeededItems(Dataset):
    """Wraps a dataset so that item ``(seed, index)`` is loaded with torch's RNG seeded by
    ``seed`` (random transforms become a function of the epoch position), leaving the caller's
    RNG untouched."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]):
        seed, index = key
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)  # CPU only: fork_rng(devices=[]) restores only it
            return self.dataset[index]

    def __getattr__(self, name: str):
        # Batched access: a dataset with ``__getitems__(indices)`` (e.g. in-memory arrays) gets
        # the whole batch at once, with torch's RNG seeded by the batch's first position seed.
        if name == "__getitems__" and hasattr(self.dataset, "__getitems__"):
            def getitems(keys: list[tuple[int, int]]):
                with torch.random.fork_rng(devices=[]):
                    torch.default_generator.manual_seed(keys[0][0])
                    return self.dataset.__getitems__([k[1] for k in keys])
            return getitems
        raise AttributeError(name)


class BatchStream:
    """Batches of one dataset for the Trainer: ``steps_per_epoch`` and ``epoch(e, start_step)``.

    batch_size is per process. workers: DataLoader worker processes. drop_last is not offered:
    the last batch of an epoch may be smaller (every sample is seen once per epoch).
    """

    def __init__(self, dataset: Dataset, batch_size: int, *, seed: int, shuffle: bool = True,
                 samples_per_epoch: int | None = None, dist: DistInfo | None = None,
                 workers: int = 0, collate_fn: Callable | None = None):
        if batch_size <= 0:
            raise CGNError(f"batch size must be positive, got {batch_size}")
        dist = dist or DistInfo()
        self.dataset = SeededItems(dataset)
        self.batch_size = batch_size
        self.workers = workers
        self.collate_fn = collate_fn
        self.pin = dist.device.type == "cuda"
        self.sampler = EpochSampler(len(dataset), seed=seed, batch_size=batch_size,  # type: ignore[arg-type]
                                    shuffle=shuffle, samples_per_epoch=samples_per_epoch,
                                    rank=dist.rank, world_size=dist.world_size)

    @property
    def steps_per_epoch(self) -> int:
        return self.sampler.steps_per_epoch

    def epoch(self, epoch: int, start_step: int = 0) -> Iterable:
        self.sampler.set_epoch(epoch, start_step)
        # the loader's own generator (worker seeds) keeps the global RNG untouched
        g = generator(self.sampler.seed * 1_000_003 + epoch + 7_919)
        return DataLoader(self.dataset, batch_size=self.batch_size, sampler=self.sampler,
                          num_workers=self.workers, pin_memory=self.pin,
                          collate_fn=self.collate_fn, persistent_workers=False, generator=g)


class ZipStream:
    """Several streams in lock-step; an epoch has the first stream's number of steps (the
    others must have at least as many). Yields tuples of batches."""

    def __init__(self, *streams: BatchStream):
        if not streams:
            raise ValueError("ZipStream needs at least one stream")
        self.streams = streams
        steps = [s.steps_per_epoch for s in streams]
        if min(steps[1:], default=steps[0]) < steps[0]:
            raise ValueError(f"secondary streams have fewer steps per epoch ({steps}) than the "
                             "first; give them more samples per epoch")

    @property
    def steps_per_epoch(self) -> int:
        return self.streams[0].steps_per_epoch

    def epoch(self, epoch: int, start_step: int = 0) -> Iterable:
        return zip(*(s.epoch(epoch, start_step) for s in self.streams))


def to_device(batch: Any, device: torch.device) -> Any:
    """Move tensors in nested tuples/lists/dicts to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch
