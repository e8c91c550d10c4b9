"""Counterfactual sampling from any CGN: each mechanism its own label, noise and seed.

A CGN generates ``x = m * f + (1 - m) * b`` from three independent mechanisms. To sample a
*counterfactual* (the shape of a 3, the texture of a 7, the background of a 1) each mechanism
gets its own label and its own random stream. This module does that for any model that
implements :class:`CounterfactualModel`:

- ``mechanisms``: the names ``("shape", "texture", "background")`` (their outputs: the mask m,
  the foreground f and the background b);
- ``n_classes``;
- ``draw_latents(mechanism, n, generator) -> dict[str, Tensor]``: everything random a mechanism
  needs for ``n`` samples (noise, and e.g. the MNIST texture crop offsets), drawn on the CPU from
  ``generator``; every tensor's first dimension is ``n``;
- ``run_mechanism(mechanism, labels, **latents)``: the mechanism's output, ``[B, 1, H, W]`` mask
  for ``shape`` and ``[B, 3, H, W]`` in ``[-1, 1]`` for the others; it may return
  ``(output, extras_dict)`` to pass on more (e.g. ImageNet's pre-mask).

Latents are drawn in fixed blocks of :data:`BLOCK` items from one generator per mechanism, so a
sample depends only on (model, labels, seeds, index), not on the batch size used to compute it
(up to the float rounding of batched kernels, ~1e-6). A *plain* (non-counterfactual) sample gives all mechanisms the same label and, with
``shared_noise``, the shape mechanism's noise.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Iterator, Protocol, Sequence

import numpy as np
import torch

from cgn.core.composer import compose
from cgn.core.progress import progress
from cgn.errors import CGNError

MECHANISMS = ("shape", "texture", "background")
BLOCK = 1024  # latents are drawn in blocks of this many items (batch-size independence)


class CounterfactualModel(Protocol):
    mechanisms: tuple[str, ...]
    n_classes: int

    def draw_latents(self, mechanism: str, n: int, generator: torch.Generator) -> dict[str, torch.Tensor]: ...

    def run_mechanism(self, mechanism: str, labels: torch.Tensor, **latents: torch.Tensor): ...


@dataclass
class CGNSample:
    """One batch of samples; tensors on the CPU, float32."""

    mask: torch.Tensor         # [N, 1, H, W] in [0, 1]
    foreground: torch.Tensor   # [N, 3, H, W] in [-1, 1]
    background: torch.Tensor   # [N, 3, H, W] in [-1, 1]
    composite: torch.Tensor    # [N, 3, H, W] in [-1, 1]
    labels: dict[str, torch.Tensor]   # mechanism -> [N] int64
    seeds: dict[str, int]
    start: int = 0             # index of the first item in the whole request
    extras: dict[str, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.composite.shape[0]

    @staticmethod
    def cat(parts: Sequence["CGNSample"]) -> "CGNSample":
        if not parts:
            raise ValueError("nothing to concatenate")
        first = parts[0]
        return CGNSample(
            mask=torch.cat([p.mask for p in parts]), foreground=torch.cat([p.foreground for p in parts]),
            background=torch.cat([p.background for p in parts]),
            composite=torch.cat([p.composite for p in parts]),
            labels={k: torch.cat([p.labels[k] for p in parts]) for k in first.labels},
            seeds=dict(first.seeds), start=first.start,
            extras={k: torch.cat([p.extras[k] for p in parts]) for k in first.extras})


def mechanism_seeds(seed: int, mechanisms: Sequence[str] = MECHANISMS) -> dict[str, int]:
    """Independent per-mechanism seeds derived from one seed (numpy SeedSequence spawning)."""
    children = np.random.SeedSequence(int(seed)).spawn(len(mechanisms))
    return {m: int(c.generate_state(1, dtype=np.uint64)[0] >> 1) for m, c in zip(mechanisms, children)}


class LatentStream:
    """A mechanism's latents for items ``0, 1, 2, ...``, drawn block by block from one generator."""

    def __init__(self, model: CounterfactualModel, mechanism: str, seed: int):
        self.model, self.mechanism = model, mechanism
        self.generator = torch.Generator().manual_seed(int(seed))
        self._blocks: list[dict[str, torch.Tensor]] = []
        self._drawn = 0      # items drawn so far
        self._offset = 0     # index of the first item still held in _blocks

    def take(self, start: int, n: int) -> dict[str, torch.Tensor]:
        """Latents of items ``start .. start+n-1`` (requests must move forward)."""
        if start < self._offset:
            raise ValueError("LatentStream requests must not go backwards")
        while self._drawn < start + n:
            self._blocks.append(self.model.draw_latents(self.mechanism, BLOCK, self.generator))
            self._drawn += BLOCK
        # drop blocks entirely before start
        while self._blocks and self._offset + BLOCK <= start:
            self._blocks.pop(0)
            self._offset += BLOCK
        keys = self._blocks[0].keys()
        joined = {k: torch.cat([b[k] for b in self._blocks]) for k in keys}
        lo = start - self._offset
        return {k: v[lo:lo + n] for k, v in joined.items()}


def choose_labels(spec, n: int, n_classes: int, rng: np.random.Generator, name: str) -> np.ndarray:
    """A mechanism's ``n`` labels (int64) from ``spec``: ``None`` or ``"random"`` (drawn
    uniformly from ``rng``), one digit, ``n`` digits (a sequence or a tensor), or the command
    line's form of these (``"3"``, ``"0,1,2"``). One label is repeated ``n`` times."""
    if spec is None or (isinstance(spec, str) and spec.strip() == "random"):
        return rng.integers(0, n_classes, size=n).astype(np.int64)
    how = f"give a digit 0..{n_classes - 1}, a comma-separated list of N digits, or 'random'"
    if isinstance(spec, str):
        try:
            values = [int(v) for v in spec.split(",") if v.strip()]
        except ValueError:
            raise CGNError(f"{name} label {spec!r}: {how}") from None
    else:
        try:
            values = np.asarray(spec.tolist() if isinstance(spec, torch.Tensor) else spec).reshape(-1)
        except (TypeError, ValueError):
            raise CGNError(f"{name} label {spec!r}: {how}") from None
        if values.dtype.kind not in "iu":
            raise CGNError(f"{name} label {spec!r}: {how}")
        values = values.astype(np.int64).tolist()
    if len(values) == 1:
        values = values * n
    if len(values) != n:
        raise CGNError(f"{name}: {len(values)} labels for n={n}; give one label or exactly n")
    arr = np.array(values, dtype=np.int64)
    if arr.min() < 0 or arr.max() >= n_classes:
        raise CGNError(f"{name} labels must be in 0..{n_classes - 1}")
    return arr


def choose_all_labels(shape, texture, background, n: int, n_classes: int,
                      seed: int) -> dict[str, np.ndarray]:
    """The labels of all three mechanisms (:func:`choose_labels`); random ones are drawn, in
    the order shape, texture, background, from a stream of ``seed`` apart from the noise's."""
    rng = np.random.default_rng([int(seed), 1])
    return {name: choose_labels(spec, n, n_classes, rng, name)
            for name, spec in zip(MECHANISMS, (shape, texture, background))}


def _as_labels(y, n: int, n_classes: int, name: str) -> torch.Tensor:
    t = torch.as_tensor(y, dtype=torch.int64).flatten()
    if t.numel() == 1:
        t = t.expand(n).clone()
    if t.numel() != n:
        raise CGNError(f"{name} labels: got {t.numel()} for {n} samples; give one label or {n}")
    if (t < 0).any() or (t >= n_classes).any():
        raise CGNError(f"{name} labels must be in 0..{n_classes - 1}")
    return t


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Evaluation mode (BatchNorm running statistics) and no gradients; restores the mode."""
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was)


def _split(out) -> tuple[torch.Tensor, dict]:
    return (out[0], dict(out[1])) if isinstance(out, tuple) else (out, {})


def iter_samples(model: CounterfactualModel, n: int, shape, texture, background, *,
                 seed: int | None = None, seeds: dict[str, int] | None = None,
                 shared_noise: bool = False, batch_size: int = 500,
                 device: torch.device | str | None = None, desc: str = "") -> Iterator[CGNSample]:
    """Yield samples ``0..n-1`` in batches of ``batch_size``.

    shape / texture / background: one label or ``n`` labels per mechanism. Give either one
    ``seed`` (per-mechanism seeds are derived from it) or ``seeds`` per mechanism. With
    ``shared_noise`` the texture and background mechanisms reuse the shape mechanism's noise (a
    plain CGN sample when the three labels agree). The model runs in eval mode without gradients.
    """
    if n < 1:
        raise CGNError("the number of samples must be >= 1")
    if batch_size < 1:
        raise CGNError("batch size must be >= 1")
    mechs = tuple(model.mechanisms)
    if mechs != MECHANISMS:
        raise CGNError(f"model mechanisms {mechs} are not {MECHANISMS}")
    if seeds is None:
        if seed is None:
            raise CGNError("give a seed (or one seed per mechanism)")
        seeds = mechanism_seeds(seed)
    if set(seeds) != set(MECHANISMS):
        raise CGNError(f"seeds needed for {MECHANISMS}, got {sorted(seeds)}")
    labels = {m: _as_labels(y, n, model.n_classes, m)
              for m, y in zip(MECHANISMS, (shape, texture, background))}
    if device is None:
        device = next(model.parameters()).device  # type: ignore[attr-defined]
    streams = {m: LatentStream(model, m, seeds[m]) for m in MECHANISMS}
    with eval_mode(model):  # type: ignore[arg-type]
        for start in progress(range(0, n, batch_size), total=-(-n // batch_size), desc=desc or "sampling"):
            k = min(batch_size, n - start)
            lat = {m: streams[m].take(start, k) for m in MECHANISMS}
            if shared_noise:
                for m in ("texture", "background"):
                    lat[m]["noise"] = lat["shape"]["noise"]
            outs, extras = {}, {}
            for m in MECHANISMS:
                y = labels[m][start:start + k].to(device)
                out, ex = _split(model.run_mechanism(m, y, **{a: v.to(device) for a, v in lat[m].items()}))
                outs[m] = out
                extras.update({f"{m}.{a}": v.float().cpu() for a, v in ex.items()})
            mask, f, b = outs["shape"], outs["texture"], outs["background"]
            x = compose(mask, f, b)
            yield CGNSample(mask=mask.float().cpu(), foreground=f.float().cpu(),
                            background=b.float().cpu(), composite=x.float().cpu(),
                            labels={m: labels[m][start:start + k] for m in MECHANISMS},
                            seeds=dict(seeds), start=start, extras=extras)


def sample(model: CounterfactualModel, n: int, shape, texture, background, **kw) -> CGNSample:
    """All of :func:`iter_samples` in one :class:`CGNSample`."""
    return CGNSample.cat(list(iter_samples(model, n, shape, texture, background, **kw)))


def sample_plain(model: CounterfactualModel, labels, n: int | None = None, *, seed: int, **kw) -> CGNSample:
    """Non-counterfactual samples: every mechanism gets the same label and the same noise."""
    labels_t = torch.as_tensor(labels, dtype=torch.int64).flatten()
    n = int(n if n is not None else labels_t.numel())
    return sample(model, n, labels_t, labels_t, labels_t, seed=seed, shared_noise=True, **kw)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[N, C, H, W] in [-1, 1] -> uint8 [N, H, W, C] (round to nearest)."""
    x = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).contiguous().numpy()
