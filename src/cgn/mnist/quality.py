"""Quality metrics of a trained MNIST CGN, registered in :mod:`cgn.core.metrics`.

- ``shape_accuracy``: how often the :class:`ShapeJudge` (a fixed digit classifier for masks)
  reads a mask as the digit of its label.
- ``timeline_shape_accuracy``: the judge's accuracy over a run's mask timeline, by window of steps.
- ``mask_statistics``: mean mask (overall and per class), share of mask pixels > 0.5, the masks'
  binary entropy and, with a judge, the shape accuracy, over plain samples.
- ``colour_fidelity``: do counterfactual colours follow their texture and background labels?

:func:`evaluate_generator` is the evaluation the trainer writes into ``results.json``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from cgn.core.losses import mask_binary_entropy
from cgn.core.metrics import calc_metric, register_metric
from cgn.core.sampling import sample, sample_plain
from cgn.io import save_npz_atomic
from cgn.mnist.model import MnistCGN

# The metrics of a trained generator, in report order; metric i draws its samples from seed + i.
GENERATOR_METRICS = ("mask_statistics", "colour_fidelity")


# --- shape judge: are the masks recognisable digits? -------------------------------------------

class ShapeJudge:
    """A fixed digit classifier for masks: ridge regression on 1000 seeded random ReLU features
    (plus the pixels) of binarised 32x32 MNIST training digits ``[:50000]``. 95 % accurate on
    MNIST ``[50000:60000]``; on masks of the authors' CGNs 80-95 %. Used to report how
    recognisable a CGN's shapes are (``shape_accuracy``); cached in ``$CGN_HOME/judges``."""

    VERSION = 1
    N_FEATURES = 1000
    RIDGE = 10.0

    def __init__(self, weights: torch.Tensor, proj: torch.Tensor):
        self.weights, self.proj = weights, proj

    @staticmethod
    def _features(x: torch.Tensor, proj: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1).float()
        return torch.cat([torch.relu(x @ proj), x, torch.ones(x.shape[0], 1)], dim=1)

    @classmethod
    def load(cls) -> "ShapeJudge":
        from cgn.paths import cache_dir
        # the file name carries every setting that shapes the judge; a damaged or foreign file
        # is rebuilt (it is a cache), never trusted
        path = cache_dir("judges") / f"mnist-shape-judge-v{cls.VERSION}-f{cls.N_FEATURES}-r{cls.RIDGE:g}.npz"
        cached = cls._read_cache(path)
        if cached is not None:
            return cached
        from cgn.mnist.source import load_mnist
        mnist = load_mnist()
        from cgn.mnist.variants import upscale_digits
        digits = upscale_digits(mnist.train_images[:50000]) > 25  # 32x32, binarised like double-colored
        x = torch.from_numpy(digits.reshape(len(digits), -1).astype(np.float32))
        y = torch.nn.functional.one_hot(torch.from_numpy(mnist.train_labels[:50000].astype(np.int64)), 10).float()
        g = torch.Generator().manual_seed(0)
        proj = torch.randn(x.shape[1], cls.N_FEATURES, generator=g) / math.sqrt(x.shape[1] * 0.15)
        f = cls._features(x, proj)
        a = (f.T @ f).double() + cls.RIDGE * torch.eye(f.shape[1], dtype=torch.float64)
        w = torch.linalg.solve(a, (f.T @ y).double()).float()
        save_npz_atomic(path, weights=w.numpy(), proj=proj.numpy())
        return cls(w, proj)

    @classmethod
    def _read_cache(cls, path) -> "ShapeJudge | None":
        import zipfile
        if not path.exists():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                w, proj = z["weights"], z["proj"]
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            return None
        if proj.shape != (32 * 32, cls.N_FEATURES) or w.shape != (32 * 32 + cls.N_FEATURES + 1, 10):
            return None
        return cls(torch.from_numpy(w), torch.from_numpy(proj))

    def predict(self, masks: torch.Tensor) -> torch.Tensor:
        """masks [N, 1, 32, 32] (or [N, 32, 32]) in [0, 1] -> predicted digit [N]."""
        return (self._features(masks.reshape(masks.shape[0], -1).cpu(), self.proj) @ self.weights).argmax(1)


@register_metric("shape_accuracy", help="share of masks the shape judge reads as the digit of "
                                        "their label")
def shape_accuracy(masks: torch.Tensor, labels: torch.Tensor, judge: ShapeJudge | None = None) -> float:
    """masks [N, (1,) 32, 32] in [0, 1], labels [N] -> accuracy of ``judge`` (default: the cached
    :class:`ShapeJudge`)."""
    judge = judge or ShapeJudge.load()
    return float((judge.predict(masks) == labels.cpu()).float().mean())


@register_metric("timeline_shape_accuracy", help="shape-judge accuracy of a run's mask timeline, "
                                                 "by window of training steps")
def timeline_shape_accuracy(timeline: str | Path, judge: ShapeJudge | None = None,
                            window: int = 2000) -> list[dict]:
    """Shape-judge accuracy of a run's mask timeline (the file ``samples/mask_timeline.npz``:
    masks of fixed noise and labels, recorded every ``train.timeline_every`` steps), averaged over
    windows of ``window`` steps: when in training each class's mask became its digit. Returns rows
    ``{"from": step, "to": step, "frames": n, "shape_accuracy": a}``."""
    judge = judge or ShapeJudge.load()
    with np.load(timeline, allow_pickle=False) as z:
        steps, masks, labels = z["steps"], torch.from_numpy(z["masks"]), torch.from_numpy(z["labels"])
    pred = judge.predict(masks.flatten(0, 1)).view(len(steps), -1)  # [frames, masks per frame]
    acc = (pred == labels).float().mean(1).numpy()
    rows = []
    for start in range(0, int(steps.max()) + 1, window):
        sel = (steps >= start) & (steps < start + window)
        if sel.any():
            rows.append({"from": int(steps[sel].min()), "to": int(steps[sel].max()), "frames": int(sel.sum()),
                         "shape_accuracy": round(float(acc[sel].mean()), 4)})
    return rows


# --- metrics of a generator --------------------------------------------------------------------

@register_metric("mask_statistics", help="mean mask (overall, per class), area > 0.5, binary "
                                         "entropy and, with a judge, shape accuracy of plain samples")
def mask_statistics(model: MnistCGN, n: int, seed: int, judge: ShapeJudge | None = None) -> dict:
    """Mean mask (overall, per class), fraction of pixels > 0.5, and the judge's shape accuracy,
    over ``n`` plain samples with balanced labels."""
    labels = torch.arange(model.n_classes).repeat(-(-n // model.n_classes))[:n]
    s = sample_plain(model, labels, seed=seed, batch_size=500)
    m = s.mask[:, 0]
    per_class = [float(m[labels == k].mean()) for k in range(model.n_classes)]
    out = {"mask_mean": float(m.mean()), "mask_mean_per_class": [round(v, 4) for v in per_class],
           "mask_area_gt_0.5": float((m > 0.5).float().mean()),
           "mask_binary_entropy": float(mask_binary_entropy(m.clamp(1e-4, 1 - 1e-4)))}
    if judge is not None:
        out["shape_accuracy"] = shape_accuracy(m, labels, judge)
    return out


# --- colour fidelity ---------------------------------------------------------------------------

def colour_tables(dataset: str) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(digit colour per class, background colour per class) [10, 3] in [0, 1], where the dataset
    paints by colour (None where it does not: colored MNIST's background, wildlife)."""
    from cgn.mnist import variants
    if dataset == "colored-mnist":
        return variants.COLORED_PALETTE, None
    if dataset == "double-colored-mnist":
        return variants.double_colored_tables()
    return None, None


@register_metric("colour_fidelity", help="share of counterfactuals whose digit / background colour "
                                         "is the one of their texture / background label")
def colour_fidelity(model: MnistCGN, dataset: str, n: int, seed: int) -> dict:
    """Do counterfactual colours follow their labels? Shape, texture and background labels are
    drawn independently; for each sample the median colour of its digit pixels (mask > 0.9) and of
    its background pixels (mask < 0.1) is matched to the nearest class colour of the dataset's
    table; the accuracy is the share matching the texture / background label."""
    fg_table, bg_table = colour_tables(dataset)
    if fg_table is None and bg_table is None:
        return {}
    g = torch.Generator().manual_seed(seed)
    k = model.n_classes
    ys = [torch.randint(k, (n,), generator=g) for _ in range(3)]
    s = sample(model, n, *ys, seed=seed, batch_size=500)
    img = ((s.composite.permute(0, 2, 3, 1) + 1) / 2).numpy()   # [N, H, W, 3] in [0, 1]
    m = s.mask[:, 0].numpy()
    out = {}
    for name, table, sel, labels in (("fg", fg_table, m > 0.9, ys[1]), ("bg", bg_table, m < 0.1, ys[2])):
        if table is None:
            continue
        hits = 0
        for i in range(n):
            px = img[i][sel[i]]
            if len(px) >= 5:
                med = np.median(px, axis=0)
                hits += int(np.argmin(((table - med) ** 2).sum(1)) == int(labels[i]))
        out[f"{name}_colour_accuracy"] = hits / n
    return out


def evaluate_generator(model: MnistCGN, dataset: str, n: int = 1000, seed: int = 0,
                       shape_judge: bool = True) -> dict:
    """The quality numbers of a trained MNIST CGN (all from plain or counterfactual samples):
    mask statistics, the judge's shape accuracy, and the colour fidelity where the dataset paints
    by colour. ``evaluate_generator(load_generator(path)[0], "double-colored-mnist")``."""
    judge = ShapeJudge.load() if shape_judge else None
    stats: dict = {}
    for i, name in enumerate(GENERATOR_METRICS):
        stats.update(calc_metric(name, model=model, dataset=dataset, n=n, seed=seed + i, judge=judge))
    return stats

