"""Training of the ImageNet CGN, on one device or several processes (``torchrun``).

One *micro-step* samples, per item, one class y (the same for all mechanisms) and one truncated
noise vector u, runs the CGN, and back-propagates the six weighted losses divided by
``batch_acc``. After ``batch_acc`` micro-steps every mechanism's Adam takes one step: that is an
*episode* (the authors' defaults: batch 1 × 4000 accumulations × 300 episodes). Dividing by
``batch_acc`` (the authors sum) changes nothing for Adam except the relative size of its ε.

Randomness: every micro-step draws its classes, noise and texture patches from a generator
seeded by (seed, episode, micro-step, rank). A run therefore does not depend on global RNG
state, and resuming from a checkpoint (saved after an episode) continues *exactly*.

Precision (``train.precision``): with bf16 the CGN's forward runs under bfloat16 autocast and the
style losses' VGG in bfloat16; the mask is clamped, and every loss (Gram matrices included) is
computed, in float32. ``auto`` picks bf16 where it is faster (CPUs with AMX, GPUs with bf16):
on 2 AMX cores a world-32-cgn micro-step took 3.82 s instead of 5.74 s (x1.5; measured with
``benchmarks/world_steps.py --axis precision`` while another job shared the cores).

Several processes: launched by ``torchrun``, each process takes its own classes/noise (its
rank enters the seed), gradients are averaged by DistributedDataParallel (NCCL on GPUs, gloo on
CPUs), rank 0 writes the run directory. Frozen parts (G_gt, U²-Net) are not in DDP's buckets;
buffers are not re-broadcast each step (standing statistics never change, and the spectral-norm
vectors evolve identically on every rank from identical weights).

Reference: docs/reference.md#imagenet-cgn.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np
import torch
from torchvision.utils import make_grid

from cgn.config import ResumeDiff, from_dict, override, resume_diff, to_dict
from cgn.core.checkpoint import load_checkpoint, save_checkpoint, torch_load
from cgn.core.distributed import init_distributed, shutdown_distributed
from cgn.core.interrupt import StepBoundary
from cgn.core.precision import channels_last, enable_tf32, resolve_precision
from cgn.core.progress import progress
from cgn.core.rundir import RunDir
from cgn.core.seeding import rng_state, set_rng_state
from cgn.core.stats import WindowStats, check_finite
from cgn.errors import CGNError
from cgn.imagenet.config import ImageNetCGNConfig, resolve_sample_classes
from cgn.imagenet.losses import LOSS_NAMES, ImageNetCGNLosses
from cgn.imagenet.model import (CHECKPOINT_KIND, ImageNetCGN, architecture, biggan_config, build_cgn,
                                truncated_noise)
from cgn.imagenet.weights import default_weight_path
from cgn.io import write_bytes_atomic


def step_generator(seed: int, episode: int, micro: int, rank: int) -> torch.Generator:
    """The CPU generator of one micro-step (independent of everything else)."""
    state = np.random.SeedSequence([int(seed), int(episode), int(micro), int(rank)]).generate_state(2)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]) >> 1)


def fixed_noise(cfg: ImageNetCGNConfig, z_dim: int) -> tuple[torch.Tensor, str]:
    """The (1, z_dim) noise of the sample sheets and where it came from."""
    if cfg.train.fixed_noise:
        u = torch_load(cfg.train.fixed_noise, what="fixed noise")
        if not isinstance(u, torch.Tensor) or tuple(u.shape) != (1, z_dim):
            raise CGNError(f"fixed noise {cfg.train.fixed_noise} must be a (1, {z_dim}) tensor")
        return u.float(), cfg.train.fixed_noise
    ref = default_weight_path("fixed_noise")  # `cgn download imagenet-sheet-noise` puts it there
    if ref.is_file():
        u = torch_load(ref, what="fixed noise")
        if isinstance(u, torch.Tensor) and tuple(u.shape) == (1, z_dim):
            return u.float(), "authors' imagenet_u_fixed.pth"
    g = torch.Generator().manual_seed(cfg.train.seed)
    return truncated_noise(1, z_dim, cfg.train.sample_truncation, g), f"seeded (seed {cfg.train.seed})"


@torch.no_grad()
def sample_sheet(model: ImageNetCGN, classes: list[int], u: torch.Tensor, truncation: float) -> torch.Tensor:
    """One row per class: mask, pre-mask, foreground, background, x_gen, x_gt. [3, H, W] in [0, 1]."""
    was = model.training
    model.eval()
    try:
        rows = []
        dev = model.device
        for c in classes:
            y = model.class_vector([c])
            out = model(u.to(dev), y, y, y, truncation)
            imgs = [out.mask.expand(-1, 3, -1, -1)] + [
                (t + 1) / 2 for t in (out.premask, out.foreground, out.background, out.composite(), out.x_gt)]
            rows.append(torch.cat(imgs).clamp(0, 1).float().cpu())
        return make_grid(torch.cat(rows), nrow=6, padding=2, pad_value=1.0)
    finally:
        model.train(was)


def save_png(path: Path, img: torch.Tensor) -> np.ndarray:
    """[3, H, W] in [0, 1] -> PNG, atomically; returns the uint8 [H, W, 3] picture."""
    from PIL import Image

    from cgn.io import atomic_write
    arr = (img.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    with atomic_write(path, "wb") as f:
        Image.fromarray(arr).save(f, format="PNG")
    return arr


class Trainer:
    def __init__(self, cfg: ImageNetCGNConfig, out: str | os.PathLike, *, resume: bool = False,
                 device: str = "auto", quiet: bool = False):
        self.ctx = init_distributed(device)
        self.device = self.ctx.device
        self.out = Path(out)
        self.quiet = quiet
        self._pending: list[str] = []
        ckpt = None
        last = self.out / "checkpoints" / "last.pt"
        if resume and last.is_file():
            ckpt = load_checkpoint(last, kind=CHECKPOINT_KIND)
            stored = to_dict(from_dict(ImageNetCGNConfig, ckpt["config"]))
            # The checkpoint's config, with the changes a resume may make (the run's length).
            diff = resume_diff(ImageNetCGNConfig, stored, to_dict(cfg))
            if diff.conflicts:
                self._log(f"resume: a resume may not change {ResumeDiff.describe(diff.conflicts)}; "
                          "using the stored values")
            cfg = from_dict(ImageNetCGNConfig, diff.apply(stored))
        # the sheet classes, checked against (or chosen from) the BigGAN before the run starts
        n_classes = biggan_config(cfg.model).num_classes
        cfg = override(cfg, {"train.sample_classes":
                             resolve_sample_classes(cfg.train.sample_classes, n_classes)})
        self.cfg = cfg
        if self.ctx.is_main:
            self.run = RunDir(self.out, to_dict(cfg), resume=resume)
            for msg in self._pending:
                self.run.log(msg, echo=not quiet)
        self.ctx.barrier()
        self.model = build_cgn(cfg.model, truncation=cfg.train.sample_truncation).to(self.device)
        channels_last(self.model)
        self.precision = resolve_precision(cfg.train.precision, self.device)
        enable_tf32(self.device)
        self.losses = ImageNetCGNLosses(cfg.loss, autocast_bf16=self.precision.bf16).to(self.device)
        o = cfg.optim
        lrs = {"shape": o.lr_shape, "texture": o.lr_texture, "background": o.lr_background}
        self.opts = {k: torch.optim.Adam(m.parameters(), lr=lrs[k], betas=tuple(o.betas))
                     for k, m in self.model.trainable().items()}
        self.episode = 0
        if ckpt is not None:
            self.model.load_cgn_state(ckpt["model"], f"checkpoint {last}")
            for k, opt in self.opts.items():
                opt.load_state_dict(ckpt["optim"][k])
            self.episode = int(ckpt["step"])
            if ckpt.get("rng"):
                set_rng_state(ckpt["rng"])
            ws = ckpt.get("extra", {}).get("world_size", 1)
            if ws != self.ctx.world_size:
                self._log(f"resume: checkpoint was written by {ws} process(es), now "
                          f"{self.ctx.world_size}; training continues but is not the same run")
            if self.ctx.is_main:
                self.run.truncate_metrics(self.episode)
            self._log(f"resumed from {last} at episode {self.episode}")
        elif resume and self.ctx.is_main:  # stopped before its first checkpoint: start over
            self.run.truncate_metrics(-1)
        self.model.train()
        self.net: torch.nn.Module = self.model
        if self.ctx.enabled:
            import inspect

            from torch.nn.parallel import DistributedDataParallel as DDP
            # Sync everything once at start, not the (large, constant) buffers at every step.
            no_buf = ({"forward_sync_buffers": False}
                      if "forward_sync_buffers" in inspect.signature(DDP).parameters
                      else {"broadcast_buffers": False})
            self.net = DDP(self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                           **no_buf)
        self.u_fixed, self.u_fixed_source = fixed_noise(cfg, self.model.z_dim)
        if self.ctx.is_main and ckpt is None:
            self._log(f"ImageNet CGN: preset {cfg.preset}, BigGAN {cfg.model.biggan or 'random ' + cfg.model.biggan_arch}, "
                      f"U2-Net {cfg.model.u2net or 'random ' + cfg.model.u2net_arch}, features "
                      f"{self.losses.source.describe() if self.losses.source else '?'}, "
                      f"sheet noise {self.u_fixed_source}, {self.ctx.world_size} process(es) on {self.device}, "
                      f"precision {self.precision.name} ({self.precision.reason})")

    def _log(self, msg: str) -> None:
        if not self.ctx.is_main:
            return
        if hasattr(self, "run"):
            self.run.log(msg, echo=not self.quiet)
        else:
            self._pending.append(msg)

    # -- one update ------------------------------------------------------------------------------
    def micro_step(self, micro: int, rank: int, scale: float, sync: bool = True) -> dict[str, float]:
        """Forward and backward of one micro-step's samples (those of ``rank``), loss × ``scale``.

        Returns the weighted loss terms and the mean mask (``mu_mask``), for logging.
        """
        t = self.cfg.train
        g = step_generator(t.seed, self.episode, micro, rank)
        classes = torch.randint(self.model.n_classes, (t.batch_size,), generator=g)
        u = truncated_noise(t.batch_size, self.model.z_dim, t.truncation, g).to(self.device)
        y = self.model.class_vector(classes)
        ctx = contextlib.nullcontext() if sync or not self.ctx.enabled else self.net.no_sync()  # type: ignore[operator]
        with ctx:
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision.bf16):
                out = self.net(u, y, y, y, t.truncation)
            out = out.float()  # the losses in float32 (their VGG forward in bf16 with bf16)
            terms = self.losses(out.composite(), out.x_gt, out.mask, out.foreground,
                                out.background_mask, generator=g)
            total = terms.total()
            if not torch.isfinite(total):
                raise CGNError(f"non-finite loss at episode {self.episode}, micro-step {micro}: "
                               + ", ".join(f"{k}={v.item():.4g}" for k, v in terms.weighted.items())
                               + "; lower the learning rates or check the weights")
            (total * scale).backward()
        return {**{k: v.item() for k, v in terms.weighted.items()}, "mu_mask": out.mask.mean().item()}

    def step_optimizers(self) -> None:
        for opt in self.opts.values():
            opt.step()
            opt.zero_grad(set_to_none=True)
        self.episode += 1

    def train_episode(self) -> dict[str, float]:
        t = self.cfg.train
        window = WindowStats()  # one metrics row per episode: the mean over its micro-steps
        for micro in range(t.batch_acc):
            window.add(self.micro_step(micro, self.ctx.rank, 1.0 / t.batch_acc,
                                       sync=micro == t.batch_acc - 1))
        self.step_optimizers()
        w = window.flush()  # this rank's means; every rank ran batch_acc micro-steps
        local = torch.tensor([w.means[k] for k in (*LOSS_NAMES, "mu_mask")], dtype=torch.float64)
        means = self.ctx.all_reduce_mean(local).cpu()
        rec = {"step": self.episode}
        rec.update({f"loss/{k}": float(v) for k, v in zip(LOSS_NAMES, means[:-1])})
        rec["loss/total"] = float(means[:-1].sum())
        rec["mu_mask"] = float(means[-1])
        rec["seconds"] = round(w.seconds, 3)
        return rec

    # -- outputs ---------------------------------------------------------------------------------
    def save_sheet(self) -> Path:
        img = sample_sheet(self.model, self.cfg.train.sample_classes, self.u_fixed,
                           self.cfg.train.sample_truncation)
        path = self.run.samples / f"sheet_ep{self.episode:07d}.png"
        self.run.image("samples", save_png(path, img), self.episode)
        return path

    def save(self) -> Path:
        extra = {"world_size": self.ctx.world_size, "sheet_noise": self.u_fixed_source,
                 "precision": self.precision.as_dict(),
                 "feature_extractor": self.losses.source.as_dict() if self.losses.source else {},
                 "architecture": architecture(self.model)}
        path = self.run.checkpoints / "last.pt"
        save_checkpoint(path, kind=CHECKPOINT_KIND, step=self.episode, config=to_dict(self.cfg),
                        model=self.model.state_dict(),
                        optim={k: o.state_dict() for k, o in self.opts.items()},
                        rng=rng_state(), extra=extra)
        self.run.flush()
        return path

    def run_training(self) -> list[dict]:
        # Ctrl-C / SIGTERM end the episode in flight (on every rank), then checkpoint it.
        try:
            with StepBoundary() as stop:
                return self._run_episodes(stop)
        finally:
            if self.ctx.is_main:
                self.run.close()  # TensorBoard's events, also when stopped

    def _run_episodes(self, stop: StepBoundary) -> list[dict]:
        t = self.cfg.train
        records = []
        bar = progress(range(self.episode, t.episodes), total=t.episodes - self.episode,
                       desc="CGN episodes") if self.ctx.is_main else range(self.episode, t.episodes)
        for _ in bar:
            rec = self.train_episode()
            check_finite(rec, self.episode, self.run.checkpoints / "last.pt" if self.ctx.is_main else None)
            records.append(rec)
            last = self.episode == t.episodes
            halt = stop.requested is not None
            if self.ctx.enabled:  # every rank stops after the same episode
                halt = bool(self.ctx.all_reduce_sum(torch.tensor([float(halt)], device=self.device)).item())
            if self.ctx.is_main:
                self.run.metric(rec)
                self._log(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                   for k, v in rec.items()))
                if self.episode % t.sample_every == 0 or last:
                    self.save_sheet()
                keep = t.keep_every > 0 and self.episode % t.keep_every == 0
                if self.episode % t.save_every == 0 or last or halt or keep:
                    path = self.save()
                    if keep:  # a copy that later episodes do not overwrite
                        write_bytes_atomic(path.with_name(f"ep{self.episode:07d}.pt"), path.read_bytes())
            self.ctx.barrier()
            if halt:
                if self.ctx.is_main:
                    self.run.log(f"stopped by {stop.requested or 'a signal on another rank'} after "
                                 f"episode {self.episode}; checkpoint saved, rerun with --resume")
                stop.raise_()
        return records


def train(cfg: ImageNetCGNConfig, out: str | os.PathLike, *, resume: bool = False,
          device: str = "auto", quiet: bool = False) -> list[dict]:
    trainer = Trainer(cfg, out, resume=resume, device=device, quiet=quiet)
    try:
        return trainer.run_training()
    finally:
        shutdown_distributed(trainer.ctx)
