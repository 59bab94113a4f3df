"""Shape checking and cost accounting for any model: `dfl shapes SPEC|MODEL`.

A dummy batch runs once through the model. Forward hooks on every module record each one's
output shape; torch's `FlopCounterMode` counts the multiply-adds of the operations that
dominate the cost, attributed to the module that runs them:

- convolutions: output elements × (C_in / groups × kernel area);
- linear layers and any matrix product (matmul, bmm, einsum, scaled_dot_product_attention):
  output elements × the contracted dimension, so a ViT's attention scores and A·V are counted,
  on the attention module that computes them.

Element-wise work (activations, normalisation, pooling, bias and residual adds, softmax) is not
counted: it is memory-bound and small beside the matrix products. Counts are per sample.

Declarative CNNs are checked before anything is built: a layer that cannot take its input is
the `ShapeError` of `dfl.models.layers`, printed as one line naming the layer.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from dfl import models
from dfl.config import build_config, merge, parse_overrides, read_toml
from dfl.errors import ConfigError, DflError, ShapeError, one_line, out_of_memory
from dfl.models.layers import Shape, build_layers
from dfl.models.registry import check_magnitudes

DEFAULT_INPUT: Shape = (1, 28, 28)  # one MNIST image
_DUMMY_BATCH = 2  # not 1: a model that squeezes the batch dimension would hide it


@dataclass(frozen=True)
class LayerRow:
    name: str  # the module's path in the model ("3", "blocks.0.attn"); "" is the model itself
    kind: str  # its class name
    output_shape: list[int] | None  # per sample (the batch dimension dropped); None: no tensor
    params: int  # parameters the module owns itself (not its children's)
    macs: int  # multiply-adds it runs itself, per sample


@dataclass(frozen=True)
class ModelSummary:
    input_shape: list[int]
    output_shape: list[int] | None
    rows: list[LayerRow]
    params: int  # every parameter once: sum(p.numel() for p in model.parameters())
    trainable_params: int
    macs: int  # per sample; the rows add up to it

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# A sample's numbers at most: the dummy batch runs for real, and its activations are a few
# times its size per layer (3x2048x2048 fits).
MAX_INPUT = 1 << 24


def model_summary(model: nn.Module, input_shape: Shape = DEFAULT_INPUT) -> ModelSummary:
    """Run a dummy batch through `model` and account for every layer (see the module doc).

    Rows are the modules that ran, in the order they finished, that are leaves or own
    parameters or multiply-adds themselves; rows' params and macs add up to the totals."""
    names = {module: name for name, module in model.named_modules()}
    order: list[nn.Module] = []
    shapes: dict[nn.Module, list[int] | None] = {}
    running: list[str] = []  # the modules entered but not finished: names a failing layer

    def enter(module: nn.Module, inputs: Any) -> None:
        running.append(names[module])

    def leave(module: nn.Module, inputs: Any, output: Any) -> None:
        running.pop()
        if module not in shapes:
            order.append(module)
        shapes[module] = _per_sample_shape(output)

    handles = [m.register_forward_pre_hook(enter) for m in names]
    handles += [m.register_forward_hook(leave) for m in names]
    first = next(model.parameters(), None)
    device = first.device if first is not None else torch.device("cpu")
    dtype = first.dtype if first is not None and first.is_floating_point() else torch.float32
    if math.prod(input_shape) > MAX_INPUT:
        raise ShapeError(
            f"input {list(input_shape)} holds {math.prod(input_shape):,} numbers a sample; the "
            f"check runs a real batch and takes at most {MAX_INPUT:,}: give a smaller --input"
        )
    x = torch.zeros(_DUMMY_BATCH, *input_shape, device=device, dtype=dtype)
    was_training = model.training
    model.eval()  # batch statistics and dropout play no part in shapes or counts
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            output = model(x)
    except (RuntimeError, ValueError, AssertionError, IndexError) as e:  # how shapes disagree
        failing = running[-1] if running else ""
        kind = type(_module(model, failing)).__name__
        where = f"layer {failing} ({kind})" if failing else f"the model ({kind}) itself"
        first_line = str(e).strip().splitlines()[0]
        raise ShapeError(f"{where} cannot take input {list(input_shape)}: {first_line}") from None
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)

    macs = _self_macs(model, counter)
    rows, seen = [], set()
    for module in order:
        own = [p for p in module.parameters(recurse=False) if id(p) not in seen]
        seen.update(id(p) for p in own)
        name = names[module]
        is_leaf = next(module.children(), None) is None
        if is_leaf or own or macs.get(name, 0):
            n_params = sum(p.numel() for p in own)
            rows.append(
                LayerRow(name, type(module).__name__, shapes[module], n_params, macs.get(name, 0))
            )
    unused = sum(p.numel() for p in model.parameters() if id(p) not in seen)
    if unused:  # parameters of modules the forward never called: counted, not hidden
        rows.append(LayerRow("(not called)", "-", None, unused, 0))
    total_macs = sum(macs.values())
    unattributed = total_macs - sum(row.macs for row in rows)
    if unattributed:  # work the counter names no module for: in the total all the same
        rows.append(LayerRow("(unattributed)", "-", None, 0, unattributed))
    return ModelSummary(
        input_shape=list(input_shape),
        output_shape=_per_sample_shape(output),
        rows=rows,
        params=sum(p.numel() for p in model.parameters()),
        trainable_params=sum(p.numel() for p in model.parameters() if p.requires_grad),
        macs=total_macs,
    )


def _module(model: nn.Module, name: str) -> nn.Module:
    return model.get_submodule(name) if name else model


def _per_sample_shape(output: Any) -> list[int] | None:
    if isinstance(output, torch.Tensor) and output.dim() > 0:
        return list(output.shape[1:])
    if isinstance(output, tuple | list) and output:
        return _per_sample_shape(output[0])  # (out, extras): the first is the main output
    return None


def _self_macs(model: nn.Module, counter: FlopCounterMode) -> dict[str, int]:
    """Multiply-adds each module runs itself, per sample, by module path ("" = the model).

    FlopCounterMode reports FLOPs (2 per multiply-add) per module *including* what runs inside
    it, named "<RootClass>.<path>", and only for modules whose forward ran: a ModuleList has
    no entry, and a method called directly (`self.attn.attend(x)`) counts towards the module
    whose forward called it. So each entry gives its work to the nearest ancestor that has one.
    """
    root = type(model).__name__
    inclusive: dict[str, int] = {}
    for name, ops in counter.get_flop_counts().items():
        if name == root:
            inclusive[""] = sum(ops.values())
        elif name.startswith(root + "."):
            inclusive[name[len(root) + 1 :]] = sum(ops.values())
    inclusive[""] = counter.get_total_flops()  # everything, even ops outside any module
    own = dict(inclusive)
    for path, flops in inclusive.items():
        if path:
            own[_counted_parent(path, inclusive)] -= flops
    return {path: flops // (2 * _DUMMY_BATCH) for path, flops in own.items() if flops > 0}


def _counted_parent(path: str, counted: dict[str, int]) -> str:
    parts = path.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        if ".".join(parts[:cut]) in counted:
            return ".".join(parts[:cut])
    return ""


# ---------------------------------------------------------------------------------------------
# Specs: a model name, a training config, or a layer list


def model_from_spec(
    spec: str, overrides: list[str], input_shape: Shape = DEFAULT_INPUT
) -> tuple[str, nn.Module]:
    """(a label for messages, the built model) from a registered model's name, a TOML file
    with `model`/`model_args` (as `dfl train --config`), or a TOML file with `layers = [...]`.
    A declarative layer that does not fit is a ShapeError naming the spec and the layer."""
    path = Path(spec)
    raw = read_toml(path) if path.suffix == ".toml" or path.is_file() else None
    if raw is not None and "layers" in raw and "model" not in raw:
        if set(raw) != {"layers"} or overrides:
            raise ConfigError(
                f"{spec} is a layer list: it holds only `layers = [...]` (and --set does not "
                "apply); a model config names `model` and `model_args`"
            )
        check_magnitudes(raw["layers"], "layers")
        label, build = spec, lambda: build_layers(raw["layers"], input_shape)[0]
    else:
        if raw is None:  # a model's name
            cfg = build_config(None, merge({"model": spec}, parse_overrides(overrides, once=True)))
            label = cfg.model
        else:
            cfg = build_config(path, parse_overrides(overrides, once=True))
            label = f"{spec} (model {cfg.model})"
        build = lambda: models.create(cfg.model, **cfg.model_args)  # noqa: E731
    try:
        return label, build()
    except ShapeError as e:
        named = ShapeError(f"{label}: {e}")
        named.fitted = e.fitted
        raise named from None
    except (MemoryError, RuntimeError) as e:  # a registered model's: said by models.create
        if not out_of_memory(e):
            raise
        raise DflError(
            f"{label} does not fit in memory ({one_line(e)}); make its layers smaller",
            exit_code=1,
        ) from None


def format_summary(label: str, summary: ModelSummary) -> str:
    header = ("layer", "kind", "output", "params", "multiply-adds")
    body = [
        (
            row.name or "(model)",
            row.kind,
            "-" if row.output_shape is None else str(row.output_shape),
            f"{row.params:,}",
            f"{row.macs:,}",
        )
        for row in summary.rows
    ]
    total = ("total", "", str(summary.output_shape), f"{summary.params:,}", f"{summary.macs:,}")
    widths = [max(len(r[i]) for r in [header, *body, total]) for i in range(len(header))]

    def line(r: tuple[str, ...]) -> str:
        left = "  ".join(f"{r[i]:<{widths[i]}}" for i in range(3))
        return left + "  " + "  ".join(f"{r[i]:>{widths[i]}}" for i in (3, 4))

    rule = "-" * len(line(header))
    return "\n".join(
        [
            f"{label}: input {summary.input_shape}, per sample "
            "(multiply-adds of conv, linear and matrix products)",
            line(header),
            rule,
            *(line(r) for r in body),
            rule,
            line(total),
        ]
    )
