"""A plain multilayer perceptron classifier: the smallest model worth training on MNIST."""

from __future__ import annotations

from torch import nn

from dfl.models.layers import build_layers
from dfl.models.registry import register


@register("mlp")
def mlp(*, hidden: list[int] = [256], num_classes: int = 10, dropout: float = 0.0) -> nn.Module:  # noqa: B006 (never mutated)
    """Multilayer perceptron: flatten -> (linear -> ReLU [-> dropout]) x len(hidden) -> linear."""
    layers: list[dict] = [{"type": "flatten"}]
    for width in hidden:
        layers += [{"type": "linear", "out": width}, {"type": "relu"}]
        if dropout:
            layers.append({"type": "dropout", "p": dropout})
    layers.append({"type": "linear", "out": num_classes})
    return build_layers(layers)[0]
