"""Krizhevsky et al. 2012: the two-tower ("two GPU") AlexNet, sized by arguments.

conv1 sees the whole input; its output channels are split into two towers: conv2, conv4 and
conv5 are grouped convolutions (groups=2), so each tower's conv1 filters feed only that
tower, as on the paper's two GPUs. conv3 and the fully connected layers see both towers.
Every ReLU is its own, non-in-place module.
"""

from __future__ import annotations

import torch
from torch import nn


class TwoTowerAlexNet(nn.Module):
    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 1000,
        widths: tuple[int, ...] = (96, 256, 384, 384, 256),
        conv1_kernel: int = 11,
        conv1_stride: int = 1,
        fc: int = 4096,
        lrn: bool = True,
        dropout: float = 0.5,
        conv1_init_std: float = 0.01,
    ):
        super().__init__()
        if len(widths) != 5 or any(w % 2 for w in widths):
            raise ValueError(f"widths must be five even numbers (two towers), got {widths}")
        c1, c2, c3, c4, c5 = widths
        self.conv1 = nn.Conv2d(in_channels, c1, conv1_kernel, conv1_stride, conv1_kernel // 2)
        self.relu1 = nn.ReLU()
        self.norm1 = nn.LocalResponseNorm(5, 1e-4, 0.75, 2.0) if lrn else nn.Identity()
        self.pool1 = nn.MaxPool2d(3, 2)
        self.conv2 = nn.Conv2d(c1, c2, 5, padding=2, groups=2)
        self.relu2 = nn.ReLU()
        self.norm2 = nn.LocalResponseNorm(5, 1e-4, 0.75, 2.0) if lrn else nn.Identity()
        self.pool2 = nn.MaxPool2d(3, 2)
        self.conv3 = nn.Conv2d(c2, c3, 3, padding=1)
        self.relu3 = nn.ReLU()
        self.conv4 = nn.Conv2d(c3, c4, 3, padding=1, groups=2)
        self.relu4 = nn.ReLU()
        self.conv5 = nn.Conv2d(c4, c5, 3, padding=1, groups=2)
        self.relu5 = nn.ReLU()
        self.pool5 = nn.AdaptiveMaxPool2d(3)
        self.drop6 = nn.Dropout(dropout)
        self.fc6 = nn.Linear(c5 * 9, fc)
        self.relu6 = nn.ReLU()
        self.drop7 = nn.Dropout(dropout)
        self.fc7 = nn.Linear(fc, fc)
        self.relu7 = nn.ReLU()
        self.fc8 = nn.Linear(fc, num_classes)
        # conv1 starts as in the paper, N(0, 0.01): small, so the kernels in the figure show
        # what training put there rather than their random start. The layers above use He
        # init, so the net trains within a CPU budget without the paper's slow start.
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.conv1.weight, std=conv1_init_std)
        nn.init.normal_(self.fc8.weight, std=0.01)  # small logits at the start

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.norm1(self.relu1(self.conv1(x))))
        x = self.pool2(self.norm2(self.relu2(self.conv2(x))))
        x = self.relu3(self.conv3(x))
        x = self.relu4(self.conv4(x))
        x = self.pool5(self.relu5(self.conv5(x)))
        x = self.relu6(self.fc6(self.drop6(torch.flatten(x, 1))))
        x = self.relu7(self.fc7(self.drop7(x)))
        return self.fc8(x)
