"""The MNIST classifier of the paper, input [B, 3, 32, 32] in [-1, 1]:

    BatchNorm(3)
    Conv 5x5, 3 -> 32            [B, 32, 28, 28]   + ReLU
    MaxPool 3, stride 2          [B, 32, 13, 13]
    Conv 3x3, 32 -> 32, pad 1    [B, 32, 13, 13]   + ReLU
    Conv 3x3, 32 -> 64, s2, p1   [B, 64, 7, 7]     + ReLU
    Conv 3x3, 64 -> 64, pad 1    [B, 64, 7, 7]     + ReLU
    AvgPool 7                    [B, 64, 1, 1]
    Linear 64 -> 10, log-softmax [B, 10]

Reference: docs/reference.md#mnist-classifier.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

CHECKPOINT_KIND = "mnist-classifier"


class MnistClassifier(nn.Module):
    def __init__(self, n_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.BatchNorm2d(3),
            # the paper's order is Conv -> ReLU -> MaxPool; max-pooling first is the same function
            # (ReLU is monotonic, and where the window's max is negative both give 0 and 0
            # gradient) but runs the ReLU on 13x13 instead of 28x28 maps: ~10 % faster training.
            # Both modules are parameter-free, so the state-dict keys are unchanged.
            nn.Conv2d(3, 32, 5),
            nn.MaxPool2d(3, stride=2), nn.ReLU(inplace=True),
            nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(inplace=True),
            nn.AvgPool2d(7),
        )
        self.head = nn.Linear(64, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, 3, 32, 32] in [-1, 1] -> log-probabilities [B, n_classes]."""
        bn, conv = self.features[0], self.features[1]
        # The input BatchNorm's affine part (gamma, beta) is folded into the first conv, which
        # has no padding: conv(gamma * xhat + beta) = conv(xhat, W * gamma) + b + sum_k W * beta.
        # Same function, same parameters and state dict, same gradients (up to rounding), but
        # xhat depends on no parameter, so backward skips the conv's input gradient (a 5x5
        # transposed conv onto 3 channels, a third of a training step on AVX-512).
        xhat = self._normalize(bn, x.contiguous())  # NCHW: 3-channel reductions are ~10x slower in channels_last
        gamma = bn.weight.view(1, -1, 1, 1)
        weight = conv.weight * gamma
        bias = conv.bias + (conv.weight * bn.bias.view(1, -1, 1, 1)).sum((1, 2, 3))
        if conv.weight.is_contiguous(memory_format=torch.channels_last):
            xhat = xhat.contiguous(memory_format=torch.channels_last)
            weight = weight.contiguous(memory_format=torch.channels_last)
        h = F.conv2d(xhat, weight, bias)               # [B, 32, 28, 28]
        h = self.features[2:](h).flatten(1)            # [B, 64]
        return torch.log_softmax(self.head(h), dim=1)

    @staticmethod
    def _normalize(bn: nn.BatchNorm2d, x: torch.Tensor) -> torch.Tensor:
        """``bn`` without its affine part, with the module's own bookkeeping: batch statistics and
        a running-average update in training, the running statistics in eval mode."""
        if bn.training and bn.track_running_stats:
            bn.num_batches_tracked.add_(1)
            momentum = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
        else:
            momentum = 0.0
        use_batch = bn.training or not bn.track_running_stats
        return F.batch_norm(x, bn.running_mean, bn.running_var, None, None, use_batch, momentum, bn.eps)
