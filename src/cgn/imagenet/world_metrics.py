"""How well a CGN (and its BigGAN) on a world draw what they are asked for, read by the judges.

Registered in :mod:`cgn.core.metrics` (each a fraction in [0, 1]):

- ``mechanism_shape_accuracy``: the share of masks ``masks`` [N, 1, S, S] in [0, 1] that the
  shape judge names with their shape class ``shape_labels``;
- ``mechanism_texture_accuracy``: the same for the texture mechanism's full-frame foregrounds
  ``foregrounds`` [N, 3, S, S] in [-1, 1] against ``texture_labels``, by the texture judge;
- ``mechanism_background_accuracy``: the backgrounds ``backgrounds`` against
  ``background_labels``, by the background judge;
- ``background_saliency``: the mean saliency ``u2net(b)`` over the pixels of the backgrounds
  (low = no object left in the background);
- ``gan_class_accuracy``: the share of GAN samples ``gan_images`` [N, 3, S, S] in [-1, 1] that
  the world classifier labels with the class ``gan_labels`` they were drawn for;
- ``gan_shape_accuracy``: the share of GAN samples whose U2-Net mask the shape judge names with
  that class (a world classifier trained on a fully correlated world may read the background
  alone; this reads the object's shape).

Judged on counterfactual samples whose three classes all differ (:func:`distinct_classes`), a
mechanism that leaks another one's class (a background that shows the shape's class, say) is
scored wrong. :func:`cgn_mechanism_samples` draws such samples from an ImageNet CGN,
:func:`gan_samples` draws class-balanced samples from a BigGAN, and
:func:`evaluate_mechanisms` computes all the CGN's numbers (and ``mu_mask``) at once.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cgn.core.metrics import calc_metric, register_metric
from cgn.errors import CGNError

MECHANISM_METRICS = ("mechanism_shape_accuracy", "mechanism_texture_accuracy",
                     "mechanism_background_accuracy", "background_saliency")


def _check(x: torch.Tensor, channels: int, lo: float, what: str) -> torch.Tensor:
    x = torch.as_tensor(x)
    if x.ndim != 4 or x.shape[1] != channels or len(x) == 0:
        raise CGNError(f"{what} must be a non-empty [N, {channels}, S, S] tensor, got {list(x.shape)}")
    if not x.is_floating_point() or x.min() < lo - 1e-3 or x.max() > 1 + 1e-3:
        raise CGNError(f"{what} must be floats in [{lo:g}, 1], got {x.dtype} in "
                       f"[{float(x.min()):.3g}, {float(x.max()):.3g}]")
    return x


def _device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@torch.no_grad()
def _batched(model: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """``model`` over ``x`` in batches (eval mode; resized to the model's ``size`` if it has one)."""
    was, dev = model.training, _device(model)
    model.eval()
    size = getattr(model, "size", None)
    out = []
    try:
        for a in range(0, len(x), batch_size):
            b = x[a:a + batch_size].to(dev, torch.float32)
            if size and b.shape[-2:] != (size, size):
                b = F.interpolate(b, (size, size), mode="bilinear", align_corners=False, antialias=True)
            out.append(model(b).float().cpu())
    finally:
        model.train(was)
    return torch.cat(out)


def judge_accuracy(judge: nn.Module, x: torch.Tensor, labels, batch_size: int, what: str) -> float:
    """The share of ``x`` that ``judge`` names with ``labels``."""
    y = torch.as_tensor(labels).long().view(-1).cpu()
    if len(y) != len(x):
        raise CGNError(f"{what}: {len(x)} inputs but {len(y)} labels")
    logits = _batched(judge, x, batch_size)
    if y.min() < 0 or y.max() >= logits.shape[1]:
        raise CGNError(f"{what}: labels must be classes 0..{logits.shape[1] - 1} of the judge, "
                       f"got {int(y.min())}..{int(y.max())}")
    return float((logits.argmax(1) == y).double().mean())


@register_metric("mechanism_shape_accuracy", help="share of masks the shape judge names with "
                                                  "their shape class (fraction)")
def mechanism_shape_accuracy(shape_judge: nn.Module, masks: torch.Tensor, shape_labels, *,
                             batch_size: int = 256) -> float:
    return judge_accuracy(shape_judge, _check(masks, 1, 0.0, "masks"), shape_labels, batch_size,
                          "mechanism_shape_accuracy")


@register_metric("mechanism_texture_accuracy", help="share of full-frame foregrounds the texture "
                                                    "judge names with their texture class (fraction)")
def mechanism_texture_accuracy(texture_judge: nn.Module, foregrounds: torch.Tensor, texture_labels,
                               *, batch_size: int = 256) -> float:
    return judge_accuracy(texture_judge, _check(foregrounds, 3, -1.0, "foregrounds"),
                          texture_labels, batch_size, "mechanism_texture_accuracy")


@register_metric("mechanism_background_accuracy", help="share of backgrounds the background judge "
                                                       "names with their background class (fraction)")
def mechanism_background_accuracy(background_judge: nn.Module, backgrounds: torch.Tensor,
                                  background_labels, *, batch_size: int = 256) -> float:
    return judge_accuracy(background_judge, _check(backgrounds, 3, -1.0, "backgrounds"),
                          background_labels, batch_size, "mechanism_background_accuracy")


@register_metric("background_saliency", help="mean U2-Net saliency of the backgrounds (fraction; "
                                             "low = no object in them)")
def background_saliency(u2net: nn.Module, backgrounds: torch.Tensor, *, batch_size: int = 256) -> float:
    sal = _batched(u2net, _check(backgrounds, 3, -1.0, "backgrounds"), batch_size)
    return float(sal.double().mean())


@register_metric("gan_class_accuracy", help="share of GAN samples the world classifier labels with "
                                            "the class they were drawn for (fraction)")
def gan_class_accuracy(world_classifier: nn.Module, gan_images: torch.Tensor, gan_labels, *,
                       batch_size: int = 256) -> float:
    return judge_accuracy(world_classifier, _check(gan_images, 3, -1.0, "gan_images"), gan_labels,
                          batch_size, "gan_class_accuracy")


@register_metric("gan_shape_accuracy", help="share of GAN samples whose U2-Net mask the shape judge "
                                            "names with the class they were drawn for (fraction)")
def gan_shape_accuracy(u2net: nn.Module, shape_judge: nn.Module, gan_images: torch.Tensor,
                       gan_labels, *, batch_size: int = 256) -> float:
    """The digit's side of the GAN's class: each sample's saliency mask, read by the shape judge
    (the world classifier may follow texture or background alone)."""
    masks = _batched(u2net, _check(gan_images, 3, -1.0, "gan_images"), batch_size).clamp(0, 1)
    return judge_accuracy(shape_judge, masks, gan_labels, batch_size, "gan_shape_accuracy")


# --- drawing the samples ---------------------------------------------------------------------

def distinct_classes(n: int, num_classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Shape, texture and background classes [n] each, all three different for every item:
    the shape uniform, the texture uniform among the others, the background among the rest."""
    from cgn.imagenet.world_ops import draw_class
    if num_classes < 3:
        raise CGNError(f"three different classes need at least 3 classes, got {num_classes}")
    rng = np.random.default_rng([seed, 11])
    pool = np.arange(num_classes)
    s = draw_class(pool, None, rng, n, "shape")
    t = draw_class(pool, s[:, None], rng, n, "texture")
    b = draw_class(pool, np.stack([s, t], 1), rng, n, "background")
    return s, t, b


@torch.no_grad()
def cgn_mechanism_samples(cgn: nn.Module, n: int, *, num_classes: int | None = None, seed: int = 0,
                          batch_size: int = 64, truncation: float | None = None) -> dict:
    """``n`` counterfactuals of an ImageNet CGN with three different classes each: ``masks``,
    ``foregrounds``, ``backgrounds`` (CPU tensors) and ``shape_labels`` / ``texture_labels`` /
    ``background_labels``, named as the metrics take them."""
    from cgn.imagenet.model import truncated_noise
    k = num_classes or cgn.n_classes
    trunc = cgn.truncation if truncation is None else truncation
    s, t, b = (torch.from_numpy(a) for a in distinct_classes(n, k, seed))
    g = torch.Generator().manual_seed(seed)
    was = cgn.training
    cgn.eval()
    parts: dict[str, list] = {"masks": [], "foregrounds": [], "backgrounds": []}
    try:
        for a in range(0, n, batch_size):
            sl = slice(a, a + batch_size)
            u = truncated_noise(len(s[sl]), cgn.z_dim, trunc, g).to(cgn.device)
            out = cgn(u, cgn.class_vector(s[sl]), cgn.class_vector(t[sl]), cgn.class_vector(b[sl]),
                      trunc, with_reference=False, with_background_mask=False)
            parts["masks"].append(out.mask.float().cpu())
            parts["foregrounds"].append(out.foreground.float().clamp(-1, 1).cpu())
            parts["backgrounds"].append(out.background.float().clamp(-1, 1).cpu())
    finally:
        cgn.train(was)
    res = {k2: torch.cat(v) for k2, v in parts.items()}
    return {**res, "shape_labels": s, "texture_labels": t, "background_labels": b}


@torch.no_grad()
def gan_samples(biggan: nn.Module, n: int, *, num_classes: int | None = None, seed: int = 0,
                truncation: float = 1.0, batch_size: int = 64) -> dict:
    """``n`` samples of a class-conditional BigGAN, class ``i % K`` for sample i: ``gan_images``
    [n, 3, R, R] in [-1, 1] and ``gan_labels``."""
    from cgn.imagenet.model import truncated_noise
    k = num_classes or biggan.config.num_classes
    y = torch.arange(n) % k
    g = torch.Generator().manual_seed(seed)
    dev = _device(biggan)
    was = biggan.training
    biggan.eval()
    out = []
    try:
        for a in range(0, n, batch_size):
            ys = y[a:a + batch_size]
            u = truncated_noise(len(ys), biggan.config.z_dim, truncation, g).to(dev)
            out.append(biggan(u, biggan.class_vector(ys), truncation).float().clamp(-1, 1).cpu())
    finally:
        biggan.train(was)
    return {"gan_images": torch.cat(out), "gan_labels": y}


def evaluate_mechanisms(cgn: nn.Module, *, shape_judge: nn.Module, texture_judge: nn.Module,
                        background_judge: nn.Module, u2net: nn.Module, n: int = 1000, seed: int = 0,
                        num_classes: int | None = None, batch_size: int = 64) -> dict[str, float]:
    """Draw ``n`` counterfactuals with three different classes and compute the four mechanism
    metrics and ``mu_mask``: ``{"shape_accuracy", "texture_accuracy", "background_accuracy",
    "background_saliency", "mu_mask", "n"}``."""
    samples = cgn_mechanism_samples(cgn, n, num_classes=num_classes, seed=seed, batch_size=batch_size)
    context = {**samples, "shape_judge": shape_judge, "texture_judge": texture_judge,
               "background_judge": background_judge, "u2net": u2net, "batch_size": batch_size}
    names = dict(zip(MECHANISM_METRICS, ("shape_accuracy", "texture_accuracy", "background_accuracy",
                                         "background_saliency")))
    res = {short: calc_metric(name, **context) for name, short in names.items()}
    res["mu_mask"] = calc_metric("mu_mask", masks=samples["masks"])
    res["n"] = n
    return res
