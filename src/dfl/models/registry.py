"""Models by name: `@register("cnn_lab")` on a factory, `create("cnn_lab", **args)` to build.

The registry imports no model: each model module registers its factories when imported, and
`dfl.models` (the package, imported before any of its modules) imports them all, so every
model is registered however the registry is reached.

Each entry knows its objective (classification or reconstruction) so a run needs only the
model's name. Arguments are checked against the factory's signature and types before anything
is built (pydantic's `validate_call`, strict like every config key: `hidden = [true]` is not
[1]), so a typo in `model_args` names the argument.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import ConfigDict, ValidationError, validate_call
from torch import nn

from dfl.errors import ConfigError, DflError, one_line, out_of_memory
from dfl.validation import list_hint


@dataclass(frozen=True)
class ModelEntry:
    name: str
    factory: Callable[..., nn.Module]
    objective: str  # "classification" or "reconstruction"
    summary: str  # first paragraph of the factory's docstring

    def defaults(self) -> dict[str, Any]:
        params = inspect.signature(self.factory).parameters.values()
        return {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}


_REGISTRY: dict[str, ModelEntry] = {}


def register(name: str, *, objective: str = "classification") -> Callable:
    """Decorator: add a model factory (keyword-only arguments with defaults) under `name`."""

    def add(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model '{name}' is registered twice")
        checked = validate_call(config=ConfigDict(arbitrary_types_allowed=True, strict=True))(
            factory
        )
        summary = " ".join((inspect.getdoc(factory) or "").split("\n\n")[0].split())
        _REGISTRY[name] = ModelEntry(name, checked, objective, summary)
        return factory

    return add


def get(name: str) -> ModelEntry:
    if name not in _REGISTRY:
        close = difflib.get_close_matches(str(name), _REGISTRY, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        known = ", ".join(sorted(_REGISTRY))
        raise ConfigError(
            f"unknown model '{name}' ({hint}known: {known}; `dfl models` describes them)"
        )
    return _REGISTRY[name]


def unknown_argument(entry: ModelEntry, arg: str) -> str:
    """ "unknown argument (did you mean 'enc'? it takes enc, in_features)"."""
    known = list(entry.defaults())
    close = difflib.get_close_matches(arg, known, n=1)
    guess = f"did you mean '{close[0]}'? " if close else ""
    return f"unknown argument ({guess}{entry.name} takes {', '.join(known) or 'none'})"


# Torch's sizes, strides and paddings are C longs, and a layer past int32 in any of them would
# not fit in memory anyway: a larger number is refused by name, not met as an OverflowError.
MAX_SIZE = 2**31 - 1


def check_magnitudes(value: Any, where: str) -> None:
    """A ConfigError naming the first number in `value` (nested lists and dicts too) beyond
    MAX_SIZE."""
    if isinstance(value, dict):
        for key, item in value.items():
            check_magnitudes(item, f"{where}.{key}")
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            check_magnitudes(item, f"{where}[{i}]")
    elif isinstance(value, int | float) and not isinstance(value, bool) and abs(value) > MAX_SIZE:
        raise ConfigError(f"{where} is {value:g}: no size, stride or padding is above {MAX_SIZE:,}")


def create(name: str, **args: Any) -> nn.Module:
    """Build a registered model; a bad argument is a ConfigError that names it."""
    entry = get(name)
    check_magnitudes(args, "model_args")
    try:
        return entry.factory(**args)
    except ValidationError as e:
        bad = "; ".join(
            f"model_args.{'.'.join(str(p) for p in err['loc'])}: "
            + (
                unknown_argument(entry, str(err["loc"][-1]))
                if err["type"] == "unexpected_keyword_argument"
                else err["msg"] + list_hint(err)
            )
            for err in e.errors()
        )
        raise ConfigError(f"model '{name}': {bad}") from None
    except ConfigError as e:  # a layer its arguments built is invalid: name the arguments
        if str(e).startswith("model '") or "layers" in args:  # said already, or the user's
            raise
        raise ConfigError(f"{described(name, args)}: {e}") from None
    except ValueError as e:  # arguments valid one by one that do not fit together
        raise ConfigError(f"model '{name}': {e} (model_args)") from None
    except (MemoryError, RuntimeError) as e:
        if not out_of_memory(e):
            raise
        raise DflError(
            f"model '{name}' does not fit in memory with these model_args ({one_line(e)}); "
            "make it smaller",
            exit_code=1,
        ) from None


def described(name: str, args: dict[str, Any]) -> str:
    """ "model 'mlp' (hidden=[0], num_classes=10)": every argument, its value where it is
    short (a list of widths, not a layer table)."""
    given = ", ".join(f"{k}={v!r}" if len(repr(v)) <= 40 else f"{k}=[…]" for k, v in args.items())
    return f"model '{name}' ({given or 'its defaults'})"


def names() -> list[str]:
    return sorted(_REGISTRY)


def entries() -> list[ModelEntry]:
    return [get(n) for n in names()]


def spelled_out(cfg: Any) -> Any:
    """`cfg` (a TrainConfig) with every model argument spelled out, defaults included, without
    building the model: for comparing two configs (one that leaves a default out and one that
    spells it are the same run)."""
    return cfg.model_copy(update={"model_args": {**get(cfg.model).defaults(), **cfg.model_args}})


def with_model_defaults(cfg: Any) -> Any:
    """`cfg` (a TrainConfig) with every model argument spelled out, defaults included, after
    checking them the way training will (building the model): what --print-config shows."""
    create(cfg.model, **cfg.model_args)
    return cfg.model_copy(update={"model_args": {**get(cfg.model).defaults(), **cfg.model_args}})
