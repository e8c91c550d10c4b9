"""Training the MNIST CGN (the original's loop, made fast on CPUs and exactly resumable).

One step, batch B (labels y_gen uniform, one noise vector shared by the three mechanisms):

    generator:      x_gen = compose(m, f, b)
                    L_G = LSGAN(D(x_gen, y_gen) -> 1)
                        + lambda_mask * mean binary entropy(m)
                        + sum_i w_i^2 * 5000 * L1(Gram_i(x_gen), Gram_i(x_real))   (VGG16 stages)
                        [+ ssim_weight * (1 - SSIM(x_gen, x_real))]                 (study)
                        [+ border_weight * mean(m on the image frame)]              (border loss)
    discriminator:  L_D = (LSGAN(D(x_real, y_real) -> 1) + LSGAN(D(x_gen, y_gen) -> 0)) / 2
    Adam(2e-4, (0.5, 0.999)) for both.
    [EMA:           G_ema <- ema_decay G_ema + (1 - ema_decay) G   (train.ema_decay > 0; a copy
                    before train.ema_start); G_ema is then what the run samples from and saves]

What differs from the original, none of it changing the losses: the real batch's VGG features
are computed without gradients, stages with weight 0 are skipped and the VGG stops at the
deepest stage needed; D's parameters do not collect gradients in the generator step; the data
set lives in memory as one uint8 tensor indexed by batch (no per-item loading); optionally the
VGG forward runs under bfloat16 autocast (``loss.precision``: bf16, or auto where it is faster),
and so, with ``train.gan_precision`` bf16, do the generator's and discriminator's passes.

Exact resume: the run directory's ``checkpoints/last.pt`` holds models, optimisers, the data
generator's state, every global RNG, the timeline and the running loss sums; the data order is a
pure function of (seed, epoch). A run continued from any checkpoint ends bit-identical to an
uninterrupted one.

Run directory (``cgn.core.rundir.RunDir``): ``config.json`` (the resolved config, including the
feature extractor actually used), ``log.txt``, ``metrics.jsonl``, ``samples/`` (sample grids at
fixed noise: composite, mask, foreground, background; ``mask_timeline.png`` / ``.npz``),
``tb/`` (TensorBoard: the metrics lines' numbers and the step grids), ``checkpoints/last.pt`` and,
when done, ``checkpoints/final.pt`` and ``results.json``.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from pathlib import Path

import numpy as np
import torch

from cgn.config import check_resume, to_dict
from cgn.core import runcontrol
from cgn.core.checkpoint import load_checkpoint, save_checkpoint
from cgn.core.device import resolve_device
from cgn.core.ema import ema_decay_at, ema_update
from cgn.core.losses import (STYLE_SCALE, StyleLoss, lsgan_discriminator_loss, lsgan_generator_loss,
                             mask_binary_entropy, mask_border_loss, ssim_loss, style_loss_probe)
from cgn.core.perceptual import FeatureSource, load_vgg16
from cgn.core.precision import resolve_precision
from cgn.core.interrupt import StepBoundary
from cgn.core.progress import progress
from cgn.core.results import write_results
from cgn.core.rundir import RunDir
from cgn.core.sampling import eval_mode
from cgn.core.seeding import rng_state, seed_everything, set_rng_state
from cgn.core.stats import WindowStats, check_finite
from cgn.errors import CGNError
from cgn.io import read_json, save_npz_atomic, write_json_atomic
from cgn.mnist.config import CGNTrainConfig, config_from_dict
from cgn.mnist.discriminator import build_discriminator
from cgn.mnist.figures import save_sample_grid, save_timeline_figure
from cgn.mnist.model import CHECKPOINT_KIND, CGNOutput, MnistCGN
from cgn.mnist.quality import evaluate_generator

GRID_ROWS = 4           # sample grid: 10 classes x GRID_ROWS fixed noise vectors
TIMELINE_PER_CLASS = 2  # mask timeline: 10 classes x 2 fixed noise vectors


def _sub_seed(seed: int, *key: int) -> int:
    return int(np.random.SeedSequence([int(seed), *key]).generate_state(1, dtype=np.uint64)[0] >> 1)


# --- data --------------------------------------------------------------------------------------

class InMemoryData:
    """The training split as one uint8 tensor [N, 3, 32, 32]; batches by index, no per-item work."""

    def __init__(self, dataset: str, seed: int, limit: int | None, textures: str | None = None):
        from cgn.mnist.variants import load_split
        split = load_split(dataset, "train", seed=seed, textures=textures)
        images, labels = split["images"], split["labels"]
        if limit is not None:
            images, labels = images[:limit], labels[:limit]
        self.images = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()
        self.labels = torch.from_numpy(np.asarray(labels, dtype=np.int64))
        self.meta = split.get("meta", {})

    def __len__(self) -> int:
        return self.labels.shape[0]

    def batch(self, idx: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.images[idx].to(device=device, dtype=torch.float32).div_(127.5).sub_(1.0)  # [B,3,32,32]
        return x, self.labels[idx].to(device)


def background_bias_from_data(images: torch.Tensor, max_images: int = 5000) -> torch.Tensor:
    """uint8 images [N, 3, H, W] -> [3] = atanh(per-channel median pixel in [-1, 1]), clipped to
    |x| <= 0.995 (|bias| <= 3). Digits cover about a fifth of an MNIST image, so the median pixel
    is background: black in colored MNIST, where tanh only reaches it at a large negative
    pre-activation. See docs/mnist_cgn.md ('Colored MNIST')."""
    x = images[:max_images].permute(1, 0, 2, 3).reshape(images.shape[1], -1)
    med = x.median(dim=1).values.float() / 127.5 - 1.0
    return torch.atanh(med.clamp(-0.995, 0.995))


# --- the trainer -------------------------------------------------------------------------------

class Trainer:
    def __init__(self, cfg: CGNTrainConfig, out: str | Path, resume: bool = False):
        self.out = Path(out)
        self.device = resolve_device(cfg.train.device)
        runcontrol.set_threads(cfg.train.threads)
        resumed = resume and (self.out / "config.json").exists()
        if resumed:
            cfg = self._check_resume_config(cfg)
            self.extractor, self.feature_source = self._load_extractor(cfg)
        else:
            self.extractor, self.feature_source = self._load_extractor(cfg)
            cfg = self._pin_extractor(cfg, self.feature_source)
        self.cfg = cfg
        self.run = RunDir(self.out, self._config_record(cfg), resume=resume)
        t = cfg.train

        # models (init from the seed, so a fresh run is a pure function of the config)
        seed_everything(t.seed)
        # channels_last conv weights: the layout oneDNN's (and cuDNN's) convolutions run fastest
        # in; the same function and state dict. Fused Adam: one kernel per step, same update.
        self.G = MnistCGN(cfg.model).to(self.device, memory_format=torch.channels_last)
        self.D = build_discriminator(cfg.model.disc, cfg.model.n_classes, cfg.model.ndf).to(
            self.device, memory_format=torch.channels_last)
        betas = tuple(cfg.optim.betas)
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=cfg.optim.lr, betas=betas, fused=True)
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=cfg.optim.lr, betas=betas, fused=True)
        self.G_ema = copy.deepcopy(self.G).requires_grad_(False) if t.ema_decay > 0 else None
        self.precision = resolve_precision(cfg.loss.precision, self.device, probe=style_loss_probe(
            cfg.loss.style_weights, t.batch_size, cfg.model.img_size))
        self.style = StyleLoss(self.extractor.to(self.device), cfg.loss.style_weights, autocast_bf16=self.precision.bf16,
                               scale=STYLE_SCALE * cfg.loss.feature_scale ** 2)

        # data and schedule
        self.data = InMemoryData(t.dataset, t.data_seed, t.limit_train, t.textures)
        self.steps_per_epoch = len(self.data) // t.batch_size
        if self.steps_per_epoch == 0:
            raise CGNError(f"the training split holds {len(self.data)} images, fewer than one batch "
                           f"of {t.batch_size}; lower --batch-size or raise --limit-train")
        self.total_steps = t.max_steps if t.max_steps is not None else t.epochs * self.steps_per_epoch
        self.data_gen = torch.Generator().manual_seed(_sub_seed(t.seed, 1))

        # fixed inputs for sample grids and the mask timeline
        g = torch.Generator().manual_seed(_sub_seed(t.seed, 2))
        k = cfg.model.n_classes
        self.grid_inputs = self._fixed_inputs(torch.arange(k).repeat(GRID_ROWS), g)
        self.timeline_inputs = self._fixed_inputs(torch.arange(k).repeat_interleave(TIMELINE_PER_CLASS), g)
        self.timeline_steps: list[int] = []
        self.timeline_masks: list[np.ndarray] = []

        self.freeze_d_in_g_step = True  # D's parameters collect no gradients in the G step
        self.step = 0
        self.window = WindowStats(t.log_every)  # the running loss sums of the log window
        self.elapsed = 0.0  # training seconds over all sessions
        self.resumed_from: int | None = None
        if resumed and self.run.latest_checkpoint() is not None:
            self._restore(self.run.latest_checkpoint())
        elif resumed:  # stopped before its first checkpoint: start over, keep no stale metrics
            self.run.truncate_metrics(-1)  # (nor TensorBoard's step-0 grid: it is drawn again)
        if self.resumed_from is None and cfg.model.background_bias == "data":  # a fresh start
            bias = background_bias_from_data(self.data.images)
            with torch.no_grad():
                self.G.background.output_norm.bias.copy_(bias)
            self.run.log(f"background output bias initialised from the data: {bias.tolist()}", echo=False)
        if self.G_ema is not None and self.resumed_from is None:
            ema_update(self.G_ema, self.G, 0.0)  # the average starts from G's initial weights

    @property
    def sampler(self) -> MnistCGN:
        """The generator the run samples from and saves as its CGN: the EMA when there is one."""
        return self.G if self.G_ema is None else self.G_ema

    # -- config handling --

    @staticmethod
    def _load_extractor(cfg: CGNTrainConfig):
        lc = cfg.loss
        return load_vgg16(lc.feature_extractor, weights=lc.vgg_weights, seed=lc.vgg_seed,
                          allow_download=lc.allow_download)

    @staticmethod
    def _pin_extractor(cfg: CGNTrainConfig, src: FeatureSource) -> CGNTrainConfig:
        """Replace 'auto' by the source actually used, so a resume uses the same features."""
        if cfg.loss.feature_extractor == "auto":
            loss = dataclasses.replace(cfg.loss, feature_extractor=src.kind)
            return dataclasses.replace(cfg, loss=loss)
        return cfg

    def _config_record(self, cfg: CGNTrainConfig) -> dict:
        return {**to_dict(cfg), "resolved": {"feature_extractor": self.feature_source.as_dict(),
                                             "device": str(self.device)}}

    def _check_resume_config(self, cfg: CGNTrainConfig) -> CGNTrainConfig:
        stored_record = read_json(self.out / "config.json", "run config")
        # parsed and re-serialised: fields added since the run started take their defaults
        stored = config_from_dict({k: v for k, v in stored_record["config"].items() if k != "resolved"})
        stored_dict = to_dict(stored)
        new_dict = to_dict(cfg)
        if cfg.loss.feature_extractor == "auto":  # resolved when the run started
            new_dict["loss"]["feature_extractor"] = stored_dict["loss"]["feature_extractor"]
        diff = check_resume(CGNTrainConfig, stored_dict, new_dict,
                            f"--resume: the run in {self.out} was started with a different config")
        if diff.allowed:
            merged = config_from_dict(diff.apply(stored_dict))
            record = {**stored_record, "config": {**to_dict(merged), "resolved": stored_record["config"].get("resolved", {})}}
            record.setdefault("resume_changes", []).append({k: v for k, (_, v) in diff.allowed.items()})
            write_json_atomic(self.out / "config.json", record)
            return merged
        return stored

    def _fixed_inputs(self, labels: torch.Tensor, g: torch.Generator) -> dict[str, torch.Tensor]:
        inp = self.G.sample_inputs(len(labels), g, self.device)
        inp["labels"] = labels.to(self.device)
        return inp

    # -- checkpoints --

    def _save(self, name: str = "last.pt") -> None:
        extra = {
            **({"generator": self.G.state_dict()} if self.G_ema is not None else {}),  # G_ema is the model
            "discriminator": self.D.state_dict(),
            "data_generator": self.data_gen.get_state(),
            "feature_extractor": self.feature_source.as_dict(),
            "elapsed": self.elapsed, "sums": self.window.running_sums(), "sum_count": self.window.steps,
            "timeline_steps": torch.tensor(self.timeline_steps, dtype=torch.int64),
            "timeline_masks": torch.from_numpy(np.stack(self.timeline_masks)) if self.timeline_masks
            else torch.zeros(0),
        }
        save_checkpoint(self.run.checkpoints / name, kind=CHECKPOINT_KIND, step=self.step,
                        config=to_dict(self.cfg), model=self.sampler.state_dict(),
                        optim={"generator": self.opt_g.state_dict(), "discriminator": self.opt_d.state_dict()},
                        rng=rng_state(), extra=extra)
        self.run.flush()

    def _restore(self, path: Path) -> None:
        ckpt = load_checkpoint(path, kind=CHECKPOINT_KIND)
        if self.G_ema is not None:
            if "generator" not in ckpt["extra"]:
                raise CGNError(f"checkpoint {path} holds no generator beside its EMA; it was not "
                               "written by a run with train.ema_decay > 0")
            self.G.load_weights(ckpt["extra"]["generator"], f"checkpoint {path}")
            self.G_ema.load_weights(ckpt["model"], f"checkpoint {path} (EMA)")
        else:
            self.G.load_weights(ckpt["model"], f"checkpoint {path}")
        self.D.load_state_dict(ckpt["extra"]["discriminator"])
        self.opt_g.load_state_dict(ckpt["optim"]["generator"])
        self.opt_d.load_state_dict(ckpt["optim"]["discriminator"])
        self.data_gen.set_state(ckpt["extra"]["data_generator"])
        set_rng_state(ckpt["rng"])
        self.step = int(ckpt["step"])
        ex = ckpt["extra"]
        self.elapsed = float(ex["elapsed"])
        self.window.load_running_sums(ex["sums"], int(ex["sum_count"]))
        self.timeline_steps = [int(s) for s in ex["timeline_steps"].tolist()]
        self.timeline_masks = list(ex["timeline_masks"].numpy()) if self.timeline_steps else []
        self.run.truncate_metrics(self.step)
        self.resumed_from = self.step
        self.run.log(f"resumed from {path} at step {self.step}")

    # -- one step --

    def _batch_indices(self, step: int) -> torch.Tensor:
        epoch, i = divmod(step, self.steps_per_epoch)
        perm = torch.randperm(len(self.data), generator=torch.Generator().manual_seed(_sub_seed(self.cfg.train.seed, 3, epoch)))
        b = self.cfg.train.batch_size
        return perm[i * b:(i + 1) * b]

    def _gan_autocast(self):
        """bf16 autocast around G's and D's passes when ``train.gan_precision`` is bf16."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16,
                              enabled=self.cfg.train.gan_precision == "bf16")

    def _score(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """D's score [B] in fp32, its pass at ``train.gan_precision``."""
        with self._gan_autocast():
            return self.D(x, labels).float()

    def train_step(self) -> dict[str, float]:
        lc, b = self.cfg.loss, self.cfg.train.batch_size
        x_real, y_real = self.data.batch(self._batch_indices(self.step), self.device)
        inp = self.G.sample_inputs(b, self.data_gen, self.device)
        self.G.train()
        self.D.train()

        # generator
        self.opt_g.zero_grad(set_to_none=True)
        self.D.requires_grad_(not self.freeze_d_in_g_step)
        with self._gan_autocast():
            out = self.G(**inp)
        out = CGNOutput(**{k: v.float() for k, v in vars(out).items()})  # losses in fp32
        losses = {"g_adv": lsgan_generator_loss(self._score(out.composite, inp["labels"]))}
        losses["g_mask"] = lc.mask_weight * mask_binary_entropy(out.mask)
        style, parts = self.style(out.composite, x_real)
        losses["g_style"] = style
        if lc.ssim_weight > 0:
            losses["g_ssim"] = lc.ssim_weight * ssim_loss(out.composite, x_real)
        if lc.border_weight > 0:
            losses["g_border"] = lc.border_weight * mask_border_loss(out.mask, lc.border_width)
        loss_g = sum(losses.values())
        loss_g.backward()
        self.opt_g.step()
        if self.G_ema is not None:
            ema_update(self.G_ema, self.G, ema_decay_at(self.step, self.cfg.train.ema_decay,
                                                        self.cfg.train.ema_start))
        self.D.requires_grad_(True)

        # discriminator
        self.opt_d.zero_grad(set_to_none=True)
        x_gen = out.composite.detach()
        loss_d = lsgan_discriminator_loss(self._score(x_real, y_real), self._score(x_gen, inp["labels"]))
        loss_d.backward()
        self.opt_d.step()

        rec = {k: float(v.detach()) for k, v in losses.items()}
        rec.update({f"style_{k}": float(v.detach()) for k, v in parts.items()})
        rec["g_total"] = float(loss_g.detach())
        rec["d_loss"] = float(loss_d.detach())
        rec["mask_mean"] = float(out.mask.detach().mean())
        return rec

    def _record_timeline(self) -> None:
        with eval_mode(self.sampler):
            m = self.sampler(**self.timeline_inputs).mask[:, 0].float().cpu().numpy()  # [20, 32, 32]
        self.timeline_steps.append(self.step)
        self.timeline_masks.append(m.astype(np.float32))

    def _write_timeline(self) -> None:
        if not self.timeline_steps:
            return
        steps, masks = np.array(self.timeline_steps), np.stack(self.timeline_masks)
        save_npz_atomic(self.run.samples / "mask_timeline.npz", steps=steps, masks=masks,
                        labels=self.timeline_inputs["labels"].cpu().numpy())
        save_timeline_figure(steps, masks, self.run.samples / "mask_timeline.png",
                             f"{self.cfg.train.dataset}: masks of fixed noise/labels through training")

    def _sample_grid(self) -> None:
        """``samples/step_NNNNNN.png`` of the fixed inputs, also to TensorBoard ("samples")."""
        grid = save_sample_grid(self.sampler, self.grid_inputs, self.run.samples / f"step_{self.step:06d}.png",
                                f"step {self.step}")
        self.run.image("samples", grid, self.step)

    # -- the loop --

    def fit(self) -> dict:
        try:
            return self._fit()
        finally:
            self.run.close()  # TensorBoard's events, also when stopped

    def _fit(self) -> dict:
        t = self.cfg.train
        if self.step == 0:
            self.run.log(f"training {t.dataset}: {self.total_steps} steps of batch {t.batch_size} "
                         f"({self.steps_per_epoch} steps/epoch, {len(self.data)} images) on {self.device}; "
                         f"style features: {self.feature_source.describe()}; VGG precision "
                         f"{self.precision.name} ({self.precision.reason}); generator and discriminator in "
                         f"{t.gan_precision}")
            self._record_timeline()
            self._sample_grid()
        bar = progress(total=self.total_steps, initial=self.step, desc=f"train-cgn {t.dataset}")
        self.window.restart_clock()
        # Ctrl-C / SIGTERM end the step in flight first: the checkpoint then holds exactly the
        # state an uninterrupted run has after that step, so --resume continues bit-identically.
        with StepBoundary() as stop, bar:
            while self.step < self.total_steps:
                t0 = time.perf_counter()
                rec = self.train_step()
                check_finite(rec, self.step + 1, self.run.checkpoints / "last.pt")
                self.step += 1
                self.elapsed += time.perf_counter() - t0
                self.window.add(rec)
                bar.update(1)
                if self.window.ready(self.step, last=self.step == self.total_steps):
                    w = self.window.flush()
                    row = {"step": self.step, "epoch": round(self.step / self.steps_per_epoch, 4),
                           **w.means, "sec_per_step": w.sec_per_step}
                    self.run.metric(row)
                    bar.set_postfix(mask=f"{row['mask_mean']:.3f}", style=f"{row['g_style']:.4f}")
                if self.step % t.timeline_every == 0:
                    self._record_timeline()
                if self.step % t.sample_every == 0:
                    self._sample_grid()
                    self._write_timeline()
                if self.step % t.checkpoint_every == 0 or stop.requested:
                    self._save()
                if stop.requested:
                    self.run.log(f"stopped by {stop.requested} after step {self.step}; checkpoint "
                                 "saved, rerun with --resume")
                    stop.raise_()
        return self.finish()

    def finish(self) -> dict:
        t = self.cfg.train
        if not self.timeline_steps or self.timeline_steps[-1] != self.step:
            self._record_timeline()
        self._write_timeline()
        save_sample_grid(self.sampler, self.grid_inputs, self.run.samples / "final.png", f"final (step {self.step})")
        self._save()
        self._save("final.pt")
        stats = evaluate_generator(self.sampler, t.dataset, t.eval_samples, _sub_seed(t.seed, 4), t.shape_judge)
        metrics = self.run.metrics()
        timed = [r["sec_per_step"] for r in metrics if "sec_per_step" in r]
        results = {
            "dataset": t.dataset, "preset": self.cfg.preset, "steps": self.step,
            "epochs": round(self.step / self.steps_per_epoch, 3),
            "feature_extractor": self.feature_source.as_dict(), "bf16": self.precision.bf16,
            "precision": self.precision.as_dict(), "gan_precision": t.gan_precision,
            "data": self.data.meta,
            "generator": "trained" if self.G_ema is None else f"ema (decay {t.ema_decay:g} from step {t.ema_start})",
            "device": str(self.device), "threads": torch.get_num_threads(),
            "train_seconds": round(self.elapsed, 1),
            "sec_per_step": round(self.elapsed / max(1, self.step), 4),
            "sec_per_step_median_window": round(float(np.median(timed)), 4) if timed else None,
            **stats,
            "final_losses": {k: v for k, v in (metrics[-1] if metrics else {}).items()
                             if k not in ("step", "epoch", "sec_per_step")},
            "checkpoint": str((self.run.checkpoints / "final.pt").resolve()),
        }
        write_results(self.out, results)
        self.run.log(f"done: {self.step} steps, mask mean {stats['mask_mean']:.3f}, shape accuracy "
                     f"{stats.get('shape_accuracy', float('nan')):.3f}, {self.elapsed / 60:.1f} min of training")
        return results


def train(cfg: CGNTrainConfig, out: str | Path, resume: bool = False) -> dict:
    return Trainer(cfg, out, resume=resume).fit()
