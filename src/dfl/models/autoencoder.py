"""Autoencoders (3.1 Q1): the lab's dense one (784 -> enc -> 784, ReLU code, sigmoid output),
a deeper variant with the same code size, and a linear probe on a trained encoder's codes."""

from __future__ import annotations

import itertools

import torch
from pydantic import PositiveInt
from torch import nn

from dfl.models.registry import register


class DenseAutoencoder(nn.Module):
    """Linear(784, enc) -> ReLU -> Linear(enc, 784) -> sigmoid, on flattened pixels in [0, 1]."""

    # Its code calls its layers and shape-agnostic ops only, so the stacked copies of several
    # runs (dfl/training/stacked.py) run it on (runs, batch, ...) inputs.
    stackable = True

    def __init__(self, enc: int, in_features: int = 784) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Flatten(), nn.Linear(in_features, enc), nn.ReLU())
        self.decoder = nn.Sequential(nn.Linear(enc, in_features), nn.Sigmoid())

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)  # (B, enc)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x)).view_as(x)  # same shape as the input


@register("autoencoder", objective="reconstruction")
def autoencoder(*, enc: PositiveInt = 32, in_features: PositiveInt = 784) -> nn.Module:
    """Lab 3.1 Q1 dense autoencoder: Linear(784, enc) -> ReLU -> Linear(enc, 784) -> sigmoid."""
    return DenseAutoencoder(enc, in_features)


class DeepAutoencoder(DenseAutoencoder):
    """784 -> hidden... -> enc -> ...hidden -> 784: more capacity around the same code size."""

    def __init__(
        self, enc: int, hidden: list[int], in_features: int = 784, linear_code: bool = False
    ) -> None:
        nn.Module.__init__(self)
        sizes = [in_features, *hidden, enc]
        down: list[nn.Module] = [nn.Flatten()]
        for a, b in itertools.pairwise(sizes):
            down += [nn.Linear(a, b), nn.ReLU()]
        if linear_code:  # a ReLU code loses every unit that is negative for an image
            down.pop()
        up: list[nn.Module] = []
        rev = sizes[::-1]
        for a, b in itertools.pairwise(rev):
            up += [nn.Linear(a, b), nn.ReLU()]
        up[-1] = nn.Sigmoid()  # pixels live in [0, 1]
        self.encoder, self.decoder = nn.Sequential(*down), nn.Sequential(*up)


@register("autoencoder_deep", objective="reconstruction")
def autoencoder_deep(
    *,
    enc: PositiveInt = 32,
    hidden: list[PositiveInt] = [512, 256],  # noqa: B006 (never mutated)
    linear_code: bool = False,
) -> nn.Module:
    """Deeper dense autoencoder: 784-512-256-enc-256-512-784, ReLU inside (and on the code
    unless `linear_code`), sigmoid output."""
    return DeepAutoencoder(enc, hidden, linear_code=linear_code)


class LinearProbe(nn.Module):
    """A trained encoder (frozen by the run's `freeze = ["encoder"]`) and a linear classifier
    on its codes: how much class information the code keeps."""

    stackable = True  # as DenseAutoencoder

    def __init__(self, encoder: nn.Module, enc: int, num_classes: int) -> None:
        super().__init__()
        self.encoder, self.head = encoder, nn.Linear(enc, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))  # (B, classes)


@register("autoencoder_probe")
def autoencoder_probe(
    *,
    enc: PositiveInt = 32,
    hidden: list[PositiveInt] = [],  # noqa: B006 (never mutated)
    num_classes: PositiveInt = 10,
) -> nn.Module:
    """Linear probe: an autoencoder's encoder (load it with init_from) + Linear(enc, classes)."""
    ae = DeepAutoencoder(enc, hidden) if hidden else DenseAutoencoder(enc)
    return LinearProbe(ae.encoder, enc, num_classes)
