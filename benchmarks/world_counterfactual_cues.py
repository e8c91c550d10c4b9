"""Which class each cue of a world CGN's counterfactuals shows: what they teach a classifier.

    .venv/bin/python benchmarks/world_counterfactual_cues.py RUN --judges DIR [--n 1000]
        [--checkpoint cgn/full/checkpoints/last.pt] [--classifier classifier/cgn/checkpoints/last.pt]

RUN is a ``cgn reproduce imagenet`` run directory; DIR the folder of its four judges (the
stand-in cache folder ``judges-*`` named in RUN/log.txt). ``--n`` counterfactuals are drawn as the
mechanism evaluation draws them (:func:`cgn.imagenet.world_metrics.cgn_mechanism_samples`:
shape, texture and background classes s, t, b all different, the CGN's sampling truncation,
seed 0), composed x = m·f + (1 − m)·b, and read cue by cue:

- ``mask``: the shape judge on the CGN's mask m (the label the shape head is trained with);
- ``digit of x``: the shape judge on U²-Net(x), the object a viewer sees in the composite;
- ``digit of f``: the shape judge on U²-Net(f), the object the foreground itself draws (a texture
  mechanism that outputs a texture draws none; one that still outputs a picture draws a digit);
- ``world classifier on x``: the stand-in Inception network;
- with ``--classifier`` (a checkpoint of ``cgn imagenet train-classifier``, relative to RUN): each
  head of the ensemble on x.

Each row gives the share of the n images named s, t and b (the rest: another class). A shape head
taught with counterfactuals whose visible digit is of class t, while their label is s, cannot
learn that the digit's shape decides.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from cgn.core.composer import compose
from cgn.imagenet.generate import load_generator
from cgn.imagenet.imagefolder import IMAGENET_MEAN, IMAGENET_STD
from cgn.imagenet.world_judges import load_judge
from cgn.imagenet.world_metrics import _batched, cgn_mechanism_samples


def shares(logits: torch.Tensor, s, t, b) -> dict:
    pred = logits.argmax(1)
    return {k: float((pred == v).double().mean()) for k, v in (("s", s), ("t", t), ("b", b))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--judges", type=Path, required=True)
    ap.add_argument("--checkpoint", default="cgn/full/checkpoints/last.pt")
    ap.add_argument("--classifier", default="", help="an ensemble checkpoint, relative to RUN")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--json", type=Path, default=None, help="also write the rows here")
    a = ap.parse_args()
    from cgn.core.precision import cpu_isa, cpu_model
    torch.set_num_threads(1)
    cgn = load_generator(a.run / a.checkpoint).eval()
    smp = cgn_mechanism_samples(cgn, a.n)
    s, t, b = smp["shape_labels"], smp["texture_labels"], smp["background_labels"]
    x = compose(smp["masks"], smp["foregrounds"], smp["backgrounds"]).clamp(-1, 1)
    shape_judge = load_judge(a.judges / "shape_judge.pt", "shape_judge")
    world = load_judge(a.judges / "world_classifier.pt", "world_classifier")
    sal = lambda img: _batched(cgn.u2net, img, 256).clamp(0, 1)   # noqa: E731
    rows = {"mask (shape judge on m)": shares(_batched(shape_judge, smp["masks"], 256), s, t, b),
            "digit of x (shape judge on U2-Net(x))": shares(_batched(shape_judge, sal(x), 256), s, t, b),
            "digit of f (shape judge on U2-Net(f))": shares(_batched(shape_judge, sal(smp["foregrounds"]), 256), s, t, b),
            "world classifier on x": shares(_batched(world, x, 256), s, t, b)}
    if a.classifier:
        from cgn.imagenet.classifier_train import load_classifier
        model, _ = load_classifier(a.run / a.classifier)
        mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        xin = (((x + 1) / 2 * 255).round() / 255 - mean) / std    # as the counterfactual PNGs are read
        with torch.no_grad():
            out = model.eval()(xin)
        for head, logits in out.items():
            rows[f"classifier head {head} on x"] = shares(logits, s, t, b)
    print(f"# {a.run / a.checkpoint}, n = {a.n}, distinct (s, t, b); {cpu_model()}, {cpu_isa()}")
    print("\n| cue | named s (shape) | named t (texture) | named b (background) |\n|---|---|---|---|")
    for k, r in rows.items():
        print(f"| {k} | {r['s']:.3f} | {r['t']:.3f} | {r['b']:.3f} |")
    if a.json:
        a.json.write_text(json.dumps({"n": a.n, "checkpoint": a.checkpoint, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
