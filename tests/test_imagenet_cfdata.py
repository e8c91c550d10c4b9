"""The counterfactual dataset format shared by the ImageNet CGN (writer) and classifier (reader)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cgn.errors import CGNError
from cgn.imagenet.cfdata import (HEADER, CFDatasetWriter, CounterfactualDataset, image_name,
                                 read_rows)


def _img(v: int) -> np.ndarray:
    a = np.zeros((8, 6, 3), np.uint8)
    a[..., 0] = v
    a[2, 3] = (1, 2, 3)
    return a


def test_write_read_roundtrip(tmp_path):
    w = CFDatasetWriter(tmp_path, "train")
    assert w.next_index == 0
    w.add(_img(10), seed=5, shape_class=1, texture_class=2, background_class=999)
    w.add(torch.full((3, 8, 6), 0.5), seed=6, shape_class=0, texture_class=0, background_class=3)
    lines = (tmp_path / "train" / "labels.csv").read_text().splitlines()
    assert lines[0] == ",".join(HEADER)
    assert lines[1] == "0000000.png,5,1,2,999"
    ds = CounterfactualDataset(tmp_path, "train")
    assert len(ds) == 2
    x, s, t, b = ds[0]
    assert x.shape == (3, 8, 6) and x.dtype == torch.float32
    assert (s, t, b) == (1, 2, 999)
    assert torch.equal((x * 255).round().to(torch.uint8).permute(1, 2, 0), torch.from_numpy(_img(10)))
    x1, *_ = ds[1]
    assert torch.allclose(x1, torch.full_like(x1, 128 / 255))
    ds_t = CounterfactualDataset(tmp_path, "train", transform=lambda im: im.size)
    assert ds_t[0][0] == (6, 8)
    loader = torch.utils.data.DataLoader(ds, batch_size=2)
    xb, sb, tb, bb = next(iter(loader))
    assert xb.shape == (2, 3, 8, 6) and sb.tolist() == [1, 0] and bb.tolist() == [999, 3]
    assert ds.labels("background_class") == [999, 3]


def test_resume_removes_orphans_and_torn_rows(tmp_path):
    w = CFDatasetWriter(tmp_path, "val")
    for i in range(3):
        w.add(_img(i), seed=i, shape_class=i, texture_class=i, background_class=i)
    d = tmp_path / "val"
    # a crash after the image was written but before its row: an orphan image
    (d / image_name(3)).write_bytes(b"partial")
    # a crash inside the temporary-file write
    (d / ".0000004.png.abc.tmp").write_bytes(b"x")
    # a crash in the middle of appending a row
    with open(d / "labels.csv", "a") as f:
        f.write("0000003.png,3,")
    with pytest.raises(CGNError, match="incomplete"):
        CounterfactualDataset(tmp_path, "val")
    w2 = CFDatasetWriter(tmp_path, "val")
    assert w2.next_index == 3 and w2.removed_orphans == 2
    assert not (d / image_name(3)).exists()
    w2.add(_img(7), seed=7, shape_class=7, texture_class=8, background_class=9)
    rows = read_rows(tmp_path, "val")
    assert [r.image for r in rows] == [image_name(i) for i in range(4)]
    assert rows[3].seed == 7 and rows[3].texture_class == 8
    assert len(CounterfactualDataset(tmp_path, "val")) == 4


def test_bad_input(tmp_path):
    w = CFDatasetWriter(tmp_path, "train")
    with pytest.raises(CGNError, match="0..999"):
        w.add(_img(0), seed=0, shape_class=1000, texture_class=0, background_class=0)
    with pytest.raises(CGNError, match="unknown split"):
        CFDatasetWriter(tmp_path, "test")
    with pytest.raises(CGNError, match="does not exist"):
        CounterfactualDataset(tmp_path, "val")
    (tmp_path / "train" / "labels.csv").write_text("a,b\n")
    with pytest.raises(CGNError, match="header"):
        CounterfactualDataset(tmp_path, "train")
