"""Typed run configuration: one `TrainConfig` says everything a training run computes.

Configs are data. They come from defaults, a TOML file and `key=value` overrides (dotted keys,
as in minGPT: `optim.lr=3e-4`), are validated once at the edge by pydantic (an unknown key or a
wrong type is a `ConfigError` naming the key), and the resolved config is written into every
run directory so any run can be repeated with `dfl train --config RUN/config.toml`.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from dfl.errors import ConfigError


class Strict(BaseModel):
    """Base for every config section: unknown keys are errors, assignments are re-validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


class DataConfig(Strict):
    dataset: str = "mnist"  # "mnist", "fashion-mnist" or a directory of IDX files
    data_dir: str | None = None  # a directory holding the four IDX files; tried first
    val_fraction: float = Field(0.2, ge=0.0, lt=1.0)  # held out of train for selection
    split_seed: int = 42  # the split is a property of the experiment, not of the run's seed
    train_subset: int | None = Field(None, gt=0)  # lab-faithful: random N training images ...
    test_subset: int | None = Field(None, gt=0)  # ... and M test images, as the notebooks did
    subset_seed: int | None = None  # None = a fresh draw each run (the notebooks had no seed)
    normalize: bool = False  # lab: pixels / 255 only; True: (x - 0.1307) / 0.3081
    augment_shift: int = Field(0, ge=0, le=8)  # random translation in pixels (0 = off)
    augment_rotate: float = Field(0.0, ge=0.0, le=45.0)  # random rotation in degrees
    augment_scale: float = Field(0.0, ge=0.0, le=0.5)  # random zoom by 1 +/- up to this


class OptimConfig(Strict):
    name: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = Field(1e-3, gt=0.0)
    weight_decay: float = Field(0.0, ge=0.0)
    momentum: float = Field(0.0, ge=0.0, lt=1.0)  # SGD only
    nesterov: bool = False  # SGD only; needs momentum > 0


class ScheduleConfig(Strict):
    name: Literal["none", "exponential", "step", "cosine", "onecycle"] = "none"
    gamma: float = Field(0.95, gt=0.0, le=1.0)  # exponential: per epoch; step: per step_size
    step_size: int = Field(10, gt=0)  # epochs between decays for "step"
    warmup_fraction: float = Field(0.3, gt=0.0, lt=1.0)  # onecycle: share of steps rising


class EarlyStopConfig(Strict):
    patience: int | None = Field(None, gt=0)  # epochs without improvement; None = never stop
    metric: str = "val_loss"  # any per-epoch metric name
    mode: Literal["min", "max"] = "min"
    min_delta: float = Field(0.0, ge=0.0)


class TrainConfig(Strict):
    model: str = "mlp"  # a registered model name (`dfl models`)
    model_args: dict[str, Any] = Field(default_factory=dict)  # keyword arguments of the model
    objective: Literal["auto", "classification", "reconstruction", "layerwise"] = "auto"
    layer: int = Field(0, ge=0)  # layerwise objective: the layer being pretrained
    freeze: list[str] = Field(default_factory=list)  # parameter-name prefixes kept fixed
    init_from: str | None = None  # a finished run directory whose final weights start this one
    data: DataConfig = Field(default_factory=DataConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    early_stop: EarlyStopConfig = Field(default_factory=EarlyStopConfig)
    epochs: int = Field(10, gt=0)
    batch_size: int = Field(64, gt=0)
    eval_batch_size: int = Field(1000, gt=0)  # evaluation has no gradients: big batches are free
    grad_clip: float | None = Field(None, gt=0.0)  # max global gradient norm
    drop_last: bool = False  # the lab's loaders keep the last partial batch
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"  # auto: cuda > mps > cpu
    # bf16/fp16 run the forward in autocast; auto: bf16 where measured to pay (train.py)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    # torch.compile the training step's model: its compile time (tens of seconds) pays back
    # only on long runs; benchmarks/RESULTS.md has the measured break-even.
    compile: bool = False
    seed: int = 0
    deterministic: bool = False  # torch deterministic algorithms (slower on GPU)
    threads: int | None = Field(None, gt=0)  # intra-op threads; None = torch's default
    evaluate_test: bool = True  # the test set is evaluated once, after training
    restore_best: bool = False  # test the best-validation epoch's weights, not the last's
    # Lab-faithful only: the notebooks evaluated (and picked epochs on) the test set every
    # epoch. Records test metrics per epoch so that figure can be redrawn; never for selection.
    test_every_epoch: bool = False
    checkpoint: bool = True  # checkpoints make runs resumable
    # Seconds between checkpoints (0: after every epoch). Each costs a few fsynced megabytes,
    # which dominates runs of many tiny epochs; the last epoch is always saved.
    checkpoint_interval_s: float = Field(0.0, ge=0.0)

    @field_validator("model")
    @classmethod
    def _registered(cls, name: str) -> str:
        from dfl.models import registry  # here: config stays importable without torch

        try:
            registry.get(name)
        except ConfigError as e:  # name the key, as every other config error does
            raise ConfigError(f"config key 'model': {e}") from None
        return name

    @model_validator(mode="after")
    def _check_combinations(self) -> TrainConfig:
        if self.optim.nesterov and self.optim.momentum == 0.0:
            raise ValueError("optim.nesterov needs optim.momentum > 0")
        return self


# ---------------------------------------------------------------------------------------------
# Building a config from a file and overrides


def parse_value(text: str) -> Any:
    """A command-line value read as TOML reads it: `3e-4` float, `[16, 32]` list, `x` str."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    """Set `tree[a][b][c] = value` for key "a.b.c", creating sections on the way."""
    *parents, leaf = key.split(".")
    node = tree
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"config key '{key}': '{part}' is a value, not a section")
        node = child
    node[leaf] = value


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """`["optim.lr=3e-4", "epochs=5"]` -> nested dict. A pair without `=` is an error."""
    tree: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override '{pair}' is not key=value (example: --set optim.lr=3e-4)")
        set_dotted(tree, key.strip(), parse_value(value.strip()))
    return tree


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Deep merge: sections merge key by key, values in `extra` win. `model_args` merges too."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def read_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path} is not valid TOML: {e}") from None


def describe_validation_error(error: ValidationError, prefix: str = "") -> str:
    """One line naming every bad key: "config key 'optim.lr': Input should be greater than 0"."""
    parts = []
    for item in error.errors():
        key = ".".join(str(p) for p in item["loc"]) or "(top level)"
        msg = item["msg"]
        if item["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; `dfl train --help` lists the keys)"
        elif "input" in item and item["type"] not in ("missing",):
            msg = f"{msg} (got {item['input']!r})"
        parts.append(f"config key '{prefix}{key}': {msg}")
    return "; ".join(parts)


def build_config(
    file: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    base: dict[str, Any] | None = None,
) -> TrainConfig:
    """defaults < base (an experiment's own defaults) < TOML file < overrides, validated once."""
    tree: dict[str, Any] = dict(base or {})
    if file is not None:
        tree = merge(tree, read_toml(file))
    tree = merge(tree, overrides or {})
    try:
        return TrainConfig.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(describe_validation_error(e)) from None


def config_to_toml(config: BaseModel) -> str:
    """Write a config as TOML (tomllib reads; tomli-w writes, escaping every string and key).
    None values are left out, which reads back as the default None."""
    return dict_to_toml(config.model_dump(mode="json"))


def dict_to_toml(tree: dict[str, Any]) -> str:
    """`tree` as TOML: dicts are tables, None values in them are left out (TOML has no null)."""
    import tomli_w

    return tomli_w.dumps(_without_none(tree))


def _without_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [_without_none(v) for v in value]
    return value
