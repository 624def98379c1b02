"""Built-in guidance-network architectures (plain torch) that the network loader builds by name.

'guidekit:digit-cnn' is the pack's demo MNIST classifier (benchmarks/weights/mnist-classifier-guidance):
a deliberately plain CNN trained on clean digits only, the 'off-the-shelf' network of the evidence.
"""
from __future__ import annotations

import torch
import torch.nn as nn


class DigitCNN(nn.Module):
    """Two conv blocks and a linear head on 16×16 grey digits in [0, 1]; 10 logits."""

    def __init__(self, width: int = 16, num_classes: int = 10):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(2 * width * 16, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


BUILTIN = {"digit-cnn": DigitCNN}
