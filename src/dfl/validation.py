"""The strict pydantic base every config-like section derives from, and the one-line message
of a pydantic `ValidationError`. Below both `dfl.config` and `dfl.models.layers`, which
share them, and imports nothing of dfl."""

from __future__ import annotations

import difflib
import typing
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError


class Strict(BaseModel):
    """Base for every config section: unknown keys are errors, assignments are re-validated,
    and types are strict: a bool is not a number (`lr = true` is not 1.0) and a string is not
    an int (`epochs = "1"` is not 1). An int where a float is wanted is fine (`lr = 1`); an
    infinite or NaN float is not (`lr = inf` would train to NaN at once)."""

    model_config = ConfigDict(
        extra="forbid", validate_assignment=True, frozen=False, strict=True, allow_inf_nan=False
    )


def describe_validation_error(
    error: ValidationError, model: type[BaseModel] | None = None, hint: str = "", prefix: str = ""
) -> str:
    """One line naming every bad key: "config key 'optim.lr': Input should be greater than 0".
    An unknown key names the closest known one when `model` (the validated class) has one,
    else `hint`: where the keys are listed."""
    return "; ".join(describe_item(item, model, hint, prefix) for item in error.errors())


def describe_item(
    item: Any, model: type[BaseModel] | None = None, hint: str = "", prefix: str = ""
) -> str:
    """One of a ValidationError's errors, as describe_validation_error says it."""
    key = ".".join(str(p) for p in item["loc"]) or "(top level)"
    msg = item["msg"].removeprefix("Value error, ")
    if item["type"] == "extra_forbidden":
        msg = "unknown key" + (did_you_mean(model, item["loc"], prefix) or hint)
    elif item["type"] == "value_error":
        pass  # our own validators' messages say what they got
    elif "input" in item and item["type"] not in ("missing",):
        msg = f"{msg} (got {item['input']!r}){list_hint(item)}"
    return f"config key '{prefix}{key}': {msg}"


def list_hint(item: Any) -> str:
    """What to give instead of a tuple where a list is wanted (Python code writes `(8,)`,
    which strict validation does not take for a list), or ""."""
    if item["type"] == "list_type" and isinstance(item.get("input"), tuple):
        return f": give a list, {list(item['input'])!r}"
    return ""


def did_you_mean(model: type[BaseModel] | None, loc: tuple, prefix: str) -> str:
    """ " (did you mean 'optim.lr'?)" for the unknown key at `loc`, or ""."""
    section = section_at(model, loc) if model else None
    if section is None:
        return ""
    close = difflib.get_close_matches(str(loc[-1]), list(section.model_fields), n=1)
    path = "".join(f"{p}." for p in loc[:-1])
    return f" (did you mean '{prefix}{path}{close[0]}'?)" if close else ""


def section_at(model: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    """The model class of the table that holds the key at `loc` (a ValidationError's
    location), through optional sections (`pretrain: PretrainConfig | None`) and tables of
    named ones (`space: dict[str, Distribution]`, whose names are in `loc` too); None where
    the way leads elsewhere (a list, a union of several models)."""
    parts = iter(loc[:-1])
    section: type[BaseModel] | None = model
    for part in parts:
        field = section.model_fields.get(str(part)) if section else None
        section, named = model_in(field.annotation) if field else (None, False)
        if named:
            next(parts, None)  # the table's own name for it
    return section


def model_in(annotation: Any) -> tuple[type[BaseModel] | None, bool]:
    """The one model an annotation holds (`X`, `X | None`, or `dict[str, X]`: then True, as
    a name comes before its keys), else None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is dict and len(args) == 2:
        return model_in(args[1])[0], True
    models = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
    return (models[0], False) if len(models) == 1 and type(None) in args else (None, False)
