"""The strict pydantic base every config-like section derives from, and the one-line message
of a pydantic `ValidationError`. Below both `dfl.config` and `dfl.models.layers`, which
share them, and imports nothing of dfl."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, ValidationError


class Strict(BaseModel):
    """Base for every config section: unknown keys are errors, assignments are re-validated,
    and types are strict: a bool is not a number (`lr = true` is not 1.0) and a string is not
    an int (`epochs = "1"` is not 1). An int where a float is wanted is fine (`lr = 1`)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False, strict=True)


def describe_validation_error(error: ValidationError, prefix: str = "") -> str:
    """One line naming every bad key: "config key 'optim.lr': Input should be greater than 0"."""
    parts = []
    for item in error.errors():
        key = ".".join(str(p) for p in item["loc"]) or "(top level)"
        msg = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; `dfl train --help` lists the keys)"
        elif item["type"] == "value_error":
            pass  # our own validators' messages say what they got
        elif "input" in item and item["type"] not in ("missing",):
            msg = f"{msg} (got {item['input']!r})"
        parts.append(f"config key '{prefix}{key}': {msg}")
    return "; ".join(parts)
