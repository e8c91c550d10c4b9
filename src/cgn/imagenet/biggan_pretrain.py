"""Training a BigGAN-deep stand-in as a GAN (``cgn imagenet pretrain biggan``).

One step, batch B per process, K classes (docs/imagenet_cgn.md, "Training a BigGAN-deep
stand-in"; the settings: docs/reference.md#biggan-deep-stand-in)::

    d_steps times:  x_gen = G(u, y) without gradients, u ~ N(0, 1) truncated to [-2, 2],
                    y ~ U{0..K-1};  a real batch (x, y_x) in the data order
                    L_D = mean relu(1 - D(x, y_x)) + mean relu(1 + D(x_gen, y))    (hinge)
                    one D forward on [x_gen; x] (D has no BatchNorm: the same as two)
    G:              L_G = -mean D(G(u', y'), y')   with D's parameters frozen
    EMA:            G_ema <- ema_decay G_ema + (1 - ema_decay) G   (a copy before ema_start)

G is :class:`cgn.imagenet.biggan.BigGAN` at a small width, normalising with batch statistics
while it trains; D is :class:`cgn.imagenet.biggan_disc.Discriminator`. The export is the EMA
generator with standing statistics (:mod:`cgn.imagenet.biggan_standing`).

Exact resume: the noise and classes of every D and G step come from a generator seeded by
(seed, step, sub-step, rank), the data order of an epoch is a pure function of (seed, epoch)
(:class:`cgn.core.batches.EpochSampler`), and ``checkpoints/last.pt`` holds G, D, G_ema, both
Adam states and the log window, so a run continued from any checkpoint ends bit-identical to an
uninterrupted one. Several processes (``torchrun``): each rank takes its share of every epoch and
its own noise; DistributedDataParallel averages the gradients; rank 0 writes.

Run directory: ``config.json`` (the data's sha256 under ``resolved``), ``log.txt``,
``metrics.jsonl``, ``samples/sheet_<step>.png`` (EMA samples: one row per class, fixed noise),
``checkpoints/last.pt`` and ``final.pt``, ``biggan/`` (the export) and ``results.json``.
"""

from __future__ import annotations

import contextlib
import copy
import os
import time
from pathlib import Path

import torch

from cgn.config import check_resume, from_dict, to_dict
from cgn.core import runcontrol
from cgn.core.batches import EpochSampler
from cgn.core.checkpoint import load_checkpoint, load_state_dict_strict, save_checkpoint
from cgn.core.distributed import init_distributed, shutdown_distributed
from cgn.core.ema import ema_decay_at, ema_update
from cgn.core.interrupt import StepBoundary
from cgn.core.losses import hinge_discriminator_terms, hinge_generator_loss
from cgn.core.precision import channels_last, enable_tf32, resolve_precision
from cgn.core.progress import progress
from cgn.core.results import write_results
from cgn.core.rundir import RunDir
from cgn.core.seeding import rng_state, seed_everything, set_rng_state
from cgn.core.stats import WindowStats, check_finite
from cgn.errors import CGNError
from cgn.imagenet.biggan import BigGAN, BigGANConfig, tiny_config
from cgn.imagenet.biggan_disc import Discriminator
from cgn.imagenet.biggan_layers import use_batch_statistics
from cgn.imagenet.biggan_pretrain_config import CHECKPOINT_KIND, BigGANPretrainConfig, GANModelConfig
from cgn.imagenet.biggan_standing import (export_generator, prepared_copy, sample_sheet,
                                          save_png, seeded)
from cgn.imagenet.model import truncated_noise
from cgn.imagenet.npzdata import load_labelled_npz
from cgn.io import file_digest, read_json, write_bytes_atomic, write_json_atomic

SHEET_MAX_CLASSES = 32
EXPORT_DIR = "biggan"


def generator_config(m: GANModelConfig) -> BigGANConfig:
    """G's architecture: the BigGAN-deep block pattern of :func:`cgn.imagenet.biggan.tiny_config`."""
    return tiny_config(m.resolution, m.g_width, m.z_dim, m.num_classes, m.n_stats)


def build_models(cfg: BigGANPretrainConfig) -> tuple[BigGAN, Discriminator]:
    """G and D, initialised from ``cfg.train.seed`` (spectral-norm layers orthogonally, G's class
    embedding too), on the CPU."""
    m = cfg.model
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.train.seed)
        g = BigGAN(generator_config(m))
        torch.nn.init.orthogonal_(g.embeddings.weight)
        d = Discriminator(m.resolution, m.d_width, m.num_classes, m.d_attention, eps=g.config.eps)
    return g, d


def stored_config(record: dict) -> BigGANPretrainConfig:
    return from_dict(BigGANPretrainConfig, {k: v for k, v in record.items() if k != "resolved"})


class Trainer:
    def __init__(self, cfg: BigGANPretrainConfig, out: str | os.PathLike, *, resume: bool = False,
                 quiet: bool = False):
        t = cfg.train
        self.ctx = init_distributed(t.device)
        self.device, self.quiet, self.out = self.ctx.device, quiet, Path(out)
        runcontrol.set_threads(t.threads)
        if not t.data:
            raise CGNError("--data FILE.npz is required: the training split (cgn data build ... --split train)")
        self.data = load_labelled_npz(t.data, t.limit_train)
        if cfg.model.num_classes == 0:  # fixed when the run starts
            cfg = from_dict(BigGANPretrainConfig, {**to_dict(cfg), "model": {
                **to_dict(cfg.model), "num_classes": int(self.data.labels.max()) + 1}})
        self.data.check_labels(cfg.model.num_classes)
        if self.data.resolution != cfg.model.resolution:
            raise CGNError(f"{t.data} holds {self.data.resolution}-px images but the model is "
                           f"{cfg.model.resolution} px; pass --resolution {self.data.resolution}")
        self.sampler = EpochSampler(len(self.data), seed=t.seed, batch_size=t.batch_size,
                                    rank=self.ctx.rank, world_size=self.ctx.world_size)
        self.batches_per_epoch = self.sampler.per_rank // t.batch_size
        if self.batches_per_epoch == 0:
            raise CGNError(f"{t.data} holds {len(self.data)} images, fewer than one batch of "
                           f"{t.batch_size} per process; lower --batch-size")
        resolved = {"data_sha256": file_digest(t.data), "images": len(self.data),
                    "device": str(self.device), "world_size": self.ctx.world_size}
        if resume and (self.out / "config.json").is_file():
            cfg = self._check_resume(cfg, resolved)
        self.cfg, t = cfg, cfg.train
        if self.ctx.is_main:
            self.run = RunDir(self.out, {**to_dict(cfg), "resolved": resolved}, resume=resume)
        self.ctx.barrier()

        seed_everything(t.seed)  # nothing draws from the global generators; they are saved anyway
        self.G, self.D = build_models(cfg)
        self.G_ema = copy.deepcopy(self.G).eval().requires_grad_(False)
        use_batch_statistics(self.G, True)  # G trains with batch statistics; G_ema keeps the port's
        self.G, self.D, self.G_ema = (m.to(self.device) for m in (self.G, self.D, self.G_ema))
        channels_last(self.G, self.D, self.G_ema)
        o = cfg.optim
        adam = dict(betas=tuple(o.betas), eps=o.adam_eps, fused=self.device.type in ("cpu", "cuda"))
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=o.lr_g, **adam)
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=o.lr_d, **adam)
        self.precision = resolve_precision(t.precision, self.device)
        enable_tf32(self.device)
        self.G_net, self.D_net = self.G, self.D
        if self.ctx.enabled:
            import inspect

            from torch.nn.parallel import DistributedDataParallel as DDP
            # the buffers (spectral-norm vectors) evolve alike on every rank: no sync per forward
            no_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in
                       inspect.signature(DDP).parameters else {"broadcast_buffers": False})
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.G_net = DDP(self.G, device_ids=ids, **no_sync)
            self.D_net = DDP(self.D, device_ids=ids, **no_sync)

        self._order_epoch, self._order = -1, torch.zeros(0, dtype=torch.long)
        k = cfg.model.num_classes
        self.sheet_classes = list(range(min(k, SHEET_MAX_CLASSES)))
        self.sheet_noise = truncated_noise(t.sample_per_class, cfg.model.z_dim, t.sample_truncation,
                                           seeded(t.seed, 2))
        self.step, self.elapsed = 0, 0.0
        self.window = WindowStats(t.log_every)
        last = self.out / "checkpoints" / "last.pt"
        if resume and last.is_file():
            self._restore(last)
        elif resume and self.ctx.is_main:  # stopped before its first checkpoint: start over
            self.run.truncate_metrics(0)

    # -- config, checkpoints -----------------------------------------------------------------------
    def _check_resume(self, cfg: BigGANPretrainConfig, resolved: dict) -> BigGANPretrainConfig:
        path = self.out / "config.json"
        record = read_json(path, "run config")
        stored = to_dict(stored_config(record["config"]))
        diff = check_resume(BigGANPretrainConfig, stored, to_dict(cfg),
                            f"--resume: the run in {self.out} was started with other settings")
        old = record["config"].get("resolved", {})
        if old.get("data_sha256") not in (None, resolved["data_sha256"]):
            raise CGNError(f"--resume: {cfg.train.data} is not the data the run in {self.out} "
                           "started with (its sha256 differs); pass that file or choose another --out")
        merged = from_dict(BigGANPretrainConfig, diff.apply(stored))
        if diff.allowed and self.ctx.is_main:
            record["config"] = {**to_dict(merged), "resolved": old}
            record.setdefault("resume_changes", []).append({k: v for k, (_, v) in diff.allowed.items()})
            write_json_atomic(path, record)
        return merged

    def save(self, name: str = "last.pt") -> Path:
        path = self.run.checkpoints / name
        extra = {"discriminator": self.D.state_dict(), "generator_ema": self.G_ema.state_dict(),
                 "window": self.window.state_dict(), "window_steps": self.window.steps,
                 "elapsed": self.elapsed, "world_size": self.ctx.world_size}
        save_checkpoint(path, kind=CHECKPOINT_KIND, step=self.step, config=to_dict(self.cfg),
                        model=self.G.state_dict(), rng=rng_state(), extra=extra,
                        optim={"generator": self.opt_g.state_dict(), "discriminator": self.opt_d.state_dict()})
        return path

    def _restore(self, path: Path) -> None:
        ck = load_checkpoint(path, kind=CHECKPOINT_KIND)
        ex = ck["extra"]
        load_state_dict_strict(self.G, ck["model"], f"checkpoint {path}")
        load_state_dict_strict(self.D, ex["discriminator"], f"checkpoint {path}")
        load_state_dict_strict(self.G_ema, ex["generator_ema"], f"checkpoint {path}")
        self.opt_g.load_state_dict(ck["optim"]["generator"])
        self.opt_d.load_state_dict(ck["optim"]["discriminator"])
        self.window.load_state_dict(ex["window"], int(ex["window_steps"]))
        self.step, self.elapsed = int(ck["step"]), float(ex["elapsed"])
        set_rng_state(ck["rng"])
        if int(ex.get("world_size", 1)) != self.ctx.world_size:
            self._log(f"resume: the checkpoint was written by {ex.get('world_size')} process(es), now "
                      f"{self.ctx.world_size}; training continues but is not the same run")
        if self.ctx.is_main:
            self.run.truncate_metrics(self.step)
        self._log(f"resumed from {path} at step {self.step}")

    def _log(self, msg: str) -> None:
        if self.ctx.is_main:
            self.run.log(msg, echo=not self.quiet)

    # -- one step ---------------------------------------------------------------------------------
    def autocast(self):
        if not self.precision.bf16:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def _real_batch(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``k``-th real batch of this rank (k counts D steps over the whole run)."""
        epoch, i = divmod(k, self.batches_per_epoch)
        if epoch != self._order_epoch:
            order = self.sampler.sequence(epoch)[0]
            self._order, self._order_epoch = order[self.ctx.rank::self.ctx.world_size], epoch
        b = self.cfg.train.batch_size
        return self.data.batch(self._order[i * b:(i + 1) * b], self.device)

    def _latents(self, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        b = self.cfg.train.batch_size
        y = torch.randint(self.cfg.model.num_classes, (b,), generator=g)
        u = truncated_noise(b, self.cfg.model.z_dim, 1.0, g)
        return u.to(self.device), y.to(self.device)

    def train_step(self) -> dict[str, torch.Tensor]:
        t, o, b = self.cfg.train, self.cfg.optim, self.cfg.train.batch_size
        for j in range(o.d_steps):
            g = seeded(t.seed, 1, self.step, j, self.ctx.rank)
            x_real, y_real = self._real_batch(self.step * o.d_steps + j)
            u, y = self._latents(g)
            with torch.no_grad(), self.autocast():
                x_gen = self.G(u, self.G.class_vector(y), 1.0)
            self.opt_d.zero_grad(set_to_none=True)
            with self.autocast():
                out = self.D_net(torch.cat([x_gen.to(x_real.dtype), x_real]), torch.cat([y, y_real]))
            d_fake, d_real = out.float().split(b)
            real_term, fake_term = hinge_discriminator_terms(d_real, d_fake)
            loss_d = real_term + fake_term
            loss_d.backward()
            self.opt_d.step()

        u, y = self._latents(seeded(t.seed, 1, self.step, o.d_steps, self.ctx.rank))
        self.opt_g.zero_grad(set_to_none=True)
        self.D.requires_grad_(False)
        with self.autocast():
            d_gen = self.D(self.G_net(u, self.G.class_vector(y), 1.0), y)
        loss_g = hinge_generator_loss(d_gen.float())
        loss_g.backward()
        self.opt_g.step()
        self.D.requires_grad_(True)
        ema_update(self.G_ema, self.G, ema_decay_at(self.step, t.ema_decay, t.ema_start))
        return {"d_loss": loss_d.detach(), "d_real": real_term.detach(), "d_fake": fake_term.detach(),
                "g_loss": loss_g.detach(), "logit_real": d_real.detach().mean(),
                "logit_fake": d_fake.detach().mean()}

    # -- outputs ------------------------------------------------------------------------------------
    def save_sheet(self, name: str | None = None) -> Path:
        t = self.cfg.train
        g = prepared_copy(self.G_ema, t.batch_size, 1, t.seed, [t.sample_truncation])
        path = self.run.samples / (name or f"sheet_{self.step:07d}.png")
        save_png(path, sample_sheet(g, self.sheet_classes, self.sheet_noise, t.sample_truncation))
        return path

    def fit(self) -> dict:
        t, main = self.cfg.train, self.ctx.is_main
        if self.step == 0 and main:
            n_g, n_d = (sum(p.numel() for p in m.parameters()) for m in (self.G, self.D))
            self._log(f"BigGAN-deep stand-in: {t.steps} steps of batch {t.batch_size} x "
                      f"{self.ctx.world_size} process(es) on {self.device}, {len(self.data)} images "
                      f"of {self.cfg.model.num_classes} classes ({self.batches_per_epoch} batches per "
                      f"epoch); G {n_g:,} / D {n_d:,} parameters; precision {self.precision.name} "
                      f"({self.precision.reason})")
            self.save_sheet()
        bar = progress(total=t.steps, initial=self.step, desc="pretrain biggan") if main else None
        self.window.restart_clock()
        # Ctrl-C / SIGTERM end the step in flight (on every rank), then checkpoint it.
        with StepBoundary() as stop, (bar or contextlib.nullcontext()):
            while self.step < t.steps:
                t0 = time.perf_counter()
                rec = self.train_step()
                check_finite(rec, self.step + 1, self.run.checkpoints / "last.pt" if main else None)
                self.step += 1
                self.elapsed += time.perf_counter() - t0
                self.window.add(rec)
                if bar is not None:
                    bar.update(1)
                if self.window.ready(self.step, last=self.step == t.steps):
                    w = self.window.flush(self.ctx)
                    if main:
                        self.run.metric({"step": self.step, "epoch": round(
                            self.step * self.cfg.optim.d_steps / self.batches_per_epoch, 4),
                            **w.means, "sec_per_step": w.sec_per_step})
                        if bar is not None:
                            bar.set_postfix(d=f"{w.means['d_loss']:.3f}", g=f"{w.means['g_loss']:.3f}")
                halt = stop.requested is not None
                if self.ctx.enabled:  # every rank stops after the same step
                    flag = torch.tensor([float(halt)], device=self.device)
                    halt = bool(self.ctx.all_reduce_sum(flag).item())
                more = self.step < t.steps  # the last step's sheet and checkpoint: finish()
                if main and more and self.step % t.sample_every == 0:
                    self.save_sheet()
                if main and (halt or more and self.step % t.checkpoint_every == 0):
                    self.save()
                if halt:
                    self.ctx.barrier()
                    self._log(f"stopped by {stop.requested or 'a signal on another rank'} after step "
                              f"{self.step}; checkpoint saved, rerun with --resume")
                    stop.raise_()
        return self.finish()

    def finish(self) -> dict:
        t = self.cfg.train
        results: dict = {}
        if self.ctx.is_main:
            self.save_sheet("final.png")
            last = self.save()
            write_bytes_atomic(last.with_name("final.pt"), last.read_bytes())
            folder = export_generator(self.G_ema, self.out / EXPORT_DIR, t.batch_size, t.stats_batches, t.seed)
            rows = self.run.metrics()
            results = {
                "preset": self.cfg.preset, "steps": self.step, "images": len(self.data),
                "epochs": round(self.step * self.cfg.optim.d_steps / self.batches_per_epoch, 3),
                "num_classes": self.cfg.model.num_classes, "resolution": self.cfg.model.resolution,
                "parameters": {"generator": sum(p.numel() for p in self.G.parameters()),
                               "discriminator": sum(p.numel() for p in self.D.parameters())},
                "precision": self.precision.as_dict(), "device": str(self.device),
                "world_size": self.ctx.world_size, "threads": torch.get_num_threads(),
                "train_seconds": round(self.elapsed, 1),
                "sec_per_step": round(self.elapsed / max(1, self.step), 4),
                "final_losses": {k: v for k, v in (rows[-1] if rows else {}).items()
                                 if k not in ("step", "epoch", "sec_per_step")},
                "biggan": str(folder.resolve()),
            }
            write_results(self.out, results)
            self._log(f"done: {self.step} steps in {self.elapsed / 60:.1f} min; the EMA generator is "
                      f"in {folder} (cgn imagenet train --biggan {folder})")
        self.ctx.barrier()
        return results


def train(cfg: BigGANPretrainConfig, out: str | os.PathLike, *, resume: bool = False,
          quiet: bool = False) -> dict:
    trainer = Trainer(cfg, out, resume=resume, quiet=quiet)
    try:
        return trainer.fit()
    finally:
        shutdown_distributed(trainer.ctx)


def export_checkpoint(source: str | os.PathLike, folder: str | os.PathLike) -> Path:
    """Export the EMA generator of a run (its ``final.pt``, else ``last.pt``) or of a checkpoint."""
    p = Path(source).expanduser()
    if p.is_dir():
        p = next((c for c in (p / "checkpoints" / "final.pt", p / "checkpoints" / "last.pt") if c.is_file()),
                 p / "checkpoints" / "last.pt")
    ck = load_checkpoint(p, kind=CHECKPOINT_KIND)
    cfg = stored_config(ck["config"])
    g = BigGAN(generator_config(cfg.model))
    load_state_dict_strict(g, ck["extra"]["generator_ema"], f"checkpoint {p}")
    t = cfg.train
    return export_generator(g, folder, t.batch_size, t.stats_batches, t.seed)
