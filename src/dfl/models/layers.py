"""Declarative layers: a network is a list of small typed specs, checked before it is built.

Each spec infers its output shape from its input shape, so a layer that cannot take its input
(a linear whose in-features disagree, a kernel larger than its input, a pool that empties the
map) is a `ShapeError` naming the layer's index and kind, before anything trains. A linear's
`in_features` may be left out: it is inferred.
"""

from __future__ import annotations

import difflib
import math
import typing
from typing import Annotated, Literal

from pydantic import Field, TypeAdapter, ValidationError
from torch import nn

from dfl.errors import ConfigError, ShapeError
from dfl.validation import Strict, describe_item

Shape = tuple[int, ...]  # per sample: (C, H, W) for maps, (F,) for vectors


def conv_output_size(
    size: int, kernel: int, stride: int = 1, padding: int = 0, dilation: int = 1
) -> int:
    """O = floor((W - K_eff + 2P) / S) + 1 with K_eff = D(K - 1) + 1; below 1 means no output."""
    effective = dilation * (kernel - 1) + 1
    return (size - effective + 2 * padding) // stride + 1


class _Layer(Strict):
    def build(self, index: int, shape: Shape) -> tuple[nn.Module, Shape]:
        raise NotImplementedError

    def fail(self, index: int, shape: Shape, needed: str) -> ShapeError:
        return ShapeError(f"layer {index} ({self.type}) gets input {list(shape)} but {needed}")

    def need_map(self, index: int, shape: Shape) -> tuple[int, int, int]:
        if len(shape) != 3:
            raise self.fail(index, shape, "needs a [C, H, W] feature map (is a flatten before it?)")
        return shape  # type: ignore[return-value]


class Conv(_Layer):
    type: Literal["conv"]
    out: int = Field(gt=0)
    kernel: int = Field(3, gt=0)
    stride: int = Field(1, gt=0)
    padding: int | Literal["same"] = 0  # "same": kernel // 2, the lab's CNNnet choice
    dilation: int = Field(1, gt=0)
    bias: bool = True

    def build(self, index: int, shape: Shape) -> tuple[nn.Module, Shape]:
        c, h, w = self.need_map(index, shape)
        pad = self.kernel // 2 if self.padding == "same" else self.padding
        span = self.dilation * (self.kernel - 1) + 1
        if span > min(h, w) + 2 * pad:
            raise self.fail(index, shape, f"its {span}x{span} kernel (padding {pad}) does not fit")
        oh = conv_output_size(h, self.kernel, self.stride, pad, self.dilation)
        ow = conv_output_size(w, self.kernel, self.stride, pad, self.dilation)
        module = nn.Conv2d(
            c, self.out, self.kernel, self.stride, pad, self.dilation, bias=self.bias
        )
        return module, (self.out, oh, ow)


class Pool(_Layer):
    type: Literal["maxpool", "avgpool"]
    kernel: int = Field(2, gt=0)
    stride: int | None = Field(None, gt=0)  # None: equal to the kernel, as in torch

    def build(self, index: int, shape: Shape) -> tuple[nn.Module, Shape]:
        c, h, w = self.need_map(index, shape)
        stride = self.stride or self.kernel
        oh, ow = conv_output_size(h, self.kernel, stride), conv_output_size(w, self.kernel, stride)
        if oh < 1 or ow < 1:
            raise self.fail(index, shape, f"its {self.kernel}x{self.kernel} pool empties the map")
        cls = nn.MaxPool2d if self.type == "maxpool" else nn.AvgPool2d
        return cls(self.kernel, stride), (c, oh, ow)


class BatchNorm(_Layer):
    type: Literal["batchnorm"]

    def build(self, index: int, shape: Shape) -> tuple[nn.Module, Shape]:
        if len(shape) == 3:
            return nn.BatchNorm2d(shape[0]), shape
        return nn.BatchNorm1d(shape[0]), shape


class Activation(_Layer):
    type: Literal["relu", "leaky_relu", "tanh", "gelu", "sigmoid"]

    def build(self, index: int, shape: Shape) -> tuple[nn.Module, Shape]:
        make = {
            "relu": nn.ReLU,
            "leaky_relu": nn.LeakyReLU,
            "tanh": nn.Tanh,
            "gelu": nn.GELU,
            "sigmoid": nn.Sigmoid,
        }[self.type]
        return make(), shape


class Dropout(_Layer):
    type: Literal["dropout"]
    p: float = Field(0.5, ge=0.0, lt=1.0)

    def build(self, index: int, shape: Shape) -> tuple[nn.Module, Shape]:
        return (nn.Dropout2d(self.p) if len(shape) == 3 else nn.Dropout(self.p)), shape


class Flatten(_Layer):
    type: Literal["flatten"]

    def build(self, index: int, shape: Shape) -> tuple[nn.Module, Shape]:
        return nn.Flatten(), (math.prod(shape),)


class Linear(_Layer):
    type: Literal["linear"]
    out: int = Field(gt=0)
    in_features: int | None = Field(None, gt=0)  # None: inferred from the layer below
    bias: bool = True

    def build(self, index: int, shape: Shape) -> tuple[nn.Module, Shape]:
        if len(shape) != 1:
            raise self.fail(index, shape, "needs a flat vector (add a flatten layer before it)")
        if self.in_features is not None and self.in_features != shape[0]:
            raise self.fail(
                index, shape, f"was declared with in_features={self.in_features}, not {shape[0]}"
            )
        return nn.Linear(shape[0], self.out, bias=self.bias), (self.out,)


LayerSpec = Annotated[
    Conv | Pool | BatchNorm | Activation | Dropout | Flatten | Linear, Field(discriminator="type")
]
_SPECS = TypeAdapter(list[LayerSpec])


def parse_layers(raw: list[dict]) -> list[_Layer]:
    """Validate a list of layer dicts (from TOML or code); errors name the layer index."""
    try:
        return _SPECS.validate_python(raw)
    except ValidationError as e:
        raise ConfigError(_describe(e)) from None


KINDS: dict[str, type[_Layer]] = {
    kind: cls
    for cls in (Conv, Pool, BatchNorm, Activation, Dropout, Flatten, Linear)
    for kind in typing.get_args(cls.model_fields["type"].annotation)
}


def _describe(error: ValidationError) -> str:
    """One line for a bad layer list; an unknown layer type or key names the closest known."""
    parts = []
    for item in error.errors():
        loc = [str(p) for p in item["loc"]]
        if item["type"] == "union_tag_invalid":  # loc: [index]
            kind = str(item["input"].get("type") if isinstance(item["input"], dict) else "")
            close = difflib.get_close_matches(kind, list(KINDS), n=1)
            guess = f"did you mean '{close[0]}'? " if close else ""
            parts.append(
                f"layers.{loc[0]}: unknown layer type '{kind}' ({guess}types: {', '.join(KINDS)})"
            )
        elif item["type"] == "extra_forbidden" and len(loc) == 3:  # loc: [index, type, key]
            fields = [f for f in KINDS[loc[1]].model_fields if f != "type"]
            close = difflib.get_close_matches(loc[2], fields, n=1)
            guess = f"did you mean '{close[0]}'? " if close else ""
            known = ", ".join(fields) or "no keys"
            parts.append(
                f"layers.{loc[0]}: {loc[1]} has no key '{loc[2]}' ({guess}it takes {known})"
            )
        else:
            parts.append(describe_item(item, prefix="layers."))
    return "; ".join(parts)


def build_layers(
    raw: list[dict] | list[_Layer], in_shape: Shape = (1, 28, 28)
) -> tuple[nn.Sequential, list[Shape]]:
    """Infer every shape, then build: returns the network and each layer's output shape."""
    if not isinstance(raw, list | tuple):  # a string would be checked letter by letter
        raise ConfigError(
            f'layers must be a list of tables, e.g. [{{type = "conv", out = 8, kernel = 3}}]'
            f" (got the {type(raw).__name__} {raw!r})"
        )
    specs = parse_layers([s.model_dump() if isinstance(s, _Layer) else s for s in raw])
    modules, shapes, shape = [], [], tuple(in_shape)
    for index, spec in enumerate(specs):
        try:
            module, shape = spec.build(index, shape)
        except ShapeError as e:
            e.fitted = nn.Sequential(*modules)  # what fits, where the shapes went wrong
            raise
        modules.append(module)
        shapes.append(shape)
    return nn.Sequential(*modules), shapes
