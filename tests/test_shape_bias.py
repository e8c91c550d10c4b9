"""Shape bias (docs/reference.md#shape-bias): the 16-category decision rule, the counting, the cue-conflict loader."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import torch
from torch import nn

from cgn.errors import CGNError
from cgn.imagenet.shape_bias import (CATEGORIES, CATEGORY_INDICES, CueConflictDataset, decide_16,
                                     parse_stimulus_name, shape_bias, shape_bias_counts,
                                     shape_bias_from_counts)

SHARED = Path(os.environ.get("CGN_SHARED_DATA")
              or Path(__file__).resolve().parents[1] / ".." / "shared" / "data")


def _shared(rel: str) -> Path:
    p = SHARED / rel
    if not p.exists():
        pytest.skip(f"../shared/data not present: {p}")
    return p


def _probs(**mass: float) -> torch.Tensor:
    """A 1000-way probability vector with the given mass on ImageNet indices (i<idx>=mass),
    the rest spread evenly."""
    p = torch.zeros(1000, dtype=torch.float64)
    for k, v in mass.items():
        p[int(k[1:])] = v
    rest = 1 - p.sum()
    free = p == 0
    p[free] = rest / free.sum()
    return p


def test_category_table_matches_reference():
    ref = json.loads(_shared("cgn_reference/shape_bias_16class_imagenet_indices.json").read_text())
    assert list(CATEGORIES) == sorted(ref) and len(CATEGORIES) == 16
    assert {k: sorted(v) for k, v in ref.items()} == CATEGORY_INDICES


def test_decision_averages_category_probabilities():
    # all the mass on the single airplane index -> airplane
    assert CATEGORIES[decide_16(_probs(i404=0.9)[None])[0]] == "airplane"
    # 0.5 on one dog index (dog has 109 indices: mean 0.0046) vs 0.1 on knife (1 index: 0.1):
    # averaging decides knife, although the arg-max ImageNet class is a dog
    p = _probs(i152=0.5, i499=0.1)
    assert CATEGORIES[decide_16(p[None])[0]] == "knife"
    # the same 0.5 spread... on every bear index (mean 0.125) beats knife 0.1
    p = _probs(i294=0.125, i295=0.125, i296=0.125, i297=0.125, i499=0.1)
    assert CATEGORIES[decide_16(p[None])[0]] == "bear"
    # a batch: decisions row by row
    batch = torch.stack([_probs(i766=0.3), _probs(i8=0.9), _probs(i385=0.2, i386=0.2)])
    assert [CATEGORIES[i] for i in decide_16(batch)] == ["oven", "bird", "elephant"]


def test_counting_and_same_category_convention():
    c = {n: i for i, n in enumerate(CATEGORIES)}
    shape = torch.tensor([c["cat"], c["cat"], c["dog"], c["car"], c["bear"], c["oven"]])
    texture = torch.tensor([c["dog"], c["dog"], c["cat"], c["knife"], c["bear"], c["clock"]])
    decision = torch.tensor([c["cat"], c["dog"], c["cat"], c["bird"], c["bear"], c["oven"]])
    # rows: shape hit, texture hit, texture hit, neither, same category (bear/bear), shape hit
    r = shape_bias_counts(decision, shape, texture, exclude_same=True)
    assert {k: int(v) for k, v in r.items()} == {"shape_hits": 2, "texture_hits": 2, "n": 5,
                                                 "excluded": 1}
    assert shape_bias_from_counts(2, 2) == 50.0
    r = shape_bias_counts(decision, shape, texture, exclude_same=False)
    # kept, the same-category image is a shape hit and a texture hit at once
    assert (int(r["shape_hits"]), int(r["texture_hits"]), int(r["n"])) == (3, 3, 6)
    assert shape_bias_from_counts(0, 0) != shape_bias_from_counts(0, 0)   # NaN: no hit at all


def test_loader_reads_subset_with_right_labels():
    root = _shared("cue_conflict_subset")
    ds = CueConflictDataset(root)
    files = sorted(root.rglob("*.png"))
    assert len(ds) == len(files) == 80
    for (path, s, t), f in zip(ds.samples, files):
        assert path == f
        m = re.match(r"^([a-z]+)\d+-([a-z]+)\d+\.png$", f.name)
        assert CATEGORIES[s] == m.group(1) == f.parent.name
        assert CATEGORIES[t] == m.group(2)
    img, s, t = ds[0]
    assert img.size == (224, 224) and img.mode == "RGB"
    assert parse_stimulus_name("bear10-oven1.png") == ("bear", "oven")
    with pytest.raises(CGNError):
        parse_stimulus_name("bear10-lion1.png")


def test_loader_rejects_misplaced_files(tmp_path):
    from PIL import Image
    (tmp_path / "cat").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "cat" / "dog1-cat2.png")
    with pytest.raises(CGNError, match="folder"):
        CueConflictDataset(tmp_path)
    with pytest.raises(CGNError, match="does not exist"):
        CueConflictDataset(tmp_path / "missing")


class ByIndex(nn.Module):
    """Logits that put the softmax mass on ImageNet index ``x[:, 0]`` for the shape head and on
    ``x[:, 1]`` for every other prediction."""

    def __init__(self):
        super().__init__()
        self.p = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        a = torch.nn.functional.one_hot(x[:, 0].long(), 1000).float() * 20
        b = torch.nn.functional.one_hot(x[:, 1].long(), 1000).float() * 20
        return {"shape": a, "texture": b, "background": b, "avg": b, "shape_texture": b}


def test_shape_bias_metric_on_known_predictions():
    c = {n: i for i, n in enumerate(CATEGORIES)}
    idx = {n: CATEGORY_INDICES[n][0] for n in CATEGORIES}
    # (shape cat, texture cat, shape-head ImageNet class, other heads' class)
    rows = [("cat", "dog", idx["cat"], idx["dog"]),        # shape head: shape hit; others: texture
            ("car", "bear", idx["car"], idx["bear"]),
            ("oven", "knife", idx["oven"], idx["oven"]),   # everyone: shape hit
            ("bird", "boat", idx["truck"], idx["boat"]),   # shape head: neither
            ("clock", "clock", idx["clock"], idx["clock"]),  # same category: excluded
            ("chair", "keyboard", idx["chair"], idx["knife"])]
    data = [(torch.tensor([a, b]), c[s], c[t]) for s, t, a, b in rows]
    res = shape_bias(ByIndex(), data, batch_size=4)          # 6 rows: a partial last batch of 2
    assert res["shape_bias/n"] == 5 and res["shape_bias/excluded"] == 1
    assert (res["shape_bias/shape/shape_hits"], res["shape_bias/shape/texture_hits"]) == (4, 0)
    assert res["shape_bias/shape"] == 100.0
    assert (res["shape_bias/texture/shape_hits"], res["shape_bias/texture/texture_hits"]) == (1, 3)
    assert res["shape_bias/texture"] == 25.0
    res = shape_bias(ByIndex(), data, batch_size=4, exclude_same=False)
    assert res["shape_bias/n"] == 6 and res["shape_bias/avg/shape_hits"] == 2


def test_loader_finds_stimuli_in_downloaded_repository(tmp_path):
    from PIL import Image
    d = tmp_path / "texture-vs-shape-master" / "stimuli" / "style-transfer-preprocessed-512"
    for name in ("cat/cat1-dog2.png", "dog/dog3-dog1.png"):
        (d / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(d / name)
    (tmp_path / "texture-vs-shape-master" / "stimuli" / "other").mkdir()
    ds = CueConflictDataset(tmp_path)
    assert ds.root == d and [(s, t) for _, s, t in ds.samples] == [
        (CATEGORIES.index("cat"), CATEGORIES.index("dog")),
        (CATEGORIES.index("dog"), CATEGORIES.index("dog"))]
    with pytest.raises(CGNError, match="no cue-conflict"):
        CueConflictDataset(tmp_path / "texture-vs-shape-master" / "stimuli" / "other")
