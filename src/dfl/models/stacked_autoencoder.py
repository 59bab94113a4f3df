"""The lab's stacked autoencoder (3.1 Q2): sigmoid autoencoder layers 784-256-64 trained
greedily one at a time, then a linear classifier on the top code, then fine-tuning."""

from __future__ import annotations

import itertools

import torch
from pydantic import PositiveInt
from torch import nn

from dfl.models.registry import register


def _sigmoid_layer(n_in: int, n_out: int) -> nn.Module:
    return nn.Sequential(nn.Linear(n_in, n_out), nn.Sigmoid())


class StackedAutoencoder(nn.Module):
    """Encoders Linear(a, b) -> sigmoid, their decoders Linear(b, a) -> sigmoid, and a
    classifier Linear(top, classes) on logits. Layer k's parameters are `encoders.k` and
    `decoders.k`, which is what the layer-wise phases freeze and train by name."""

    # Its code calls its layers and shape-agnostic ops only, so the stacked copies of several
    # runs (dfl/training/stacked.py) run it on (runs, batch, ...) inputs.
    stackable = True

    def __init__(self, sizes: list[int], num_classes: int) -> None:
        super().__init__()
        pairs = list(itertools.pairwise(sizes))
        self.encoders = nn.ModuleList(_sigmoid_layer(a, b) for a, b in pairs)
        self.decoders = nn.ModuleList(_sigmoid_layer(b, a) for a, b in pairs)
        self.classifier = nn.Linear(sizes[-1], num_classes)

    def encode(self, x: torch.Tensor, layers: int | None = None) -> torch.Tensor:
        """The code after the first `layers` encoders (all of them by default)."""
        h = x.flatten(-3)  # images (..., 1, 28, 28) -> (..., 784)
        for encoder in self.encoders[:layers]:
            h = encoder(h)
        return h

    def reconstruct_layer(self, x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(input of layer k, its reconstruction by layer k): what layer-wise pretraining
        compares. The layers below k only supply the input, so no gradient flows into them."""
        with torch.no_grad():
            target = self.encode(x, k)
        return target, self.decoders[k](self.encoders[k](target))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.encode(x))  # (B, classes) logits


@register("stacked_autoencoder")
def stacked_autoencoder(
    *,
    sizes: list[PositiveInt] = [784, 256, 64],  # noqa: B006 (never mutated)
    num_classes: PositiveInt = 10,
) -> nn.Module:
    """Lab 3.1 Q2 stacked autoencoder: sigmoid AE layers 784-256-64 + Linear(64, 10) classifier."""
    if len(sizes) < 2:
        raise ValueError("sizes needs at least an input and one hidden size, e.g. [784, 256, 64]")
    return StackedAutoencoder(sizes, num_classes)
