"""The background mechanism of the MNIST CGN.

In the MNIST CGN the background mechanism has the architecture of the texture mechanism
(:mod:`cgn.mnist.texture`, tile-and-crop prior included) with its own weights. It produces ``b``
in ``x = m * f + (1 - m) * b``; in the authors' checkpoints it is ``f_text2`` (``f_text1`` is
the texture mechanism).
"""

from __future__ import annotations

from cgn.mnist.texture import TextureMechanism


class BackgroundMechanism(TextureMechanism):
    """Noise + label -> background [B, 3, H, W] in [-1, 1] (architecture of TextureMechanism)."""
