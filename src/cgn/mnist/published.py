"""Published MNIST numbers: train / OOD-test accuracy in percent.

``None`` marks a number the source does not give.

Reference: docs/reference.md#published-mnist-accuracies.
"""

from __future__ import annotations

DATASETS = ("colored-mnist", "double-colored-mnist", "wildlife-mnist")

# (source, train set) -> {dataset: (train_acc, test_acc)}
PUBLISHED: dict[tuple[str, str], dict[str, tuple[float | None, float | None]]] = {
    ("paper", "real"): {"colored-mnist": (99.5, 35.9), "double-colored-mnist": (100.0, 10.3),
                        "wildlife-mnist": (100.0, 10.1)},
    ("paper", "real+gan"): {"colored-mnist": (99.8, 40.7), "double-colored-mnist": (100.0, 10.8),
                            "wildlife-mnist": (100.0, 10.4)},
    ("paper", "real+cf"): {"colored-mnist": (99.7, 95.1), "double-colored-mnist": (97.4, 89.0),
                           "wildlife-mnist": (99.2, 85.7)},
    ("study, authors' CGNs", "real+cf"): {"colored-mnist": (100.0, 96.98),
                                          "double-colored-mnist": (98.9, 92.29),
                                          "wildlife-mnist": (99.7, None)},
    ("study, authors' CGNs", "cf"): {"colored-mnist": (100.0, 92.70),
                                     "double-colored-mnist": (98.9, 90.42),
                                     "wildlife-mnist": (99.8, None)},
    ("study, own CGNs", "real+cf"): {"colored-mnist": (98.7, 68.96),
                                     "double-colored-mnist": (96.8, 88.54),
                                     "wildlife-mnist": (99.9, None)},
    ("study, own CGNs", "cf"): {"colored-mnist": (98.7, 43.88), "double-colored-mnist": (96.7, 87.90),
                                "wildlife-mnist": (99.9, None)},
    ("another reproduction", "real+cf"): {"colored-mnist": (99.2, 95.9),
                                          "double-colored-mnist": (96.9, 85.5),
                                          "wildlife-mnist": (96.8, 62.8)},
}

# The study's Table 4 (OOD test accuracy, real + counterfactuals): authors' CGNs vs own CGNs.
STUDY_SSIM = {"reference": {"colored-mnist": 96.42, "double-colored-mnist": 86.26, "wildlife-mnist": 71.89},
              "trained": {"colored-mnist": 61.12, "double-colored-mnist": 86.19, "wildlife-mnist": 61.94}}
