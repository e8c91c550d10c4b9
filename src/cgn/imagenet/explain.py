"""LIME explanations of ImageNet classifiers (the study's Fig. 3), via the ``lime`` package.

For one image and each classifier, the five most probable classes are explained with LIME
(Ribeiro et al. 2016): the image is cut into superpixels (quickshift, LIME's default
parameters), ``num_samples`` perturbed copies with random superpixels hidden (set to black,
``hide_color=0``) are classified, and a weighted linear model per class gives every superpixel a
weight. The heatmap of a class paints each superpixel with its weight: green regions speak for
the class, red ones against it (colour scale symmetric around 0, per panel).

The figure has one row per classifier (a plain one, e.g. an ImageNet-pretrained ResNet-50, and
the ensemble), the input image first, then the top-5 heatmaps titled with class name and
probability in %.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn

from cgn.errors import CGNError
from cgn.imagenet.imagefolder import IMAGENET_MEAN, IMAGENET_STD
from cgn.io import write_bytes_atomic


@dataclass
class ClassExplanation:
    index: int                # ImageNet-1k class
    name: str
    probability: float        # in [0, 1]
    heatmap: np.ndarray       # [H, W] LIME weight of the superpixel under each pixel


def class_names() -> list[str]:
    """The 1000 ImageNet class names (torchvision's list, shipped with torchvision)."""
    import torchvision
    return list(torchvision.models.ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


def load_image(path: str | os.PathLike, image_size: int, resize_size: int) -> np.ndarray:
    """RGB image, resized and centre-cropped as for evaluation: float [H, W, 3] in [0, 1]."""
    from torchvision import transforms as T
    p = Path(path)
    if not p.is_file():
        raise CGNError(f"image {p} does not exist; check --image")
    try:
        with Image.open(p) as im:
            img = im.convert("RGB")
    except OSError as e:
        raise CGNError(f"cannot read image {p} ({e})") from None
    img = T.CenterCrop(image_size)(T.Resize(resize_size)(img))
    return np.asarray(img, dtype=np.float64) / 255.0


def probability_fn(model: nn.Module, pred: str = "avg", device: torch.device | str = "cpu",
                   batch_size: int = 32) -> Callable[[np.ndarray], np.ndarray]:
    """images [N, H, W, 3] in [0, 1] -> softmax probabilities [N, 1000] of ``model(x)[pred]``."""
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    model = model.to(device).eval()

    @torch.no_grad()
    def fn(images: np.ndarray) -> np.ndarray:
        out = []
        x_all = torch.from_numpy(np.asarray(images, dtype=np.float32)).permute(0, 3, 1, 2)
        for i in range(0, len(x_all), batch_size):
            x = ((x_all[i:i + batch_size] - mean) / std).to(device)     # [b, 3, H, W]
            logits = model(x)[pred]                                       # [b, 1000]
            out.append(torch.softmax(logits.float(), dim=1).cpu())
        return torch.cat(out).numpy()

    return fn


def explain_top_classes(predict: Callable[[np.ndarray], np.ndarray], image: np.ndarray, *,
                        top_k: int = 5, num_samples: int = 1000, seed: int = 0,
                        batch_size: int = 32, names: Sequence[str] | None = None
                        ) -> list[ClassExplanation]:
    """LIME heatmaps for the ``top_k`` most probable classes of ``predict`` on ``image``."""
    from lime import lime_image
    from lime.wrappers.scikit_image import SegmentationAlgorithm

    if num_samples < 2:
        raise CGNError(f"LIME needs at least 2 samples, got {num_samples}")
    names = names or class_names()
    probs = predict(image[None])[0]                                       # [1000]
    top = [int(i) for i in np.argsort(-probs)[:top_k]]
    explainer = lime_image.LimeImageExplainer(random_state=seed)
    # LIME's quickshift parameters are meant for 0..255 pixel values: explain on that scale
    segmenter = SegmentationAlgorithm("quickshift", kernel_size=4, max_dist=200, ratio=0.2,
                                      random_seed=seed)
    exp = explainer.explain_instance(image * 255.0, lambda imgs: predict(imgs / 255.0),
                                     labels=top, top_labels=None, hide_color=0,
                                     num_samples=num_samples, batch_size=batch_size,
                                     segmentation_fn=segmenter, random_seed=seed)
    result = []
    for c in top:
        weights = dict(exp.local_exp[c])                                  # superpixel -> weight
        lut = np.array([weights.get(s, 0.0) for s in range(int(exp.segments.max()) + 1)])
        result.append(ClassExplanation(c, names[c], float(probs[c]), lut[exp.segments]))
    return result


def render_figure(image: np.ndarray, rows: dict[str, list[ClassExplanation]]) -> bytes:
    """PNG bytes: one row per classifier, input image then one heatmap per class."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ncols = 1 + max(len(r) for r in rows.values())
    fig, axes = plt.subplots(len(rows), ncols, figsize=(2.4 * ncols, 2.7 * len(rows)),
                             squeeze=False)
    for r, (label, expl) in enumerate(rows.items()):
        axes[r, 0].imshow(image)
        axes[r, 0].set_title(label, fontsize=9)
        for c, e in enumerate(expl, start=1):
            lim = float(np.abs(e.heatmap).max()) or 1.0
            axes[r, c].imshow(image)
            axes[r, c].imshow(e.heatmap, cmap="RdYlGn", vmin=-lim, vmax=lim, alpha=0.6)
            pct = 100 * e.probability
            axes[r, c].set_title(f"{e.name[:22]}\n{pct:.1f}%" if pct >= 1 else
                                 f"{e.name[:22]}\n{pct:.2f}%", fontsize=8)
        for c in range(ncols):
            axes[r, c].axis("off")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def explain_models(models: dict[str, tuple[nn.Module, str]], image_path: str | os.PathLike,
                   out: str | os.PathLike, *, image_size: int = 224, resize_size: int = 256,
                   top_k: int = 5, num_samples: int = 1000, seed: int = 0,
                   device: torch.device | str = "cpu", batch_size: int = 32) -> dict:
    """Explain each ``label -> (model, prediction key)`` on one image; write the figure to
    ``out`` (PNG) and the classes / probabilities to ``out`` with suffix ``.json``."""
    from cgn.io import write_json_atomic

    image = load_image(image_path, image_size, resize_size)
    names = class_names()
    rows = {}
    for label, (model, pred) in models.items():
        fn = probability_fn(model, pred, device, batch_size)
        rows[label] = explain_top_classes(fn, image, top_k=top_k, num_samples=num_samples,
                                          seed=seed, batch_size=batch_size, names=names)
    out = Path(out)
    write_bytes_atomic(out, render_figure(image, rows))
    summary = {"image": str(image_path), "num_samples": num_samples, "seed": seed,
               "models": {k: [{"class": e.index, "name": e.name, "probability": e.probability}
                              for e in v] for k, v in rows.items()}}
    write_json_atomic(out.with_suffix(".json"), summary)
    return summary
