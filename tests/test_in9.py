"""IN-9 backgrounds challenge (docs/reference.md#in-9-bg-gap): the 1000 -> 9 mapping, every image counted, BG-gap."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torchvision.transforms import ToTensor

from cgn.errors import CGNError
from cgn.imagenet.in9 import (IN9_CLASSES, IN9_INDICES, IN9Folder, in9_bg_gap, in9_variant_dir,
                              in_to_in9)

SHARED = Path(os.environ.get("CGN_SHARED_DATA")
              or Path(__file__).resolve().parents[1] / ".." / "shared" / "data")
FOLDERS = ["00_dog", "01_bird", "02_wheeled vehicle", "03_reptile", "04_carnivore", "05_insect",
           "06_musical instrument", "07_primate", "08_fish"]


def _shared(rel: str) -> Path:
    p = SHARED / rel
    if not p.exists():
        pytest.skip(f"../shared/data not present: {p}")
    return p


def test_mapping_matches_reference():
    ref = json.loads(_shared("cgn_reference/in_to_in9.json").read_text())
    assert len(ref) == 1000
    assert in_to_in9().tolist() == [ref[str(i)] for i in range(1000)]
    names = [line.split()[0].lower() for line in
             _shared("cgn_reference/in9_classes.txt").read_text().splitlines() if line.strip()]
    assert list(IN9_CLASSES) == names


def _write(path: Path, imagenet_index: int) -> None:
    """A 4x4 image whose first pixel encodes an ImageNet class: R + 256 * G."""
    a = np.zeros((4, 4, 3), np.uint8)
    a[0, 0] = (imagenet_index % 256, imagenet_index // 256, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a).save(path)


class Decode(nn.Module):
    """Predicts the encoded class with every head except ``background``, which predicts 999
    (toilet tissue, not an IN-9 class)."""

    def __init__(self):
        super().__init__()
        self.p = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        px = (x[:, :, 0, 0] * 255).round().long()                        # [B, 3]
        idx = px[:, 0] + 256 * px[:, 1]
        hot = torch.nn.functional.one_hot(idx, 1000).float()
        bg = torch.nn.functional.one_hot(torch.full_like(idx, 999), 1000).float()
        return {"shape": hot, "texture": hot, "background": bg, "avg": hot, "shape_texture": hot}


def _variant(root: Path, variant: str, n: int, n_correct: int, layout_val: bool = True) -> None:
    """n images spread over the 9 classes; the first n_correct encode an ImageNet class of the
    right IN-9 class, the others one of another IN-9 class or one outside IN-9 (-1)."""
    base = root / variant / "val" if layout_val else root / variant
    for f in FOLDERS:
        (base / f).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        label = i % 9
        if i < n_correct:
            idx = IN9_INDICES[label][i % len(IN9_INDICES[label])]
        elif i % 2:
            idx = IN9_INDICES[(label + 1) % 9][0]
        else:
            idx = 999                                                      # maps to -1: wrong
        _write(base / FOLDERS[label] / f"img{i:03d}.png", idx)


def test_in9_counts_every_image_and_bg_gap(tmp_path):
    _variant(tmp_path, "original", 10, 9)
    _variant(tmp_path, "mixed_same", 11, 8)
    _variant(tmp_path, "mixed_rand", 11, 5, layout_val=False)            # both layouts read
    sets = {v: IN9Folder(str(in9_variant_dir(tmp_path, v)), transform=ToTensor())
            for v in ("original", "mixed_same", "mixed_rand")}
    assert [len(s) for s in sets.values()] == [10, 11, 11]
    # batch 4: 11 images = 4 + 4 + 3, a partial last batch (the original divides by 12)
    res = in9_bg_gap(Decode(), sets, batch_size=4)
    assert res["in9/original/avg"] == pytest.approx(90.0)
    assert res["in9/mixed_same/shape_texture"] == pytest.approx(100 * 8 / 11)
    assert res["in9/mixed_rand/shape_texture"] == pytest.approx(100 * 5 / 11)
    assert res["in9/bg_gap"] == pytest.approx(100 * 3 / 11)
    assert res["in9/mixed_same/n"] == 11
    assert res["in9/mixed_same/background"] == 0.0                      # -1 counts as wrong
    # batch size does not change anything
    assert in9_bg_gap(Decode(), sets, batch_size=3) == res


def test_in9_folder_checks(tmp_path):
    for f in FOLDERS[:8]:
        _write(tmp_path / "eight" / f / "a.png", 0)
    with pytest.raises(CGNError, match="9"):
        IN9Folder(str(tmp_path / "eight"))
    for f in ["00_dog", "02_bird"] + FOLDERS[2:9]:
        _write(tmp_path / "misnumbered" / f / "a.png", 0)
    with pytest.raises(CGNError, match="numbered"):
        IN9Folder(str(tmp_path / "misnumbered"))
    with pytest.raises(CGNError, match="not found"):
        in9_variant_dir(tmp_path, "mixed_next")
    # the release archive unpacks into bg_challenge/<variant>/val
    (tmp_path / "dl" / "bg_challenge" / "only_fg" / "val").mkdir(parents=True)
    assert in9_variant_dir(tmp_path / "dl", "only_fg") == tmp_path / "dl" / "bg_challenge" / "only_fg" / "val"
