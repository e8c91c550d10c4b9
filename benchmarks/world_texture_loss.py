"""How the ImageNet CGN's texture loss sees a world: patch windows and VGG16 stages.

    .venv/bin/python benchmarks/world_texture_loss.py WORLD [--images 400]

On the first ``--images`` test images of a world folder (docs/world.md), with their
ground-truth masks standing in for the CGN's mask:

1. The patch grid's candidate windows (cgn.imagenet.losses.patch_grid at the config's
   geometry, the paper's by default: x_gt and mask resized to 128 px, 15-px windows, the 100 with
   the highest mean mask): their mean mask, i.e. how much of a texture patch is object.
2. For each VGG16 stage (relu1_2 .. relu4_3) and feature source (hed, random): the Gram matrices
   of the images' patch grids, classified by nearest class centroid (L1, the style loss's
   distance; centroids from the first half of the images, accuracy on the second half) against
   the texture class, and the ratio of the mean distance to the other classes' centroids to the
   distance to the own one. A stage whose Grams do not separate the world's textures cannot
   teach the texture mechanism its class.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from cgn.core.losses import gram_matrix
from cgn.core.perceptual import STAGE_NAMES, load_vgg16
from cgn.imagenet.config import LossConfig
from cgn.imagenet.losses import patch_grid
from cgn.imagenet.world_data import WorldSplit


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("world", help="world folder (cgn imagenet world build)")
    ap.add_argument("--images", type=int, default=400, help="test images used (default 400)")
    args = ap.parse_args()
    c = LossConfig()
    ds = WorldSplit(args.world, "test")
    b = ds.batch(slice(0, args.images))
    x, m, tex = b["image"], b["mask"], b["texture"]
    k = ds.num_classes
    prob = F.interpolate(m, (c.text_work_size,) * 2, mode="bicubic", align_corners=False)
    score = F.avg_pool2d(prob, c.text_patch, stride=1).flatten(1).topk(c.text_top, dim=1).values
    print(f"patch windows (work size {c.text_work_size}, patch {c.text_patch}, top {c.text_top}): "
          f"mean mask {score.mean():.3f}, of the weakest candidate {score[:, -1].mean():.3f}")
    grids = patch_grid(x, m, patch=c.text_patch, work_size=c.text_work_size, top=c.text_top,
                       grid=c.text_grid, generator=torch.Generator().manual_seed(0))
    half = len(x) // 2
    for source in ("hed", "random"):
        vgg, _ = load_vgg16(source, seed=0)
        with torch.no_grad():
            feats = vgg(grids, 4)
        for i, f in enumerate(feats):
            g = gram_matrix(f).flatten(1)
            cent = torch.stack([g[:half][tex[:half] == j].mean(0) for j in range(k)])
            d = torch.cdist(g[half:], cent, p=1) / g.shape[1]
            own = d.gather(1, tex[half:, None]).squeeze(1)
            other = (d.sum(1) - own) / (k - 1)
            acc = (d.argmin(1) == tex[half:]).float().mean()
            print(f"{source:6s} {STAGE_NAMES[i]} {tuple(f.shape[1:])}: texture class by nearest "
                  f"centroid {acc:.3f}, other/own centroid distance {(other / own).mean():.2f}")


if __name__ == "__main__":
    main()
