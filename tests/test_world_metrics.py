"""World metrics against hand-computed values: the judges' readings of a CGN's mechanisms, GAN
class accuracy, and a classifier's top-1, shape bias and BG-gap on a world, with fake models
whose decisions the inputs dictate."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from cgn.core.metrics import calc_metric
from cgn.errors import CGNError
from cgn.imagenet.ensemble import PREDICTIONS


class Oracle(nn.Module):
    """Decides the class written into pixel (0, 0) of channel 0: value v -> class round(10 v)."""

    def __init__(self, k: int = 10):
        super().__init__()
        self.k = k
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        c = (x[:, 0, 0, 0] * 10).round().long().clamp(0, self.k - 1)
        return nn.functional.one_hot(c, self.k).float() + self.dummy


def _written(classes, channels, lo=0.0, size=8):
    x = torch.full((len(classes), channels, size, size), lo)
    x[:, 0, 0, 0] = torch.tensor(classes, dtype=torch.float32) / 10
    return x


def test_mechanism_metrics_are_the_judges_hit_rates():
    decided = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
    truth = [0, 1, 2, 3, 4, 5, 6, 0, 0, 0]                         # 7 of 10 right
    ctx = {"shape_judge": Oracle(), "texture_judge": Oracle(), "background_judge": Oracle(),
           "masks": _written(decided, 1), "shape_labels": truth,
           "foregrounds": _written(decided, 3, -1.0), "texture_labels": torch.tensor(decided),
           "backgrounds": _written(decided, 3, -1.0), "background_labels": [9] * 10}
    assert calc_metric("mechanism_shape_accuracy", **ctx) == pytest.approx(0.7)
    assert calc_metric("mechanism_texture_accuracy", **ctx) == 1.0
    assert calc_metric("mechanism_background_accuracy", **ctx, batch_size=3) == pytest.approx(0.1)

    class MeanSaliency(nn.Module):  # saliency = the image's first channel mapped to [0, 1]
        def forward(self, x):
            return (x[:, :1] + 1) / 2
    b = torch.full((4, 3, 8, 8), -1.0)
    b[:2, 0, :4] = 1.0                                             # two images half salient
    assert calc_metric("background_saliency", u2net=MeanSaliency(), backgrounds=b) == pytest.approx(0.25)
    gan = {"world_classifier": Oracle(), "gan_images": _written([3, 3, 4, 5], 3, -1.0),
           "gan_labels": [3, 3, 3, 3]}
    assert calc_metric("gan_class_accuracy", **gan) == 0.5

    class Identity(nn.Module):  # "saliency" = the first channel, which carries the class here
        def forward(self, x):
            return x[:, :1]
    assert calc_metric("gan_shape_accuracy", u2net=Identity(), shape_judge=Oracle(), **gan) == 0.5
    for bad, msg in (({"masks": torch.zeros(3, 3, 8, 8)}, r"masks must be a non-empty \[N, 1, S, S\]"),
                     ({"masks": _written(decided, 1, lo=-1.0)}, r"masks must be floats in \[0, 1\]"),
                     ({"shape_labels": truth[:4]}, "10 inputs but 4 labels"),
                     ({"shape_labels": [12] * 10}, "labels must be classes 0..9")):
        with pytest.raises(CGNError, match=msg) as e:
            calc_metric("mechanism_shape_accuracy", **{**ctx, **bad})
        assert "\n" not in str(e.value)


def test_counterfactual_samples_have_three_different_classes():
    from cgn.config import override
    from cgn.imagenet.biggan import BigGAN, tiny_config
    from cgn.imagenet.config import ModelConfig
    from cgn.imagenet.model import build_cgn
    from cgn.imagenet.world_metrics import distinct_classes, evaluate_mechanisms, gan_samples
    s, t, b = distinct_classes(500, 10, seed=1)
    assert ((s != t) & (t != b) & (s != b)).all() and {*s, *t, *b} == set(range(10))
    assert all(np.array_equal(u, v) for u, v in zip((s, t, b), distinct_classes(500, 10, seed=1)))
    with pytest.raises(CGNError, match="at least 3 classes"):
        distinct_classes(4, 2)
    cfg = override(ModelConfig(), {"biggan_arch": "tiny", "u2net_arch": "tiny", "tiny_resolution": 16,
                                   "tiny_width": 4, "tiny_z_dim": 8})
    cgn = build_cgn(cfg)

    class Constant(nn.Module):  # a judge that always says class 0
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(1))

        def forward(self, x):
            return torch.eye(10)[torch.zeros(len(x), dtype=torch.long)] + self.w
    judges = {"shape_judge": Constant(), "texture_judge": Constant(), "background_judge": Constant()}
    res = evaluate_mechanisms(cgn, **judges, u2net=cgn.u2net, n=30, num_classes=10, batch_size=16)
    s, t, b = distinct_classes(30, 10, seed=0)
    assert res["shape_accuracy"] == pytest.approx(np.mean(s == 0))
    assert res["texture_accuracy"] == pytest.approx(np.mean(t == 0))
    assert res["background_accuracy"] == pytest.approx(np.mean(b == 0))
    assert 0 < res["background_saliency"] < 1 and 0 < res["mu_mask"] < 1 and res["n"] == 30
    gan = BigGAN(tiny_config(16, 4, 8, num_classes=10))
    g = gan_samples(gan, 25, seed=3, batch_size=8)
    assert g["gan_images"].shape == (25, 3, 16, 16) and g["gan_images"].abs().max() <= 1
    assert g["gan_labels"].tolist() == [i % 10 for i in range(25)]


class CueReader(nn.Module):
    """A fake ensemble: the image carries its shape, texture and background class in pixels
    (0, 0) of channels 0, 1, 2 and a flag in pixel (1, 1) of channel 0. The shape head names the
    shape, the texture head the texture, the background head the background; ``avg`` names the
    shape where the flag is set and the texture elsewhere; ``shape_texture`` the flagged class of
    pixel (1, 1) of channel 1. A large logit outside the world's 10 classes is always there."""

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        def hot(c):
            out = torch.zeros(len(x), 1000)
            out[torch.arange(len(x)), c.long()] = 1.0
            out[:, 500] = 5.0                                      # not a world class: ignored
            return out + self.dummy
        s, t, b, flag = x[:, 0, 0, 0], x[:, 1, 0, 0], x[:, 2, 0, 0], x[:, 0, 1, 1] > 0
        return {"shape": hot(s), "texture": hot(t), "background": hot(b),
                "avg": hot(torch.where(flag, s, t)), "shape_texture": hot(x[:, 1, 1, 1])}


def _images(*channels, flag=None, other=None):
    n = len(channels[0])
    x = torch.zeros(n, 3, 4, 4)
    for c, v in enumerate(channels):
        x[:, c, 0, 0] = torch.tensor(v, dtype=torch.float32)
    x[:, 0, 1, 1] = torch.tensor(flag if flag is not None else [0] * n, dtype=torch.float32)
    x[:, 1, 1, 1] = torch.tensor(other if other is not None else channels[0], dtype=torch.float32)
    return x


def test_world_shape_bias_top1_and_bg_gap_by_hand():
    shape, tex, bg = [0, 1, 2, 3, 4, 5, 6, 7], [1, 2, 3, 4, 5, 6, 7, 8], [2, 3, 4, 5, 6, 7, 8, 9]
    x = _images(shape, tex, bg, flag=[1, 0] * 4, other=[9] * 8)    # shape_texture: class 9, no cue
    cc = TensorDataset(x, torch.tensor(shape), torch.tensor(tex), torch.tensor(bg))
    res = calc_metric("world_shape_bias", model=CueReader(), world_cue_conflict=cc, num_classes=10,
                      batch_size=3)
    assert res["world/shape_bias/shape"] == 1.0 and res["world/shape_bias/texture"] == 0.0
    assert res["world/shape_bias/avg"] == 0.5 and res["world/shape_bias/n"] == 8
    assert math.isnan(res["world/shape_bias/background"])             # no decision hit a cue
    assert res["world/shape_bias/background/background_hits"] == 8
    assert res["world/shape_bias/shape_texture/shape_hits"] == 0
    assert res["world/shape_bias/avg/shape_hits"] == res["world/shape_bias/avg/texture_hits"] == 4
    # IN-9 style: every image's label is its class; the "shape" head decides the pixel value
    y = torch.arange(10) % 10
    def variant(right):  # noqa: E306
        dec = torch.where(torch.arange(10) < right, y, (y + 1) % 10)
        return TensorDataset(_images(dec.tolist(), dec.tolist(), y.tolist()), y)
    sets = {"original": variant(10), "mixed_same": variant(8), "mixed_rand": variant(5)}
    res = calc_metric("world_in9", model=CueReader(), world_in9_sets=sets, num_classes=10)
    assert res["world/in9/original/shape"] == 1.0 and res["world/in9/mixed_same/shape"] == 0.8
    assert res["world/in9/mixed_rand/shape"] == 0.5
    assert res["world/in9/bg_gap/shape"] == pytest.approx(0.3)
    assert res["world/in9/bg_gap/background"] == 0.0                  # the background head is always right
    assert res["world/in9/bg_gap"] == res["world/in9/bg_gap/shape_texture"] == pytest.approx(0.3)
    top = calc_metric("world_top1", model=CueReader(), world_test=sets["mixed_same"], num_classes=10)
    assert top["world/top1/shape"] == 0.8 and top["world/top1/n"] == 10
    assert set(top) == {f"world/top1/{p}" for p in PREDICTIONS} | {"world/top1/n"}

    class FiveWay(CueReader):
        def forward(self, x):
            return {k: v[:, :5] for k, v in super().forward(x).items()}
    with pytest.raises(CGNError, match="has 5 outputs, fewer than the world's 10 classes"):
        calc_metric("world_top1", model=FiveWay(), world_test=sets["original"], num_classes=10)
