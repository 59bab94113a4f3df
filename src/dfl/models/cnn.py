"""CNNs as layer lists: the lab's notebook baseline, its exploration model, and any CNN a
config describes (`model = "cnn"`, `model_args.layers = [...]`)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, PositiveInt
from torch import nn

from dfl.errors import ShapeError
from dfl.models.layers import build_layers
from dfl.models.registry import register


def lab_baseline_layers(num_classes: int = 10) -> list[dict]:
    """The notebook's CNN (3.2 Q2): four conv-BN-ReLU blocks, 28 -> 14 -> 7 -> 4 -> 2, then
    Linear(256, 100) -> Linear(100, 10) with no activation between them (as in the notebook)."""
    blocks = [(16, 3, 2, 1), (32, 3, 2, 1), (32, 3, 2, 1), (64, 2, 2, 0)]
    layers: list[dict] = []
    for out, kernel, stride, padding in blocks:
        layers += [
            {"type": "conv", "out": out, "kernel": kernel, "stride": stride, "padding": padding},
            {"type": "batchnorm"},
            {"type": "relu"},
        ]
    layers += [
        {"type": "flatten"},
        {"type": "linear", "out": 100, "in_features": 256},
        {"type": "linear", "out": num_classes},
    ]
    return layers


def explore_layers(
    filters: list[int],
    kernels: list[int],
    batchnorm: bool,
    activation: str,
    pool_after: list[int],
    num_classes: int,
    head_in: int | None = None,
    dropout: float = 0.0,
) -> list[dict]:
    """The notebook's "CNNnet": stride-1 'same' convs, optional BN, pooling after the listed
    layers (1-based), head Linear(C*h*w, 128) -> ReLU -> Linear(128, classes). `head_in` pins
    the head's in-features as the notebook did (C * 7 * 7); None infers it. `dropout` > 0 puts
    dropout before each of the head's two linears (the notebook had none)."""
    if len(kernels) != len(filters):
        raise ValueError(f"{len(filters)} filters but {len(kernels)} kernels: give one per layer")
    outside = [i for i in pool_after if not 1 <= i <= len(filters)]
    if outside:
        raise ValueError(
            f"pool_after {outside} names no conv: the {len(filters)} convs are numbered 1 to "
            f"{len(filters)}"
        )
    layers: list[dict] = []
    for i, (out, kernel) in enumerate(zip(filters, kernels, strict=True), start=1):
        layers.append({"type": "conv", "out": out, "kernel": kernel, "padding": "same"})
        if batchnorm:
            layers.append({"type": "batchnorm"})
        layers.append({"type": activation})
        if i in pool_after:
            layers.append({"type": "maxpool", "kernel": 2})
    drop = [{"type": "dropout", "p": dropout}] if dropout else []
    layers += [
        {"type": "flatten"},
        *drop,
        {"type": "linear", "out": 128, "in_features": head_in},
        {"type": "relu"},
        *drop,
        {"type": "linear", "out": num_classes},
    ]
    return layers


@register("cnn_lab")
def cnn_lab(*, num_classes: int = 10) -> nn.Module:
    """Lab 3.2 Q2 notebook baseline: 4 strided conv-BN-ReLU blocks, Linear(256,100)->(100,10)."""
    return build_layers(lab_baseline_layers(num_classes))[0]


@register("cnn_explore")
def cnn_explore(
    *,
    filters: list[int] = [16, 32, 64, 128],  # noqa: B006 (never mutated)
    kernels: list[int] = [3, 3, 3, 3],  # noqa: B006
    batchnorm: bool = True,
    activation: Literal["relu", "leaky_relu", "tanh", "gelu"] = "relu",
    pool_after: list[int] = [2, 4],  # noqa: B006
    num_classes: int = 10,
    head_in: int | None = None,  # None infers it; the notebook pinned C * 7 * 7 (see below)
) -> nn.Module:
    """Lab 3.2 Q2 exploration "CNNnet": same-padded convs, optional BN, pooling after layers.

    `head_in` pins the head's in-features as the notebook's `Linear(C * 7 * 7, 128)` did, so a
    config can state that choice and have the shape check catch it when the pooling disagrees
    (configs/models/cnn_writeup_candidate.toml)."""
    layers = explore_layers(
        filters, kernels, batchnorm, activation, pool_after, num_classes, head_in
    )
    return build_layers(layers)[0]


POOLINGS = {  # where the two 2x2 max-pools go (28 -> 14 -> 7), as a function of depth
    "every_second": lambda depth: [2, 4] if depth >= 4 else [depth - 1, depth],
    "first_two": lambda depth: [1, 2],
    "last_two": lambda depth: [depth - 1, depth],
}


@register("cnn_search")
def cnn_search(
    *,
    depth: Annotated[int, Field(ge=2, le=6)] = 4,
    width: PositiveInt = 16,
    growth: Literal["double", "constant"] = "double",
    kernel: Literal[3, 5, 7] = 3,
    pool: Literal["every_second", "first_two", "last_two"] = "every_second",
    batchnorm: bool = True,
    activation: Literal["relu", "leaky_relu", "tanh", "gelu"] = "relu",
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0,
    num_classes: int = 10,
) -> nn.Module:
    """The exploration CNNnet family with flat arguments, for a search: `depth` same-padded
    convs starting at `width` filters (doubling each layer up to 256, or constant), one
    kernel size, two max-pools placed by `pool`, optional dropout in the head. The defaults are
    the lab's exploration model."""
    filters = [min(width * (2**i if growth == "double" else 1), 256) for i in range(depth)]
    layers = explore_layers(
        filters,
        [kernel] * depth,
        batchnorm,
        activation,
        POOLINGS[pool](depth),
        num_classes,
        dropout=dropout,
    )
    return build_layers(layers)[0]


@register("cnn")
def cnn(*, layers: list[dict] = [], num_classes: int = 10) -> nn.Module:  # noqa: B006
    """Any CNN, given as a layer list; an empty list is the notebook's baseline (cnn_lab's
    layers), and a final linear to num_classes is added when the list does not end in one.

    Layer types and their keys: conv (out, kernel=3, stride=1, padding=0 or "same",
    dilation=1, bias=true), batchnorm, relu / leaky_relu / tanh / gelu / sigmoid, maxpool /
    avgpool (kernel=2, stride=kernel), dropout (p=0.5), flatten, linear (out, in_features
    inferred). From the command line: --set 'model_args.layers=[{type="conv", out=16,
    padding="same"}, {type="relu"}, {type="maxpool"}, {type="flatten"}]'; check it with
    `dfl shapes cnn --set ...` before training."""
    if not layers:
        return build_layers(lab_baseline_layers(num_classes))[0]
    added = layers[-1].get("type") != "linear"
    if added:
        layers = [*layers, {"type": "linear", "out": num_classes}]
    try:
        return build_layers(layers)[0]
    except ShapeError as e:
        if added and str(e).startswith(f"layer {len(layers) - 1} (linear)"):
            raise ShapeError(
                f"{e} (the final linear to num_classes, added because the list does not end in one)"
            ) from None
        raise
