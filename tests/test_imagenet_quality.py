"""Inception Score (hand-computed tables), mu_mask, the metric registry and folder evaluation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from cgn.core.metrics import available_metrics, get_metric
from cgn.errors import CGNError
from cgn.imagenet.quality import evaluate_folder, inception_score, load_inception, mu_mask


def test_inception_score_two_splits_by_hand():
    # split 1: two confident, different predictions: p(y) = (.5, .5), KL = ln 2 each -> IS = 2
    # split 2: two uniform predictions: KL = 0 -> IS = 1.   mean 1.5, population std 0.5
    probs = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [0.5, 0.5]])
    mean, std = inception_score(probs, splits=2)
    assert mean == pytest.approx(1.5) and std == pytest.approx(0.5)


def test_inception_score_asymmetric_table_by_hand():
    # p(y) = (0.4, 0.2, 0.4); KL(row 1) = 0.7 ln(0.7/0.4) + 0.2 ln(0.2/0.2) + 0.1 ln(0.1/0.4)
    #      = 0.7 * 0.5596158 - 0.1 * 1.3862944 = 0.2531016; row 2 is its mirror image.
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.2, 0.7]])
    mean, std = inception_score(probs, splits=1)
    assert mean == pytest.approx(math.exp(0.2531016), abs=1e-6)
    assert mean == pytest.approx(1.2880, abs=1e-4) and std == 0.0
    # 10 splits of a table of 20 one-hot rows over 2 classes, alternating: IS = 2 in every split
    onehot = np.eye(2)[np.arange(20) % 2]
    assert inception_score(onehot) == (pytest.approx(2.0), pytest.approx(0.0))
    with pytest.raises(CGNError, match="probabilities"):
        inception_score(np.array([[2.0, -1.0]] * 10))
    with pytest.raises(CGNError, match="N >= splits"):
        inception_score(np.eye(3), splits=10)


def test_metrics_are_registered():
    assert {"inception_score", "mu_mask"} <= set(available_metrics())
    assert get_metric("inception_score") is inception_score
    assert get_metric("mu_mask")(torch.tensor([[0.0, 1.0], [0.5, 0.5]])) == pytest.approx(0.5)
    assert mu_mask(iter([np.ones((2, 2)), np.zeros((2, 6))])) == pytest.approx(4 / 16)


class ColourClassifier(torch.nn.Module):
    """A pluggable 1000-way 'classifier': logits from the mean colour (deterministic)."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w = torch.nn.Parameter(torch.randn(3, 1000, generator=g) * 20)

    def forward(self, x):
        return x.mean((2, 3)) @ self.w


def test_evaluate_any_generated_folder(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "masks").mkdir()
    for i in range(20):
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(tmp_path / f"{i:07d}.png")
        Image.fromarray(np.full((8, 8), 51, np.uint8)).save(tmp_path / "masks" / f"{i:07d}.png")
    clf = ColourClassifier()
    res = evaluate_folder(tmp_path, classifier=clf, classifier_description="colour", splits=10)
    assert res.n_images == 20 and res.n_masks == 20
    assert res.mu_mask == pytest.approx(0.2)
    # the same number by hand: softmax of the classifier over the images, then the formula
    imgs = torch.stack([torch.from_numpy(np.array(Image.open(tmp_path / f"{i:07d}.png"))).permute(2, 0, 1)
                        .float() / 255 for i in range(20)])
    probs = torch.softmax(clf(imgs).double(), 1).detach().numpy()
    assert res.inception_score == pytest.approx(inception_score(probs, 10))
    assert 1.0 <= res.inception_score[0]
    assert res.as_dict()["inception_score"]["mean"] == res.inception_score[0]
    (tmp_path / "empty").mkdir()
    with pytest.raises(CGNError, match="holds no images"):
        evaluate_folder(tmp_path / "empty", classifier=clf)


def test_inception_weights_are_looked_up_honestly(tmp_path):
    with pytest.raises(CGNError, match="inception_v3_google"):
        load_inception("imagenet")
    with pytest.raises(CGNError, match="do not exist"):
        load_inception(str(tmp_path / "missing.pth"))
