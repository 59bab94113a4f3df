"""The sweep spec: a base config, what to vary around it (a grid or a search space) and the
validation metric to select on. Validated like every config: an unknown key or a bad value is
a `ConfigError` naming the key, and every trial's config is checked before any trial starts.

    name = "ae-grid"                     # the study's name and the sweep directory's
    metric = "val_loss"                  # a validation metric; never the test set
    direction = "minimize"               # optional: loss -> minimize, accuracy -> maximize

    [base]                               # a TrainConfig, the keys of `dfl train --config`
    model = "autoencoder"

    [grid]                               # dotted config keys -> lists of values ...
    "model_args.enc" = [32, 64, 128]
    epochs = [40, 60]

    [search]                             # ... or a search (TPE, with a pruner)
    n_trials = 20
    [search.space]
    "optim.lr" = { low = 1e-4, high = 1e-1, log = true }
    "model_args.enc" = { choices = [32, 64, 128] }

A key given twice (`"optim.lr"` beside `[grid.optim] lr`) is refused, as `dfl train` refuses
it; an axis of sections (`data = [{ val_fraction = 0.1, train_subset = 500 }]`) merges each
value over the base's section.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from dfl.config import (
    UNKNOWN_KEY_HINT,
    TrainConfig,
    merge,
    metric_direction,
    overlapping_key,
    read_toml,
    set_dotted,
)
from dfl.errors import ConfigError
from dfl.validation import (
    Strict,
    describe_validation_error,
    did_you_mean,
    list_hint,
    section_at,
)

MAX_GRID_POINTS = 10_000  # already days of training for the smallest of the lab's models

# Schedules whose learning rate at epoch e does not depend on the total number of epochs: a
# shorter run is then exactly the first epochs of a longer one (cosine and onecycle stretch
# over `epochs`, so they are not).
EPOCH_INDEPENDENT_SCHEDULES = {"none", "exponential", "step"}
DISTRIBUTION_KEYS = {"low", "high", "log", "step", "choices"}
# Set by the sweep itself, so not a key to vary: selection is on validation only.
SWEEP_CONTROLLED = {"evaluate_test"}

Params = dict[str, Any]  # dotted config key -> value, one trial's point in the space


class Distribution(Strict):
    """One searched key: a range (`low`, `high`, optional `log` or `step`) or `choices`."""

    low: int | float | None = None
    high: int | float | None = None
    log: bool = False
    step: int | float | None = None
    choices: list[Any] | None = None

    @model_validator(mode="after")
    def _check(self) -> Distribution:
        if self.choices is not None:
            if self.low is not None or self.high is not None or self.step is not None:
                raise ValueError("give either choices or low/high, not both")
            if not self.choices:
                raise ValueError("choices is empty")
            _check_unique(self.choices)
            return self
        if self.low is None or self.high is None:
            raise ValueError("a range needs both low and high (or give choices)")
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and self.step is not None:
            raise ValueError("log and step cannot be combined")
        if self.step is not None and not self.step > 0:  # else Optuna fails every trial
            raise ValueError(f"step must be above 0 (got {self.step})")
        if self.log and self.low <= 0:
            raise ValueError(f"log needs low > 0 (got {self.low})")
        return self

    @property
    def is_int(self) -> bool:
        ints = [v for v in (self.low, self.high, self.step) if v is not None]
        return all(isinstance(v, int) and not isinstance(v, bool) for v in ints)


class SearchSpec(Strict):
    n_trials: int = Field(gt=0)  # trials to run (pruned and failed ones count)
    sampler_seed: int = 0  # TPE's seed: a fresh search by one worker repeats itself
    pruner: Literal["median", "hyperband", "none"] = "median"
    startup_trials: int = Field(5, ge=0)  # median: trials that finish before any is pruned
    warmup_epochs: int = Field(1, ge=0)  # median: epochs every trial runs before pruning
    space: dict[str, Distribution] = Field(min_length=1)  # flattened by SweepSpec


class SweepSpec(Strict):
    name: str = Field(max_length=64)  # the study's name, and a directory's: see _plain_name
    metric: str = "val_loss"  # the validation metric each trial reports and the study selects on
    direction: Literal["minimize", "maximize"] | None = None  # default from the metric's name
    # Read a shorter-epoch grid point off the longer run's curve: None = where exact (epochs
    # is a grid axis, the schedule does not depend on the total, no early stopping or
    # restore_best), true = require it, false = never.
    reuse_epochs: bool | None = None
    # Seconds between a running trial's heartbeats (a database write each). Much shorter costs
    # speed: a worker's thread that wakes every second stalled a 2-thread torch run 4x.
    heartbeat_interval: int = Field(10, gt=0)
    grace_period: int | None = Field(None, gt=0)  # silence before a trial is requeued; 3x beat
    base: dict[str, Any] = Field(default_factory=dict)
    grid: dict[str, list[Any]] | None = None
    search: SearchSpec | None = None

    @model_validator(mode="before")
    @classmethod
    def _flatten(cls, data: Any) -> Any:
        # `[grid] optim.lr = [...]` (unquoted) arrives nested; `"optim.lr" = [...]` flat. Both
        # here, at the top, so that a key given twice is one spec error like any other.
        if not isinstance(data, dict):
            return data
        data = dict(data)
        if isinstance(data.get("grid"), dict):
            data["grid"] = flatten(data["grid"], is_leaf=_is_axis, section="grid")
        search = data.get("search")
        if isinstance(search, dict) and isinstance(search.get("space"), dict):
            space = flatten(search["space"], is_leaf=_is_distribution, section="search.space")
            data["search"] = {**search, "space": space}
        return data

    @field_validator("name")
    @classmethod
    def _plain_name(cls, name: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
            raise ValueError(
                f"{name!r} is no sweep name: start with a letter or digit, then letters, "
                "digits, '_', '.' or '-' (it names the study and the sweep's directory)"
            )
        return name

    @field_validator("metric")
    @classmethod
    def _validation_metric(cls, metric: str) -> str:
        if not metric.startswith("val_"):
            raise ValueError(
                f"'{metric}' is not a validation metric: a sweep selects on val_loss or "
                "val_accuracy (the test set is evaluated once, after selection, never to select)"
            )
        return metric

    @field_validator("grid")
    @classmethod
    def _grid_axes(cls, grid: dict[str, list[Any]] | None) -> dict[str, list[Any]] | None:
        for key, values in (grid or {}).items():
            if not values:
                raise ValueError(f"grid axis '{key}' has no values")
            _check_unique(values, f"grid axis '{key}'")
        return grid

    @model_validator(mode="after")
    def _check(self) -> SweepSpec:
        if (self.grid is None) == (self.search is None):
            raise ValueError("give exactly one of [grid] (lists of values) or [search]")
        if not self.keys:
            raise ValueError("[grid] names no config key to vary")
        for key in self.keys:
            if key in SWEEP_CONTROLLED:
                raise ValueError(f"'{key}' is set by the sweep (selection is on validation only)")
        if self.grid is not None:
            self._check_grid_size()
        way = study_direction(self.metric)
        if self.direction is None:
            if way is None:
                raise ValueError(f"set direction (minimize or maximize) for metric {self.metric}")
            self.direction = way  # type: ignore[assignment]
        if self.grace_period is None:
            self.grace_period = 3 * self.heartbeat_interval
        if self.grace_period <= self.heartbeat_interval:
            raise ValueError(
                f"grace_period ({self.grace_period}) must exceed heartbeat_interval "
                f"({self.heartbeat_interval}), or live trials would be requeued"
            )
        return self

    def _check_grid_size(self) -> None:
        """Counted, not expanded: a 10^6-point grid took 4.5 GB and minutes to list (and would
        queue trials for hours) before anything said it was too big."""
        sizes = [len(v) for v in self.grid.values()]  # type: ignore[union-attr]
        points = math.prod(sizes)
        if points > MAX_GRID_POINTS:
            shape = " x ".join(map(str, sizes))
            raise ValueError(
                f"the grid has {points:,} points ({shape}), more than the {MAX_GRID_POINTS:,} "
                "a sweep takes: split it into smaller grids, or use [search] with n_trials"
            )

    # --- the space ---------------------------------------------------------------------------

    @property
    def kind(self) -> str:
        return "grid" if self.grid is not None else "search"

    @property
    def keys(self) -> list[str]:
        return list(self.grid if self.grid is not None else self.search.space)  # type: ignore[union-attr]

    @property
    def n_trials(self) -> int:
        """Trials the sweep plans: the grid's size, or the search's budget."""
        if self.grid is not None:
            return len(self.grid_points())
        return self.search.n_trials  # type: ignore[union-attr]

    def grid_points(self) -> list[Params]:
        """Every point of the grid. With epoch reuse the longest runs come first, so that
        workers start the runs whose curves the shorter points are read from."""
        assert self.grid is not None
        keys = list(self.grid)
        points = [
            dict(zip(keys, values, strict=True))
            for values in itertools.product(*self.grid.values())
        ]
        if "epochs" in keys:
            points.sort(key=lambda p: -p["epochs"] if isinstance(p["epochs"], int) else 0)
        return points

    def trial_config(self, params: Params) -> TrainConfig:
        """The base config with this trial's values; the test set is left alone."""
        tree = copy.deepcopy(self.base)
        for key, value in params.items():
            set_dotted(tree, key, _over_section(tree, key, value))
        tree["evaluate_test"] = False
        try:
            return TrainConfig.model_validate(tree)
        except ValidationError as e:
            raise ConfigError(
                f"trial {format_params(params)}: "
                f"{describe_validation_error(e, TrainConfig, UNKNOWN_KEY_HINT)}"
            ) from None

    def dump(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


@dataclass(frozen=True)
class RunPlan:
    """Where and how a trial trains: usually its own config in its own run directory; with
    epoch reuse, the longest epochs of its grid row, paused after the trial's epochs."""

    config: TrainConfig  # what the run directory trains
    params: Params  # the run's point (epochs = the longest with reuse): names its directory
    until_epoch: int | None  # read the trial off the run's curve at this epoch (reuse)


def run_plan(spec: SweepSpec, params: Params, reuse_epochs: int | None) -> RunPlan:
    cfg = spec.trial_config(params)
    if reuse_epochs is None or cfg.epochs == reuse_epochs:
        return RunPlan(cfg, params, None)
    run_params = {**params, "epochs": reuse_epochs}
    return RunPlan(cfg.model_copy(update={"epochs": reuse_epochs}), run_params, cfg.epochs)


# ---------------------------------------------------------------------------------------------
# Loading and checking


def load_spec(path: str | Path) -> SweepSpec:
    """Read and validate a spec file (keys and types only; `check_trials` checks every trial)."""
    tree = read_toml(path)
    try:
        return _checked_new(SweepSpec.model_validate(tree), f"{path}")
    except ValidationError as e:
        raise ConfigError(f"{path}: {describe_spec_error(e)}") from None


def spec_from_dict(tree: dict[str, Any], stored: bool = False) -> SweepSpec:
    """A spec given as data; `stored`: one a study holds, read back as it was made."""
    try:
        spec = SweepSpec.model_validate(tree)
        return spec if stored else _checked_new(spec, "sweep spec")
    except ValidationError as e:
        raise ConfigError(f"sweep spec: {describe_spec_error(e)}") from None


def _checked_new(spec: SweepSpec, where: str) -> SweepSpec:
    """What a spec the user gives must also do; checked here, not in SweepSpec, so that a
    study made before a check can still be read back:
    - name its model, in [base] or as an axis: without one every trial trained the default
      mlp on all of MNIST (as `dfl.train({})` refuses to);
    - select in the way its metric improves: `maximize` a loss selected the worst trial;
    - repeat no value (1 and 1.0 ran twice), and step its ranges evenly."""
    if "model" not in spec.base and "model" not in spec.keys:
        raise ConfigError(
            f'{where}: the spec names no model: add model = "cnn_lab" (say) to [base], or vary it'
        )
    way = study_direction(spec.metric)
    if way is not None and spec.direction != way:
        raise ConfigError(
            f"{where}: direction '{spec.direction}' would select the worst {spec.metric} (it "
            f"is best {'low' if way == 'minimize' else 'high'}): leave direction out, or set "
            f"'{way}'"
        )
    space = spec.search.space if spec.search else {}
    axes = {**(spec.grid or {}), **{k: d.choices for k, d in space.items() if d.choices}}
    for key, values in axes.items():
        if len({_as_value(v) for v in values}) != len(values):  # 1 and 1.0 ran twice
            raise ConfigError(f"{where}: '{key}' repeats a value (each trial would run twice)")
    for key, d in space.items():
        problem = _step_problem(d)
        if problem:
            raise ConfigError(f"{where}: search.space '{key}': {problem}")
    return spec


def study_direction(metric: str) -> str | None:
    """The Optuna direction that selects the best `metric` (a loss minimised, an accuracy
    maximised), or None for a name that says neither."""
    return {"min": "minimize", "max": "maximize"}.get(metric_direction(metric) or "")


def _as_value(v: Any) -> Any:
    """What a trial's config gets: 1 and 1.0 are one learning rate."""
    number = isinstance(v, int | float) and not isinstance(v, bool)
    return float(v) if number else json.dumps(encode(v), sort_keys=True)


def _step_problem(d: Distribution) -> str:
    """Why a stepped range draws other points than it says ("" when it does not): Optuna
    narrows it, with a warning in a worker's log."""
    if d.step is None or d.low is None or d.high is None:
        return ""
    span = d.high - d.low
    steps = math.floor(span / d.step + 1e-9)
    if steps == 0:
        return (
            f"step ({d.step}) exceeds high - low ({span:g}): every trial would draw low ({d.low})"
        )
    if abs(span - steps * d.step) > 1e-9 * max(abs(span), 1):
        top = d.low + steps * d.step
        return (
            f"high - low ({span:g}) is not a multiple of step ({d.step}): the search would stop "
            f"at {top:g}; set high to {top:g}"
        )
    return ""


def describe_spec_error(error: ValidationError) -> str:
    parts = []
    for item in error.errors():
        key = ".".join(str(p) for p in item["loc"]) or "(top level)"
        msg = item["msg"].removeprefix("Value error, ") + list_hint(item)
        if item["type"] == "extra_forbidden":
            msg = _unknown_spec_key(item["loc"])
        parts.append(f"spec key '{key}': {msg}" if key != "(top level)" else msg)
    return "; ".join(parts)


def _unknown_spec_key(loc: tuple) -> str:
    """ "unknown key", and the key meant: a close one of the same table, else that table's
    keys. A training key at the top (`model`, `epochs`) belongs under [base]."""
    if len(loc) == 1 and str(loc[0]) in TrainConfig.model_fields:
        return "unknown key (a training key: put it under [base])"
    section = section_at(SweepSpec, loc)
    table = {SweepSpec: "spec", SearchSpec: "[search]"}.get(section, "a searched key")
    hint = f" ({table} keys: {', '.join(section.model_fields)})" if section else ""
    return "unknown key" + (did_you_mean(SweepSpec, loc, "") or hint)


def check_trials(spec: SweepSpec) -> int | None:
    """Validate every trial's config before anything runs; returns the epochs every grid row is
    trained to when shorter points are read off longer curves (None: no epoch reuse).

    A grid is checked point by point. A search is checked at each key's extremes (its low and
    high, as floats unless low, high and step are all integers, as the sampler draws them; or
    each choice) with the others at the base values. Models are built once per
    distinct (model, model_args), so an unknown model argument fails here, named."""
    from dfl import models

    if spec.grid is not None:
        points = spec.grid_points()
    else:
        points = [{}]
        for key, dist in spec.search.space.items():  # type: ignore[union-attr]
            values = dist.choices if dist.choices is not None else [dist.low, dist.high]
            if dist.choices is None and not dist.is_int:  # drawn as floats: 8 comes as 8.0
                values = [float(v) for v in values]
            points += [{key: v} for v in values]
    try:
        configs = [spec.trial_config(p) for p in points]
        built: set[str] = set()
        for params, cfg in zip(points, configs, strict=True):
            where = f"trial {format_params(params)}" if params else "[base]"
            _check_metric(spec, cfg, where)
            signature = json.dumps([cfg.model, cfg.model_args], sort_keys=True, default=str)
            if signature not in built:
                built.add(signature)
                try:
                    models.create(cfg.model, **cfg.model_args)
                except ConfigError as e:
                    raise ConfigError(f"{where}: {e}") from None
    except ConfigError as e:
        stepped = [f"trial {key}=" for key in _float_steps(spec)]
        if "valid integer" in str(e) and str(e).startswith(tuple(stepped)):
            raise ConfigError(
                f"{e} (a float step draws floats; give an integer key integer low, high and step)"
            ) from None
        raise
    return _epoch_reuse(spec, configs)


def _float_steps(spec: SweepSpec) -> list[str]:
    """The searched keys whose range has a step and is drawn as floats (a float among low,
    high and step)."""
    space = spec.search.space if spec.search is not None else {}
    return [k for k, d in space.items() if d.step is not None and not d.is_int and not d.choices]


def _check_metric(spec: SweepSpec, cfg: TrainConfig, where: str) -> None:
    from dfl import models

    if cfg.data.val_fraction == 0:
        raise ConfigError(
            f"{where}: metric {spec.metric} needs a validation split (data.val_fraction is 0)"
        )
    objective = models.get(cfg.model).objective if cfg.objective == "auto" else cfg.objective
    measured = {"val_loss"} | ({"val_accuracy"} if objective == "classification" else set())
    if spec.metric not in measured:
        raise ConfigError(
            f"{where}: metric {spec.metric} is not measured by a {objective} run "
            f"(measured: {', '.join(sorted(measured))})"
        )


def _epoch_reuse(spec: SweepSpec, configs: list[TrainConfig]) -> int | None:
    if spec.reuse_epochs is False:
        return None
    why_not = None
    if spec.grid is None or len(spec.grid.get("epochs", [])) < 2:
        why_not = "epochs is not a grid axis with several values"
    else:
        for cfg in configs:
            if cfg.schedule.name not in EPOCH_INDEPENDENT_SCHEDULES:
                why_not = f"schedule '{cfg.schedule.name}' depends on the number of epochs"
            elif cfg.early_stop.patience is not None:
                why_not = "early stopping makes a run's end depend on its later epochs"
            elif cfg.restore_best:  # its value is its best epoch's, not the curve's at ep
                why_not = "restore_best selects each run's best epoch, not its last"
            if why_not:
                break
    if why_not is None:
        return max(cfg.epochs for cfg in configs)
    if spec.reuse_epochs:
        raise ConfigError(f"reuse_epochs = true, but reuse would not be exact: {why_not}")
    return None


# ---------------------------------------------------------------------------------------------
# Values <-> Optuna parameters
#
# Optuna stores a categorical value only as None, bool, int, float or str. A grid value such as
# `model_args.hidden = [[64], [128, 64]]` is stored as its JSON text and decoded by looking it
# up among the axis's own values, so no value is ever guessed back from text.


def encode(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return json.dumps(value, sort_keys=True)


def decode(stored: Any, values: list[Any]) -> Any:
    for value in values:
        if encode(value) == stored and type(encode(value)) is type(stored):
            return value
    raise ConfigError(f"value {stored!r} is not one of {values!r} (was the spec edited?)")


def format_params(params: Params) -> str:
    return ", ".join(
        f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in params.items()
    )


def flatten(tree: dict[str, Any], *, is_leaf: Any, section: str) -> dict[str, Any]:
    """`{"optim": {"lr": x}}` and `{"optim.lr": x}` -> `{"optim.lr": x}`, stopping at values
    `is_leaf` accepts. TOML holds `"optim.lr"` (one quoted key) beside `optim.lr` (a table)
    as two keys, where the flat spec holds one: a key reached twice, or one inside another
    (`"data.val_fraction"` beside `data`), is refused, naming both places in `section`, as
    `dfl train` refuses a key given twice (`config.UserKeys`): which was meant is the user's
    to say, and keeping either would silently drop an axis."""
    out: dict[str, Any] = {}
    places: dict[str, str] = {}  # dotted key -> where the spec gives it, as a TOML key path
    for path, value in _leaves(tree, is_leaf):
        key = ".".join(path)
        place = ".".join(_toml_key(part) for part in (*section.split("."), *path))
        clash = overlapping_key(key, places)
        if clash is not None:
            raise ValueError(
                f"spec key '{section}.{key}' is given twice ({places[clash]} and {place}); "
                "give it once"
            )
        places[key] = place
        out[key] = value
    return out


def _leaves(
    tree: dict[str, Any], is_leaf: Any, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], Any]]:
    for key, value in tree.items():
        if is_leaf(value):
            yield (*path, key), value
        else:
            yield from _leaves(value, is_leaf, (*path, key))


def _toml_key(part: str) -> str:
    """A key as TOML writes it: bare where it can be, quoted otherwise (`"optim.lr"`)."""
    return part if re.fullmatch(r"[A-Za-z0-9_-]+", part) else json.dumps(part)


def _over_section(tree: dict[str, Any], key: str, value: Any) -> Any:
    """A trial's value for `key` in the base config `tree`. A section-valued axis (`data =
    [{ val_fraction = 0.1, train_subset = 500 }, ...]`) merges each value over the base's
    section, key by key, rather than replace it, as `--set data={...}` merges over the file of
    `dfl train --config`: a section is how a user varies keys together (dotted axes make a
    product), and replacing would silently drop the base's other keys (its dataset, say)."""
    current: Any = tree
    for part in key.split("."):
        current = current.get(part) if isinstance(current, dict) else None
    if isinstance(current, dict) and isinstance(value, dict):
        return merge(current, value)
    return value


def _is_axis(value: Any) -> bool:
    return not isinstance(value, dict)


def _is_distribution(value: Any) -> bool:
    # A table with any distribution key is one (no config key is called low, high, log, step
    # or choices): a misspelt key beside them is then named, not taken for a config section.
    return not isinstance(value, dict) or bool(set(value) & DISTRIBUTION_KEYS)


def _check_unique(values: list[Any], what: str = "choices") -> None:
    seen = [encode(v) for v in values]
    if len({json.dumps(v) for v in seen}) != len(seen):
        raise ValueError(f"{what} repeats a value (each trial would run twice)")
