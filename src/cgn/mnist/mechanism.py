"""The MNIST CGN's mechanisms (shape, texture, background): what they share.

Each mechanism is a stack ``self.layers`` (an :class:`torch.nn.Sequential`; its state-dict keys
``layers.<i>.*`` follow the authors' layer order) that maps ``z = [u, e(y)]`` to an image. It runs

- fused (default): every nearest x2 Upsample + 3x3 Conv2d pair as one low-resolution convolution
  (:func:`cgn.mnist.upconv.run_layers`; same function and parameters, about half the work);
- plain (:func:`set_fused` ``False``): layer by layer;
- frozen (inside :func:`frozen_inference`): compiled for inference on a snapshot of the weights
  (:class:`cgn.mnist.upconv.FrozenLayers`: BatchNorm folded, activations fused).
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from cgn.mnist.upconv import FrozenLayers, run_layers


class Mechanism(nn.Module):
    """Base of the MNIST CGN mechanisms: ``self.layers`` run through :func:`run_layers`, or
    through a :class:`FrozenLayers` while :func:`frozen_inference` holds one."""

    # True: each Upsample + Conv2d pair runs as one low-resolution conv (same function and
    # parameters, about half the work); False: the plain layer-by-layer path.
    fused = True
    frozen: FrozenLayers | None = None

    def body(self, z: torch.Tensor) -> torch.Tensor:
        if self.frozen is not None:
            return self.frozen(z)
        return run_layers(self.layers, z, self.fused)


def set_fused(model: nn.Module, fused: bool) -> nn.Module:
    """Switch every :class:`Mechanism` under ``model`` between the fused (default) and the plain
    Upsample + Conv2d path; returns ``model``."""
    for m in model.modules():
        if isinstance(m, Mechanism):
            m.fused = fused
    return model


@contextlib.contextmanager
def frozen_inference(model: nn.Module, dtype: torch.dtype = torch.float32):
    """Within the block, every :class:`Mechanism` of the eval-mode ``model`` runs compiled
    (:class:`FrozenLayers` in ``dtype``); the weights must not change meanwhile."""
    if model.training:
        raise ValueError("frozen_inference needs a model in eval mode")
    mechs = [m for m in model.modules() if isinstance(m, Mechanism)]
    for m in mechs:
        m.frozen = FrozenLayers(m.layers, dtype)
    try:
        yield model
    finally:
        for m in mechs:
            m.frozen = None
