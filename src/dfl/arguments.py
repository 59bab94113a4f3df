"""The Python API's arguments, checked against the functions' own annotations before the call.

A notebook calling `dfl.train("mlp", out=5)` or `dfl.sweep.run(spec, retry_failed="no")` gets
one ConfigError naming the argument, what it takes and what it got, where it got a TypeError
from deep inside pathlib, or a "no" taken as true. The check is pydantic's, in strict mode:
"3" is no int and "no" no bool, and a bool is no int (`jobs=True`). Only annotated parameters
are checked; `**overrides` are the config's to validate."""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import ConfigDict, TypeAdapter, ValidationError

from dfl.errors import ConfigError

F = TypeVar("F", bound=Callable[..., Any])
STRICT = ConfigDict(strict=True, arbitrary_types_allowed=True)


def checked(name: str) -> Callable[[F], F]:
    """Decorate a public function, called `name` in messages ("dfl.train"), so that each of
    its annotated arguments is checked against its annotation when it is called."""

    def decorate(fn: F) -> F:
        signature = inspect.signature(fn)
        adapters: dict[str, TypeAdapter[Any]] = {}

        def adapter(param: str) -> TypeAdapter[Any]:
            if param not in adapters:  # on first use: the hints may name types imported late
                hint = fn.__annotations__[param]
                if isinstance(hint, str):  # `from __future__ import annotations`: its source
                    hint = eval(hint, fn.__globals__)  # our own annotation, in its module
                adapters[param] = TypeAdapter(hint, config=STRICT)
            return adapters[param]

        @functools.wraps(fn)
        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                bound = signature.bind(*args, **kwargs)
            except TypeError as e:  # a missing or unknown argument: Python's words are fine
                raise ConfigError(f"{name}: {e}") from None
            for param, value in bound.arguments.items():
                kind = signature.parameters[param].kind
                if kind in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL):
                    continue
                if param not in fn.__annotations__:  # self, or left open
                    continue
                try:
                    adapter(param).validate_python(value)
                except ValidationError:
                    wanted = fn.__annotations__[param]  # its source text: "str | Path | None"
                    wanted = wanted if isinstance(wanted, str) else wanted.__name__
                    shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:39] + "…"
                    raise ConfigError(
                        f"{name}: {param}= takes {wanted}, not {type(value).__name__} ({shown})"
                    ) from None
            return fn(*args, **kwargs)

        return typing.cast(F, call)

    return decorate
