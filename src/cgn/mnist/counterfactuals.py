"""Counterfactual datasets from an MNIST CGN, written in resumable shards.

Protocol. Images come in groups of ``cf_ratio``: a group draws one shape label and one mask;
each of its ``cf_ratio`` images then re-samples the foreground and background with their own
labels and fresh noise, and is labelled with the shape class. Texture and background labels are
drawn uniformly and independently (the original shuffles the batch's shape labels, which has the
same distribution). ``counterfactual=False`` gives plain conditional-GAN samples instead: the
three mechanisms share one label and one noise vector ("Original + GAN" baseline).

Seeds. Every image ``i`` has its own ``seed`` (a counter-based hash of the run seed and ``i``)
and the ``shape_seed`` of its group (the seed of the group's first image). The mechanisms'
random inputs are drawn from ``torch.Generator``s seeded by hashes of these two numbers, one
item at a time, so :func:`regenerate` rebuilds any image from its stored seeds and labels alone,
whatever batch or shard it was generated in.

On disk: :mod:`cgn.mnist.cfdata` (shards with digests, the reader :class:`CounterfactualSet`).

Reference: docs/reference.md#counterfactual-datasets.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from cgn.config import check, check_resume
from cgn.core.composer import compose
from cgn.core.lock import lock_dir
from cgn.core.precision import Precision, Probe, resolve_precision
from cgn.core.progress import progress
from cgn.core.sampling import to_uint8
from cgn.io import file_digest, read_json, write_json_atomic
from cgn.mnist.cfdata import check_space, shard_state, write_shard
from cgn.mnist.mechanism import frozen_inference

FORMAT = "cgn-counterfactuals/1"
# How images are computed from the seeds. The same seeds give the same images up to float
# rounding across renderers; bit-exact regeneration needs the renderer that wrote the shard.
#   layers-1: the mechanisms layer by layer under bf16 autocast (datasets made before 2026-11-28)
#   frozen-1: cgn.mnist.mechanism.frozen_inference (folded BatchNorm, fused kernels, polyphase)
RENDERER = "frozen-1"


MAX_IMAGES = 100_000_000  # 300 GB of images: beyond any experiment


@dataclass
class GenerateConfig:
    n: int = field(default=100_000, metadata={"help": "images in the dataset (1e6 works)"})
    cf_ratio: int = field(default=10, metadata={
        "help": "counterfactuals per sampled mask (the authors' no_cfs)"})
    seed: int = field(default=0, metadata={"help": "run seed; every image's seed derives from it"})
    counterfactual: bool = field(default=True, metadata={
        "help": "counterfactuals: random texture and background labels per mask; off: plain CGN "
                "samples, one label and noise for all mechanisms (the GAN baseline)"})
    shard_size: int = field(default=50_000, metadata={"help": "images per shard file"})
    # (256 measured ~1.35x faster than 1000 on CPU, bf16)
    batch_size: int = field(default=256, metadata={
        "help": "images per forward pass: changes no image, only the speed", "resume": "free"})
    precision: Literal["auto", "bf16", "fp32"] = field(default="auto", metadata={
        "help": "bf16 autocast (fast on CPUs with AVX-512/AMX) or fp32"})

    def __post_init__(self):
        check(1 <= self.n <= MAX_IMAGES, f"n must be between 1 and {MAX_IMAGES:,} (300 GB), got {self.n:.3g}")
        check(self.cf_ratio >= 1, f"cf_ratio must be at least 1, got {self.cf_ratio}")
        check(self.seed >= 0, f"seed must be non-negative, got {self.seed}")
        check(self.shard_size >= 1 and self.batch_size >= 1, "shard_size and batch_size must be >= 1")
        check(self.precision in ("auto", "bf16", "fp32"), f"precision must be auto, bf16 or fp32, got {self.precision!r}")


@dataclass
class Generation:
    """What a resumed generation must keep: its config and the CGN (by content)."""
    config: GenerateConfig
    generator_sha256: str | None

    @staticmethod
    def record(manifest: dict) -> dict:
        return {"config": manifest.get("config", {}),
                "generator_sha256": manifest.get("generator", {}).get("sha256")}


# ---- counter-based seeds ----------------------------------------------------------------------

_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser on uint64 arrays (wrapping arithmetic): a well-mixed hash."""
    with np.errstate(over="ignore"):
        z = (x.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)) & _MASK64
        z = ((z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _MASK64
        z = ((z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _MASK64
        return z ^ (z >> np.uint64(31))


def _hash(a: np.ndarray | int, b: int) -> np.ndarray:
    """A non-negative int64 hash of (a, b)."""
    a = np.asarray(a, dtype=np.int64).astype(np.uint64)
    return (_splitmix64(_splitmix64(a) ^ np.uint64(b)) >> np.uint64(1)).astype(np.int64)


def image_seeds(seed: int, index: np.ndarray) -> np.ndarray:
    """The seed of image ``index`` in a run with seed ``seed``."""
    return _hash(_hash(seed, 0x5EED) ^ np.asarray(index, dtype=np.int64), 1)


# Salts that derive each mechanism's seed / label from an image seed.
_SALT = {"shape": 11, "texture": 12, "background": 13, "label_shape": 21,
         "label_texture": 22, "label_background": 23}


def plan(cfg: GenerateConfig, start: int, stop: int) -> dict[str, np.ndarray]:
    """Labels and seeds of images ``start .. stop-1`` (a pure function of cfg and the index)."""
    idx = np.arange(start, stop, dtype=np.int64)
    ratio = cfg.cf_ratio if cfg.counterfactual else 1
    seed = image_seeds(cfg.seed, idx)
    shape_seed = image_seeds(cfg.seed, (idx // ratio) * ratio)
    shape = _hash(shape_seed, _SALT["label_shape"]) % 10
    if cfg.counterfactual:
        texture = _hash(seed, _SALT["label_texture"]) % 10
        background = _hash(seed, _SALT["label_background"]) % 10
    else:
        texture = background = shape
    return {"shape": shape, "texture": texture, "background": background,
            "seed": seed, "shape_seed": shape_seed}


# ---- rendering ---------------------------------------------------------------------------------

def _latents(model, mechanism: str, seeds: np.ndarray) -> dict[str, torch.Tensor]:
    """One item per seed, each from its own generator: independent of batching."""
    salt = _SALT[mechanism]
    g = torch.Generator()  # reseeded per item: manual_seed resets the whole state
    per_item = [model.draw_latents(mechanism, 1, g.manual_seed(int(s))) for s in _hash(seeds, salt)]
    return {k: torch.cat([d[k] for d in per_item]) for k in per_item[0]}


_DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


@contextlib.contextmanager
def _precision(precision: str, device: torch.device):
    if precision == "bf16":
        with torch.autocast(device.type, dtype=torch.bfloat16):
            yield
    else:
        yield


def _probe_render(bf16: bool):
    """Rendering 500 counterfactuals with a fresh CGN's frozen mechanisms, for ``auto``."""
    from cgn.mnist.model import MnistCGN
    model, name = MnistCGN().eval(), "bf16" if bf16 else "fp32"
    labels = plan(GenerateConfig(n=500), 0, 500)

    def call() -> None:
        with frozen_inference(model, _DTYPES[name]):
            render(model, labels, True, name)
    return call


RENDER_PROBE = Probe("mnist-counterfactual-render", _probe_render)


def render(model, labels: dict[str, np.ndarray], counterfactual: bool, precision: str = "bf16",
           device: torch.device | str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """Images (uint8 [n, 32, 32, 3]) and masks (float32 [n, 32, 32]) for planned items."""
    device = torch.device(device)
    # One mask per shape seed: the cf_ratio counterfactuals of a mask share it, so the shape
    # mechanism runs once per distinct seed and its output is repeated.
    shape_seeds, first, inverse = np.unique(labels["shape_seed"], return_index=True, return_inverse=True)
    lat_s = _latents(model, "shape", shape_seeds)
    lat_t = _latents(model, "texture", labels["seed"])
    lat_b = _latents(model, "background", labels["seed"])
    if not counterfactual:  # a plain sample: all three mechanisms share the shape noise
        lat_t["noise"] = lat_b["noise"] = lat_s["noise"][torch.from_numpy(inverse)]
    ys = {k: torch.from_numpy(labels[k]).to(device) for k in ("shape", "texture", "background")}
    dev = lambda d: {k: v.to(device) for k, v in d.items()}  # noqa: E731
    precision = resolve_precision(precision, device, probe=RENDER_PROBE).name
    with torch.no_grad(), _precision(precision, device):
        m = model.run_mechanism("shape", ys["shape"][torch.from_numpy(first).to(device)], **dev(lat_s))
        m = m[torch.from_numpy(inverse).to(device)]
        f = model.run_mechanism("texture", ys["texture"], **dev(lat_t))
        b = model.run_mechanism("background", ys["background"], **dev(lat_b))
        x = compose(m.float(), f.float(), b.float())
    return to_uint8(x), m.float()[:, 0].cpu().numpy()


def generate(model, cfg: GenerateConfig, out: str | Path, *, source: dict,
             device: torch.device | str = "cpu", log=print) -> dict:
    """Write (or resume) a dataset. ``source`` describes the CGN (path, sha256, ...)."""
    out = Path(out)
    lock_dir(out)  # one writer per dataset: two processes would mix their shards
    mpath = out / "manifest.json"
    old = read_json(mpath, "counterfactual dataset manifest") if mpath.exists() else None
    # The set stores the precision it is computed in (bit-exact regeneration needs it): "auto"
    # decides once, for this machine, and a resumed set keeps the precision it started with.
    started = (old or {}).get("config", {}).get("precision")
    chosen = (Precision(started, "the precision this set was started with") if cfg.precision == "auto"
              and started in ("bf16", "fp32") else resolve_precision(cfg.precision, device, probe=RENDER_PROBE))
    cfg = replace(cfg, precision=chosen.name)
    manifest = {"format": FORMAT, "config": asdict(cfg), "generator": source,
                "n_shards": -(-cfg.n // cfg.shard_size), "renderer": RENDERER,
                "precision": chosen.as_dict()}
    if old is not None:
        check_resume(Generation, Generation.record(old), Generation.record(manifest),
                     f"{out} already holds a different generation", "choose another --out or delete it")
        if old.get("renderer", "layers-1") != RENDERER:
            log(f"note: {out} was started by renderer {old.get('renderer', 'layers-1')}; its remaining "
                f"shards are written by {RENDERER} (same seeds, images equal up to bf16 rounding)")
    states = [shard_state(out, k, min(cfg.n, (k + 1) * cfg.shard_size) - k * cfg.shard_size)
              for k in range(manifest["n_shards"])]
    for k in (k for k, state in enumerate(states) if state == "damaged"):
        log(f"note: shard {k} of {out} is damaged (its files do not match their digests); writing it again")
    check_space(out, sum(min(cfg.n, (k + 1) * cfg.shard_size) - k * cfg.shard_size
                               for k, state in enumerate(states) if state != "complete"))
    if old is None:
        write_json_atomic(mpath, manifest)
    model = model.to(device).eval()
    done = 0
    # The mechanisms compiled once for the whole run (a snapshot of the weights: they do not change)
    with frozen_inference(model, _DTYPES[cfg.precision]):
        for k in range(manifest["n_shards"]):
            start, stop = k * cfg.shard_size, min(cfg.n, (k + 1) * cfg.shard_size)
            if states[k] == "complete":
                done += 1
                continue
            images = np.empty((stop - start, 32, 32, 3), dtype=np.uint8)
            labels = plan(cfg, start, stop)
            bar = progress(range(start, stop, cfg.batch_size), desc=f"shard {k + 1}/{manifest['n_shards']}")
            for a in bar:
                b = min(stop, a + cfg.batch_size)
                sl = {key: v[a - start:b - start] for key, v in labels.items()}
                images[a - start:b - start], _ = render(model, sl, cfg.counterfactual, cfg.precision, device)
            write_shard(out, k, images, labels)
    if done:
        log(f"resumed: {done} of {manifest['n_shards']} shards were already complete")
    return manifest


def regenerate(model, manifest: dict, shape: int, texture: int, background: int, seed: int,
               shape_seed: int, device: torch.device | str = "cpu") -> np.ndarray:
    """Rebuild one image (uint8 [32, 32, 3]) from its stored labels and seeds (bit for bit when
    the manifest's ``renderer`` is :data:`RENDERER`; older datasets agree up to bf16 rounding)."""
    cfg = manifest["config"]
    one = lambda v: np.array([v], dtype=np.int64)  # noqa: E731
    labels = {"shape": one(shape), "texture": one(texture), "background": one(background),
              "seed": one(seed), "shape_seed": one(shape_seed)}
    model = model.to(device).eval()
    with frozen_inference(model, _DTYPES[cfg["precision"]]):
        images, _ = render(model, labels, cfg["counterfactual"], cfg["precision"], device)
    return images[0]


def checkpoint_source(path: str | Path, info: dict) -> dict:
    """The ``generator`` block of a manifest: which CGN made the data (``info['path']`` is the
    file a shipped CGN's name resolved to)."""
    path = info.get("path", path)
    return {"checkpoint": str(path), "sha256": file_digest(path, "sha256"), **info}
