"""Cost of one ImageNet CGN training micro-step at 256 px, counted without a GPU.

The full model (four BigGAN-deep-256, U2-Net, VGG16 features) is built on PyTorch's ``meta``
device, so nothing is computed; one forward + backward of the six losses is traced with
``FlopCounterMode`` (matmul/conv FLOPs, forward and backward) and a saved-tensor hook (the
activation memory autograd keeps for the backward pass). Static memory = weights + gradients and
Adam moments of the three trainable mechanisms. Times are FLOPs / (assumed sustained rate) and
are printed for a few GPUs; they are estimates, not measurements.

    python benchmarks/imagenet_cgn_cost.py [--batch-size 1]
"""

from __future__ import annotations

import argparse

import torch
from torch.utils.flop_counter import FlopCounterMode

from cgn.core.perceptual import VGG16Features
from cgn.imagenet.biggan import BigGANConfig
from cgn.imagenet.config import preset
from cgn.imagenet.losses import ImageNetCGNLosses
from cgn.imagenet.model import ImageNetCGN
from cgn.imagenet.u2net import U2NetConfig


class MetaVGG(VGG16Features):
    """VGG16 features without the input-offset check (it needs a value; the ImageNet and random
    sources have no offset anyway)."""

    def forward(self, x: torch.Tensor, depth: int = 4) -> list[torch.Tensor]:
        out = []
        for i, layer in enumerate(self.features[: self.stage_ends[depth - 1] + 1]):
            x = layer(x)
            if i in self.stage_ends:
                out.append(x)
        return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch-size", type=int, default=1)
    args = ap.parse_args()
    from cgn.core.precision import machine_summary
    print(machine_summary())
    cfg = preset("imagenet-256")
    with torch.device("meta"):
        model = ImageNetCGN(BigGANConfig(), U2NetConfig("full")).train()
        vgg = MetaVGG()
    losses = ImageNetCGNLosses(cfg.loss, extractor=vgg)

    n_params = sum(p.numel() for p in model.parameters()) + sum(p.numel() for p in vgg.parameters())
    n_buffers = sum(b.numel() for b in model.buffers())
    n_train = sum(p.numel() for m in model.trainable().values() for p in m.parameters())
    static = 4 * (n_params + n_buffers + 3 * n_train)           # fp32 weights + grads + 2 Adam moments

    saved: dict[int, int] = {}

    def pack(t: torch.Tensor):
        key = id(t.untyped_storage()) if t.device.type != "meta" else id(t)
        saved[key] = max(saved.get(key, 0), t.numel() * t.element_size())
        return t

    b = args.batch_size
    u = torch.zeros(b, 128, device="meta")
    y = torch.zeros(b, 1000, device="meta")
    flops = FlopCounterMode(display=False)
    with flops, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(u, y, y, y, 1.0)
        terms = losses(out.composite(), out.x_gt, out.mask, out.foreground, out.background_mask)
        terms.total().backward()
    total = flops.get_total_flops()
    act = sum(saved.values())
    gib = 1024 ** 3
    print(f"parameters: {n_params / 1e6:.1f} M (trainable {n_train / 1e6:.1f} M), buffers {n_buffers / 1e6:.1f} M")
    print(f"static memory (weights, grads, Adam): {static / gib:.2f} GiB")
    print(f"activations kept for backward, batch {b}: {act / gib:.2f} GiB (upper bound: no reuse)")
    print(f"estimated peak: {(static + act) / gib:.1f} GiB + CUDA context/workspace (~1 GiB)")
    print(f"FLOPs per micro-step (forward + backward), batch {b}: {total / 1e12:.2f} TFLOP")
    gen = FlopCounterMode(display=False)
    with gen, torch.no_grad():
        model.eval()(u, y, y, y, 0.5, with_reference=False).composite()
    print(f"FLOPs per generated batch of {b} (forward only, no G_gt, no losses): "
          f"{gen.get_total_flops() / 1e12:.3f} TFLOP ({gen.get_total_flops() / total:.0%} of a training step)")
    steps = 4000 * 300
    for gpu, rate in (("GTX 1080 Ti fp32, 8 TFLOP/s sustained", 8e12),
                      ("V100 fp32, 12 TFLOP/s sustained", 12e12),
                      ("A100/H100 TF32, 60 TFLOP/s sustained", 60e12)):
        per = total / rate
        print(f"  {gpu}: {per * 1e3:.0f} ms/micro-step; the authors' default 4000 x 300 "
              f"micro-steps: {per * steps / 3600:.0f} GPU-hours")


if __name__ == "__main__":
    main()
