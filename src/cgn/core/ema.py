"""An exponential moving average of a generator's weights (GAN practice: sample from the average).

``G_ema <- decay * G_ema + (1 - decay) * G`` for every parameter after each generator step
(decay 0 copies: used before the EMA starts); buffers (BatchNorm running statistics, spectral-norm
vectors) are copied from G. Used by the MNIST CGN trainer (``train.ema_decay``) and the BigGAN
stand-in's pretraining.
"""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """One EMA step of the parameters (decay 0: a copy); buffers are copied."""
    for pe, p in zip(ema.parameters(), model.parameters()):
        if decay == 0:
            pe.copy_(p)
        else:
            pe.lerp_(p, 1.0 - decay)
    for be, b in zip(ema.buffers(), model.buffers()):
        be.copy_(b)


def ema_decay_at(step: int, decay: float, start: int) -> float:
    """The decay of the update that follows the generator step with 0-based index ``step``:
    0 (a copy of G) for the first ``start`` steps, ``decay`` after."""
    return 0.0 if step < start else decay
