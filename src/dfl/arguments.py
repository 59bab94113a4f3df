"""The Python API's arguments, checked against the functions' own annotations before the call.

A notebook calling `dfl.train("mlp", out=5)` or `dfl.sweep.run(spec, retry_failed="no")` gets
one ConfigError naming the argument, what it takes and what it got, where it got a TypeError
from deep inside pathlib, or a "no" taken as true. The check is pydantic's, in strict mode:
"3" is no int and "no" no bool, and a bool is no int (`jobs=True`). A NumPy scalar is checked
as the Python number it holds, and passed on as one (`seeds=np.int64(3)` is the int 3). Only
annotated parameters are checked; `**overrides` are the config's to validate."""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
from pydantic import ConfigDict, TypeAdapter, ValidationError

from dfl.errors import ConfigError

F = TypeVar("F", bound=Callable[..., Any])
STRICT = ConfigDict(strict=True, arbitrary_types_allowed=True)
CHECKED: list[Callable[..., Any]] = []  # every decorated function, for tests to resolve


def checked(name: str) -> Callable[[F], F]:
    """Decorate a public function, called `name` in messages ("dfl.train"), so that each of
    its annotated arguments is checked against its annotation when it is called."""

    def decorate(fn: F) -> F:
        signature = inspect.signature(fn)
        params = {
            p.name: p
            for p in signature.parameters.values()
            if p.name in fn.__annotations__ and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
        }

        @functools.cache  # on first use: the annotations may name types imported late
        def adapter(param: str) -> TypeAdapter[Any]:
            hint = fn.__annotations__[param]
            if isinstance(hint, str):  # `from __future__ import annotations`: its source
                hint = eval(hint, fn.__globals__)  # our own annotation, in its module
            return TypeAdapter(hint, config=STRICT)

        @functools.wraps(fn)
        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                bound = signature.bind(*args, **kwargs)
            except TypeError as e:  # a missing or unknown argument: Python's words are fine
                raise ConfigError(f"{name}: {e}") from None
            for param, value in bound.arguments.items():
                if param not in params:
                    continue
                if isinstance(value, np.generic):
                    value = bound.arguments[param] = value.item()
                try:
                    adapter(param).validate_python(value)
                except ValidationError:
                    raise ConfigError(
                        f"{name}: {param}= takes {_spelled(fn.__annotations__[param])}, not "
                        f"{_type_name(value)} ({_short(value)})"
                    ) from None
            return fn(*bound.args, **bound.kwargs)

        call.resolve = lambda: [adapter(p) for p in params]  # type: ignore[attr-defined]
        CHECKED.append(call)
        return typing.cast(F, call)

    return decorate


def _spelled(annotation: Any) -> str:
    """An annotation as its source spells it: "str | Path | None"."""
    return annotation if isinstance(annotation, str) else inspect.formatannotation(annotation)


def _type_name(value: Any) -> str:
    kind = type(value)
    return kind.__name__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__name__}"


def _short(value: Any) -> str:
    shown = repr(value)
    return shown if len(shown) <= 40 else shown[:39] + "…"
