"""What the texture loss of a *trained* world CGN teaches: its patch grids and foregrounds, judged.

    .venv/bin/python benchmarks/world_texture_target.py RUN [--checkpoints ep0000100.pt ...]
        [--judges DIR] [--n 500]

RUN is a ``cgn reproduce imagenet`` run directory (its CGN ``cgn/full`` and its stand-in
judges, from ``stand_ins.json``; ``--judges`` overrides them). For each checkpoint, ``--n`` draws
as in training (one class for all mechanisms, truncation 1.0, seed 0) give x_gt, the CGN's mask
m and its foreground f. With s = U2-Net(x_gt) (the stand-in's IoU against the ground truth is
0.9999, so s is the object of x_gt):

- ``mu_mask``, ``mu_object``: mean of m and of s; ``iou``: IoU of m > 0.5 with s > 0.5;
- ``object_in_grid``: mean of s over the patch grid cut by m, i.e. how much of the texture
  target L_text compares f with is object (the grid of s, cut where m is highest);
- ``judge_grid``: share of patch grids P(x_gt, m) the texture judge names with the class (the
  target L_text gives f); ``judge_grid_ideal``: the same for P(x_gt, s), the target of a CGN
  whose mask is the object; ``judge_fg``: share of foregrounds f it names with the class;
  ``judge_xgt``: share of the whole images x_gt it names with the class;
- where the mask has grown past the object (m > 0.5, s < 0.5) and where it is off (m < 0.5):
  ``err_b_grown`` / ``err_f_grown`` / ``err_b_off``, the mean |b − x_gt| and |f − x_gt| there
  (images in [-1, 1]). A mask that grows over what the background got wrong, where the
  foreground is still x_gt, keeps L_rec low.

``--gradients K`` adds, per checkpoint, how consistent the mechanisms' gradients are: the
training's own micro-step (:class:`cgn.imagenet.train.Trainer`, resumed from the checkpoint in a
scratch folder) on K micro-batches of episode 0's generators, one backward per loss group
(L_rec = l1 + perc, L_shape = binary + mask, L_text, L_bg); for each mechanism and group the
mean cosine between the gradients of two different micro-batches (1: every micro-batch pushes
the same way; 0: Adam's steps cancel out over episodes) and the mean gradient norm; and
``texture: rec vs text``, the mean cosine between the texture mechanism's L_rec and L_text
gradients of the same micro-batch, with the ratio of their norms.

Step 0 is the untrained CGN (every mechanism a copy of the BigGAN, mask = U2-Net(f_shape)).
The patch grid is the one training uses (:func:`cgn.imagenet.losses.patch_grid`, the run's
loss geometry), drawn from a fixed generator.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from cgn.core.checkpoint import load_checkpoint
from cgn.imagenet.losses import patch_grid
from cgn.imagenet.model import CHECKPOINT_KIND, truncated_noise
from cgn.imagenet.world_judges import load_judge
from cgn.imagenet.world_metrics import judge_accuracy


def probe(model, loss_cfg, texture_judge, n: int, seed: int = 0, batch: int = 50) -> dict:
    g, gp = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed + 1)
    y = torch.arange(n) % model.n_classes
    keep: dict[str, list] = {k: [] for k in ("grid", "ideal", "fg", "xgt")}
    sums = {"mask": 0.0, "obj": 0.0, "inter": 0.0, "union": 0.0, "obj_grid": 0.0,
            "eb_grown": 0.0, "ef_grown": 0.0, "n_grown": 0.0, "eb_off": 0.0, "n_off": 0.0}
    geo = dict(patch=loss_cfg.text_patch, work_size=loss_cfg.text_work_size, top=loss_cfg.text_top,
               grid=loss_cfg.text_grid)
    with torch.no_grad():
        for a in range(0, n, batch):
            ys = y[a:a + batch]
            u = truncated_noise(len(ys), model.z_dim, 1.0, g)
            v = model.class_vector(ys)
            out = model(u, v, v, v, 1.0, with_reference=True)
            s = model.u2net(out.x_gt.float()).float()                            # [B, 1, R, R]
            m = out.mask.float()
            # one draw of windows per image, shared by the image's and the saliency's grid
            state = gp.get_state()
            keep["grid"].append(patch_grid(out.x_gt, m, generator=gp, **geo))
            gp.set_state(state)
            sums["obj_grid"] += patch_grid(s.expand(-1, 3, -1, -1), m, generator=gp, **geo)[:, 0].mean((1, 2)).sum().item()
            keep["ideal"].append(patch_grid(out.x_gt, s, generator=gp, **geo))
            keep["fg"].append(out.foreground.float().clamp(-1, 1))
            keep["xgt"].append(out.x_gt.float())
            sums["mask"] += m.mean((1, 2, 3)).sum().item()
            sums["obj"] += s.mean((1, 2, 3)).sum().item()
            mb, sb = m > 0.5, s > 0.5
            sums["inter"] += (mb & sb).sum().item()
            sums["union"] += (mb | sb).sum().item()
            grown, off = (mb & ~sb).float(), (~mb).float()
            eb = (out.background.float() - out.x_gt).abs().mean(1, keepdim=True)
            ef = (out.foreground.float() - out.x_gt).abs().mean(1, keepdim=True)
            sums["eb_grown"] += (eb * grown).sum().item()
            sums["ef_grown"] += (ef * grown).sum().item()
            sums["n_grown"] += grown.sum().item()
            sums["eb_off"] += (eb * off).sum().item()
            sums["n_off"] += off.sum().item()
    acc = {k: judge_accuracy(texture_judge, torch.cat(v).clamp(-1, 1), y, 256, k) for k, v in keep.items()}
    return {"mu_mask": sums["mask"] / n, "mu_object": sums["obj"] / n,
            "iou": sums["inter"] / max(sums["union"], 1.0), "object_in_grid": sums["obj_grid"] / n,
            "judge_grid": acc["grid"], "judge_grid_ideal": acc["ideal"], "judge_fg": acc["fg"],
            "judge_xgt": acc["xgt"], "err_b_grown": sums["eb_grown"] / max(sums["n_grown"], 1.0),
            "err_f_grown": sums["ef_grown"] / max(sums["n_grown"], 1.0),
            "err_b_off": sums["eb_off"] / max(sums["n_off"], 1.0)}


GROUPS = {"rec": ("l1", "perc"), "shape": ("binary", "mask"), "text": ("text",), "bg": ("bg",)}


def gradient_consistency(checkpoint: Path, k: int, untrained: bool) -> dict:
    """Mean pairwise cosine and mean norm of the micro-batch gradients, per mechanism and group."""
    import shutil
    import tempfile

    from cgn.config import from_dict
    from cgn.imagenet.config import ImageNetCGNConfig
    from cgn.imagenet.train import Trainer, step_generator
    ck = load_checkpoint(checkpoint, kind=CHECKPOINT_KIND)
    cfg = from_dict(ImageNetCGNConfig, ck["config"], str(checkpoint))
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "checkpoints").mkdir()
        shutil.copyfile(checkpoint, Path(tmp) / "checkpoints" / "last.pt")
        shutil.copyfile(checkpoint.parents[1] / "config.json", Path(tmp) / "config.json")
        tr = Trainer(cfg, tmp, resume=True, quiet=True)
    model, t = tr.model, tr.cfg.train
    if untrained:
        gt = model.biggan_GT.state_dict()
        for mech in (model.f_shape, model.f_text, model.f_bg):
            mech.load_state_dict(gt)
    mechs = model.trainable()
    grads: dict[tuple[str, str], list[torch.Tensor]] = {}
    for micro in range(k):
        g = step_generator(t.seed, 0, micro, 0)
        classes = torch.randint(model.n_classes, (t.batch_size,), generator=g)
        u = truncated_noise(t.batch_size, model.z_dim, t.truncation, g)
        y = model.class_vector(classes)
        out = model(u, y, y, y, t.truncation)
        terms = tr.losses(out.composite(), out.x_gt, out.mask, out.foreground, out.background_mask, generator=g)
        for group, names in GROUPS.items():
            loss = sum(terms.weighted[n] for n in names)
            for mname, mech in mechs.items():
                params = [p for p in mech.parameters() if p.requires_grad]
                gs = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
                flat = torch.cat([(x if x is not None else torch.zeros_like(p)).flatten()
                                  for x, p in zip(gs, params)])
                grads.setdefault((mname, group), []).append(flat)
    res = {}
    for (mname, group), gs in grads.items():
        G = torch.stack(gs)
        norms = G.norm(dim=1)
        if float(norms.max()) == 0.0:
            continue
        cos = (G @ G.T) / (norms[:, None] * norms[None, :]).clamp_min(1e-30)
        off = cos[~torch.eye(len(gs), dtype=torch.bool)]
        res[f"{mname}/{group}"] = {"cos": float(off.mean()), "norm": float(norms.mean())}
    # does L_text pull the texture mechanism the way L_rec does? (same micro-batch)
    r, x = torch.stack(grads[("texture", "rec")]), torch.stack(grads[("texture", "text")])
    res["texture: rec vs text"] = {"cos": float(torch.nn.functional.cosine_similarity(r, x, dim=1).mean()),
                                   "norm": float(r.norm(dim=1).mean() / x.norm(dim=1).mean())}
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--judges", type=Path, required=True, help="the run's judges folder (--judges of the run)")
    ap.add_argument("--checkpoints", nargs="*", default=None,
                    help="files in RUN/cgn/full/checkpoints (default: every epNNNNNNN.pt)")
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--json", type=Path, default=None, help="also write the rows here")
    ap.add_argument("--gradients", type=int, default=0, metavar="K",
                    help="also measure the gradients' consistency over K micro-batches (>= 2)")
    a = ap.parse_args()
    from cgn.config import from_dict
    from cgn.core.precision import cpu_isa, cpu_model
    from cgn.imagenet.config import ImageNetCGNConfig
    from cgn.imagenet.generate import load_generator
    torch.set_num_threads(1)
    folder = a.run / "cgn" / "full" / "checkpoints"
    names = a.checkpoints or sorted(p.name for p in folder.glob("ep*.pt"))
    judge = load_judge(a.judges / "texture_judge.pt", "texture_judge")
    print(f"# {a.run}, n = {a.n}; {cpu_model()}, {cpu_isa()}")
    rows = []
    for i, name in enumerate(names):
        ck = load_checkpoint(folder / name, kind=CHECKPOINT_KIND)
        cfg = from_dict(ImageNetCGNConfig, ck["config"], str(folder / name))
        model = load_generator(folder / name)
        if i == 0:  # the untrained CGN: every mechanism starts as the BigGAN
            gt = model.biggan_GT.state_dict()
            for mech in (model.f_shape, model.f_text, model.f_bg):
                mech.load_state_dict(gt)
            rows.append({"step": 0, **probe(model.eval(), cfg.loss, judge, a.n)})
            print(json.dumps(rows[-1]))
            model = load_generator(folder / name)
        rows.append({"step": ck["step"], **probe(model.eval(), cfg.loss, judge, a.n)})
        print(json.dumps(rows[-1]))
        if a.gradients >= 2:
            if i == 0:
                rows[-2]["gradients"] = gradient_consistency(folder / name, a.gradients, untrained=True)
            rows[-1]["gradients"] = gradient_consistency(folder / name, a.gradients, untrained=False)
    keys = [k for k in rows[0] if k not in ("step", "gradients")]
    print("\n| episode | " + " | ".join(keys) + " |\n|" + "---|" * (len(keys) + 1))
    for r in rows:
        print(f"| {r['step']} | " + " | ".join(f"{r[k]:.3f}" for k in keys) + " |")
    if a.gradients >= 2:
        cells = list(dict.fromkeys(c for r in rows for c in r["gradients"]))
        print("\ngradient consistency: mean pairwise cosine (mean norm) of "
              f"{a.gradients} micro-batches\n\n| episode | " + " | ".join(cells) + " |\n|" + "---|" * (len(cells) + 1))
        for r in rows:
            gr = r["gradients"]
            print(f"| {r['step']} | " + " | ".join(f"{gr[c]['cos']:.3f} ({gr[c]['norm']:.2g})" if c in gr else "—"
                                                  for c in cells) + " |")
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
