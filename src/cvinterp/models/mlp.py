"""A fully connected net for Erhan et al. 2009's activation maximisation on MNIST digits."""

from __future__ import annotations

import torch
from torch import nn


class MLP(nn.Module):
    """Flattened pixels -> hidden layers fc1, fc2, ... (sigmoid units, as in Erhan et al.'s
    stacked autoencoders and DBNs, or ReLU) -> a linear class layer. Trained on labels, or its
    hidden layers pretrained without them (`cvinterp.train.pretrain_denoising_autoencoders`)."""

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        input_size: int = 28,
        hidden: tuple[int, ...] = (500, 500, 500),
        activation: str = "sigmoid",
    ):
        super().__init__()
        if activation not in ("sigmoid", "relu"):
            raise ValueError(f"activation must be 'sigmoid' or 'relu', not {activation!r}")
        self.flatten = nn.Flatten()
        c = in_channels * input_size * input_size
        self.hidden = len(hidden)
        for i, h in enumerate(hidden, start=1):
            setattr(self, f"fc{i}", nn.Linear(c, h))
            setattr(self, f"act{i}", nn.Sigmoid() if activation == "sigmoid" else nn.ReLU())
            c = h
        setattr(self, f"fc{len(hidden) + 1}", nn.Linear(c, num_classes))

    def hidden_output(self, x: torch.Tensor, depth: int) -> torch.Tensor:
        """The output of the first `depth` hidden layers (0: the flattened input)."""
        x = self.flatten(x)
        for i in range(1, depth + 1):
            x = getattr(self, f"act{i}")(getattr(self, f"fc{i}")(x))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return getattr(self, f"fc{self.hidden + 1}")(self.hidden_output(x, self.hidden))
