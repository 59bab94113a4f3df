"""The lab's dense autoencoder (3.1 Q1): 784 -> enc -> 784, ReLU code, sigmoid output."""

from __future__ import annotations

import torch
from torch import nn

from dfl.models.registry import register


class DenseAutoencoder(nn.Module):
    """Linear(784, enc) -> ReLU -> Linear(enc, 784) -> sigmoid, on flattened pixels in [0, 1]."""

    def __init__(self, enc: int, in_features: int = 784) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Flatten(), nn.Linear(in_features, enc), nn.ReLU())
        self.decoder = nn.Sequential(nn.Linear(enc, in_features), nn.Sigmoid())

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)  # (B, enc)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x)).view_as(x)  # same shape as the input


@register("autoencoder", objective="reconstruction")
def autoencoder(*, enc: int = 32, in_features: int = 784) -> nn.Module:
    """Lab 3.1 Q1 dense autoencoder: Linear(784, enc) -> ReLU -> Linear(enc, 784) -> sigmoid."""
    return DenseAutoencoder(enc, in_features)
