"""Springenberg et al. 2015: All-CNN-C (convolutions only, strided convs instead of pooling)."""

from __future__ import annotations

import torch
from torch import nn


class AllCNNC(nn.Module):
    """3x3 96, 3x3 96, 3x3 96/2, 3x3 192, 3x3 192, 3x3 192/2, 3x3 192, 1x1 192, 1x1 classes,
    global average pooling; dropout 20% on the input and 50% after each stride-2 layer."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10, width: float = 1.0):
        super().__init__()
        a, b = round(96 * width), round(192 * width)
        spec = [  # (out, kernel, stride, padding)
            (a, 3, 1, 1), (a, 3, 1, 1), (a, 3, 2, 1),
            (b, 3, 1, 1), (b, 3, 1, 1), (b, 3, 2, 1),
            (b, 3, 1, 0), (b, 1, 1, 0), (num_classes, 1, 1, 0),
        ]  # fmt: skip
        self.drop_in = nn.Dropout(0.2)
        c = in_channels
        for i, (out, k, s, p) in enumerate(spec, start=1):
            setattr(self, f"conv{i}", nn.Conv2d(c, out, k, s, p))
            setattr(self, f"relu{i}", nn.ReLU())
            c = out
        self.drop3 = nn.Dropout(0.5)
        self.drop6 = nn.Dropout(0.5)
        self.pool = nn.AdaptiveAvgPool2d(1)
        for m in self.modules():  # He et al. 2015: nine ReLU layers without batch norm train
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop_in(x)
        for i in range(1, 10):
            x = getattr(self, f"relu{i}")(getattr(self, f"conv{i}")(x))
            if i in (3, 6):
                x = getattr(self, f"drop{i}")(x)
        return torch.flatten(self.pool(x), 1)
