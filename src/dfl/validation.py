"""The strict pydantic base every config-like section derives from, and the one-line message
of a pydantic `ValidationError`. Below both `dfl.config` and `dfl.models.layers`, which
share them, and imports nothing of dfl."""

from __future__ import annotations

import difflib
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
        msg = "unknown key" + (_closest(model, item["loc"], prefix) or hint)
    elif item["type"] == "value_error":
        pass  # our own validators' messages say what they got
    elif "input" in item and item["type"] not in ("missing",):
        msg = f"{msg} (got {item['input']!r})"
    return f"config key '{prefix}{key}': {msg}"


def _closest(model: type[BaseModel] | None, loc: tuple, prefix: str) -> str:
    """ " (did you mean 'optim.lr'?)" for the unknown key at `loc`, or ""."""
    for part in loc[:-1]:  # down to the section that holds the key
        field = model.model_fields.get(str(part)) if model else None
        model = field.annotation if field else None
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return ""
    if model is None:
        return ""
    close = difflib.get_close_matches(str(loc[-1]), list(model.model_fields), n=1)
    path = "".join(f"{p}." for p in loc[:-1])
    return f" (did you mean '{prefix}{path}{close[0]}'?)" if close else ""
