"""Published ImageNet numbers: the paper's and the reproductions', in one place.

Inception Score / μ_mask of the CGN and its loss ablation (the paper's Table 2 and Re-CGN's
reproduction), and the classifier numbers: shape bias per head, IN-9 accuracies with the
BG-gap, top-1. Accuracies and biases are in percent, as published; ``None`` marks a number the
source does not give. ``cgn reproduce imagenet`` prints them beside a world's numbers, which come
from another world (Inception Score over that world's classes, not ImageNet's 1000).

Reference: docs/reference.md ("Published ImageNet CGN quality", "Published ImageNet classifier
numbers").
"""

from __future__ import annotations

SOURCES = ("paper", "Re-CGN")

# model -> source -> (Inception Score, mu_mask); "full" = all losses, "no_X" = without L_X
TABLE2: dict[str, dict[str, tuple[float | None, float | None]]] = {
    "full": {"paper": (130.2, 0.3), "Re-CGN": (156.1, 0.3)},
    "no_shape": {"paper": (85.9, 0.2), "Re-CGN": (100.8, 0.3)},
    "no_text": {"paper": (198.4, 0.9), "Re-CGN": (186.5, 0.4)},
    "no_bg": {"paper": (195.6, 0.1), "Re-CGN": (200.9, 0.1)},
    "no_rec": {"paper": (38.4, 0.3), "Re-CGN": (19.3, 0.4)},
    "biggan": {"paper": (202.9, None), "Re-CGN": (None, None)},
}

# shape bias (%) of the ensemble trained with counterfactuals, per head
SHAPE_BIAS: dict[str, dict[str, float | None]] = {
    "paper": {"shape": 54.8, "texture": 16.7, "background": 22.9},
    "Re-CGN": {"shape": 49.1, "texture": 20.5, "background": 25.7},
}

# IN-9 (%): training data -> (original, mixed-same, mixed-rand, BG-gap)
IN9: dict[str, dict[str, tuple[float, float, float, float]]] = {
    "paper": {"IN": (95.6, 86.2, 78.9, 7.3), "IN + CGN": (94.2, 83.4, 80.1, 3.3)},
    "Re-CGN": {"IN + CGN": (86.8, 73.2, 68.3, 4.9)},
}

# top-1 (%) of the ensemble trained with counterfactuals
TOP1: dict[str, float] = {"paper": 74.0, "Re-CGN": 56.2}
