"""Typed run configuration: one `TrainConfig` says everything a training run computes.

Configs are data. They come from defaults, a TOML file and `key=value` overrides (dotted keys,
as in minGPT: `optim.lr=3e-4`), are validated once at the edge by pydantic (an unknown key or a
wrong type is a `ConfigError` naming the key), and the resolved config is written into every
run directory so any run can be repeated with `dfl train --config RUN/config.toml`.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from dfl.errors import ConfigError
from dfl.validation import Strict, describe_item, model_in

# The widest seed every consumer takes as it is: numpy's legacy RandomState (TPE's sampler,
# `np.random.seed`) wants 0 <= seed < 2**32; torch takes more, Python's `random` anything.
MAX_SEED = 2**32 - 1
Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]


def max_threads() -> int:
    """The machine's cores: more intra-op threads than that only slow a run down, and torch
    crashes outright (a segfault) when asked for tens of thousands."""
    return os.cpu_count() or 1


def threads_problem(threads: int) -> str | None:
    """Why `threads` cannot be a thread count here, or None when it can."""
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        return f"must be a whole number, at least 1 (got {threads!r})"
    if threads > max_threads():
        return (
            f"{threads} is more than this machine's {max_threads()} cores (give "
            f"{max_threads()} or fewer, or leave it out for the default)"
        )
    return None


class DataConfig(Strict):
    dataset: str = Field("mnist", min_length=1)  # "mnist", "fashion-mnist" or an IDX directory
    data_dir: str | None = None  # a directory holding the four IDX files; tried first
    val_fraction: float = Field(0.2, ge=0.0, lt=1.0)  # held out of train for selection
    split_seed: Seed = 42  # the split is a property of the experiment, not of the run's seed
    # lab-faithful: random N training images (val_fraction of them then validate) ...
    train_subset: int | None = Field(None, gt=0)
    test_subset: int | None = Field(None, gt=0)  # ... and M test images, as the notebooks did
    subset_seed: Seed | None = None  # what draws the subsets; None = the run's seed
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
    # None: the way the metric improves (a loss falls, an accuracy rises), `direction`
    mode: Literal["min", "max"] | None = None
    min_delta: float = Field(0.0, ge=0.0)

    @property
    def direction(self) -> str:
        """ "min" or "max": the mode early stopping watches its metric in."""
        return self.mode or metric_direction(self.metric) or "min"

    @model_validator(mode="after")
    def _metric_direction(self) -> EarlyStopConfig:
        """A mode against the way its metric improves is refused where it would be used (an
        accuracy watched for a fall stopped a learning run and kept its worst epoch). The
        metric's own mode is kept as unset, so that a config changing only the metric later
        (a saved run's, a sweep's) carries no stale mode."""
        own = metric_direction(self.metric)
        if self.mode is not None and self.mode == own:
            self.mode = None
        elif self.mode is not None and own is not None and self.patience:
            better = "rises" if own == "max" else "falls"
            raise ConfigError(
                f"config key 'early_stop.mode': '{self.mode}' would count {self.metric} getting "
                f"worse as progress (it improves as it {better}); leave mode out, or set "
                f"'{own}'"
            )
        return self


def metric_direction(metric: str) -> Literal["min", "max"] | None:
    """How a metric improves, read off its name: a loss falls, an accuracy rises; None for a
    name that says neither."""
    if metric.endswith("loss"):
        return "min"
    if metric.endswith("accuracy"):
        return "max"
    return None


class PretrainConfig(Strict):
    """Greedy layer-wise pretraining before a stacked autoencoder's training (lab 3.1 Q2,
    dfl/training/layerwise.py): each layer in turn learns to rebuild its input, the rest
    frozen, on the run's training split without its labels; then the classifier trains on top;
    then the run fine-tunes the whole network from there. Each phase is a run of its own."""

    epochs: int = Field(gt=0)  # each layer's
    optim: OptimConfig = Field(default_factory=OptimConfig)  # the layers' (constant lr)
    classifier_epochs: int = Field(0, ge=0)  # 0: fine-tune straight after the layers
    # kept fixed while the classifier trains: the notebook froze the bottom layer
    classifier_freeze: list[str] = Field(default_factory=lambda: ["encoders.0"])


class TrainConfig(Strict):
    model: str = "mlp"  # a registered model name (`dfl models`)
    model_args: dict[str, Any] = Field(default_factory=dict)  # keyword arguments of the model
    objective: Literal["auto", "classification", "reconstruction", "layerwise"] = "auto"
    layer: int = Field(0, ge=0)  # layerwise objective: the layer being pretrained
    freeze: list[str] = Field(default_factory=list)  # parameter-name prefixes kept fixed
    init_from: str | None = None  # a finished run directory whose final weights start this one
    pretrain: PretrainConfig | None = None  # stacked autoencoders: layer-wise pretraining first
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
    # bf16/fp16 run the forward in autocast; auto: bf16 where measured to pay (trainer.py)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    # torch.compile the training step's model: its compile time (tens of seconds) pays back
    # only on long runs; benchmarks/RESULTS.md has the measured break-even.
    compile: bool = False
    # On CUDA, replay the training step from a CUDA graph (training/device_step.py): the lab's small
    # models are otherwise bound by the host launching their kernels. Ignored elsewhere.
    cuda_graph: bool = True
    seed: Seed = 0
    deterministic: bool = False  # torch deterministic algorithms (slower on GPU)
    threads: int | None = Field(None, gt=0)  # intra-op threads, at most the cores; None = torch's
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

    @field_validator("threads")
    @classmethod
    def _at_most_the_cores(cls, threads: int | None) -> int | None:
        problem = None if threads is None else threads_problem(threads)
        if problem:
            raise ValueError(problem)
        return threads

    @model_validator(mode="after")
    def _check_combinations(self) -> TrainConfig:
        if self.optim.nesterov and self.optim.momentum == 0.0:
            raise ValueError("optim.nesterov needs optim.momentum > 0")
        if self.pretrain and (self.model != "stacked_autoencoder" or self.init_from):
            has = f"init_from = {self.init_from!r}" if self.init_from else f"model = {self.model!r}"
            raise ConfigError(
                "config key 'pretrain': layer-wise pretraining starts a stacked_autoencoder "
                f"from random initialisation (this config has {has})"
            )
        self._check_objective()
        self._check_early_stop_metric()
        return self

    def _check_objective(self) -> None:
        """An objective the model can be trained for: a classifier's logits are no
        reconstruction, and only the stacked autoencoder rebuilds one layer's input."""
        from dfl.models import registry

        entry = registry.get(self.model)
        if self.objective == "layerwise":
            if self.model != "stacked_autoencoder":
                raise ConfigError(
                    f"config key 'objective': 'layerwise' pretrains a stacked_autoencoder's "
                    f'layers, and {self.model!r} has none (leave objective = "auto")'
                )
            sizes = {**entry.defaults(), **self.model_args}.get("sizes")
            layers = len(sizes) - 1 if isinstance(sizes, list) else None
            if layers and self.layer >= layers:  # no layer at all: the model's own error
                raise ConfigError(
                    f"config key 'layer': {self.layer} is past the last of the model's "
                    f"{layers} layers (sizes {sizes}); use 0 to {layers - 1}"
                )
        elif self.objective not in ("auto", entry.objective):
            raise ConfigError(
                f"config key 'objective': {self.model!r} is trained for {entry.objective}, "
                f'not {self.objective} (leave objective = "auto", or choose a model made '
                f"for {self.objective})"
            )

    def _check_early_stop_metric(self) -> None:
        """The metric early stopping watches must be one this run records each epoch, or the
        run would fail only after its first epoch (with its directory already written)."""
        from dfl.models import registry
        from dfl.objectives import recorded_metrics

        es = self.early_stop
        name = registry.get(self.model).objective if self.objective == "auto" else self.objective
        splits = ["train", "val", "test"]
        measured = [f"{s}_{m}" for s in splits for m in recorded_metrics(name)]
        if es.metric not in measured:
            raise ConfigError(
                f"config key 'early_stop.metric': '{es.metric}' is not a metric this run "
                f"records (the {name} objective records {', '.join(measured)})"
            )
        if not es.patience:
            return
        if es.metric.startswith("val_") and self.data.val_fraction == 0:
            raise ConfigError(
                f"config key 'early_stop.metric': '{es.metric}' needs a validation split "
                "(set data.val_fraction > 0)"
            )
        if es.metric.startswith("test_") and not self.test_every_epoch:
            raise ConfigError(
                f"config key 'early_stop.metric': '{es.metric}' is measured only with "
                "test_every_epoch = true (select on val_ metrics instead)"
            )


# ---------------------------------------------------------------------------------------------
# Building a config from a file and overrides


def parse_value(text: str, key: str = "value") -> Any:
    """A command-line value read as TOML reads it: `3e-4` float, `[16, 32]` list, `x` str. One
    that opens a list, a table or a quoted string and is no valid TOML is an error, not a
    string: `[256` is a list cut short."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError as e:
        if text[:1] in ("[", "{", '"', "'"):
            raise ConfigError(
                f"{key}={text} is not valid TOML ({e}); a list is like [256, 128], a table "
                'like {type = "conv", out = 8}, a string "adam" (quoted, or bare)'
            ) from None
        return text
    except RecursionError:  # tomllib recurses once per level of nesting
        raise ConfigError(f"value nested too deeply: {text[:40]}...") from None


def set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    """Set `tree[a][b][c] = value` for key "a.b.c", creating sections on the way."""
    *parents, leaf = key.split(".")
    if not all([*parents, leaf]):
        raise ConfigError(f"config key '{key}' has an empty part: a key is like 'optim.lr'")
    node = tree
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"config key '{key}': '{part}' is a value, not a section")
        node = child
    node[leaf] = value


def parse_overrides(pairs: list[str], *, once: bool = False) -> dict[str, Any]:
    """`["optim.lr=3e-4", "epochs=5"]` -> nested dict. A pair without `=` is an error. Later
    pairs win, for code that layers overrides; with `once` (a user's command line) a key given
    twice is an error (`UserKeys`)."""
    if once:
        keys = UserKeys()
        keys.set_pairs(pairs)
        return keys.tree
    tree: dict[str, Any] = {}
    for pair in pairs:
        key, value = _split_pair(pair)
        set_dotted(tree, key, parse_value(value, key))
    return tree


def _split_pair(pair: str) -> tuple[str, str]:
    key, sep, value = pair.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override '{pair}' is not key=value (example: --set optim.lr=3e-4)")
    return key, value.strip()


class UserKeys:
    """Config keys as a user gives them (command-line flags, --set pairs, keyword arguments),
    each once: a key that overlaps one given before (`epochs=1` and `epochs=-3`, or `data={...}`
    and `data.x=1`) is an error naming both ways it was given, since which one was meant is
    the user's to say, not the order's. `tree` is the nested dict they make."""

    def __init__(self) -> None:
        self.tree: dict[str, Any] = {}
        self._how: dict[str, str] = {}  # dotted key -> how it was given, for the message

    def set(self, key: str, value: Any, how: str) -> None:
        clash = overlapping_key(key, self._how)
        if clash is not None:
            raise ConfigError(
                f"config key '{key}' is given twice ({self._how[clash]} and {how}); give it once"
            )
        self._how[key] = how
        set_dotted(self.tree, key, value)

    def set_pairs(self, pairs: list[str]) -> None:
        for pair in pairs:
            key, value = _split_pair(pair)
            self.set(key, parse_value(value, key), f"--set {pair}")


def overlapping_key(key: str, keys: Iterable[str]) -> str | None:
    """The key among `keys` that sets `key` too: the same key, a section holding it
    (`data` for `data.val_fraction`) or a key inside it."""
    for other in keys:
        if other == key or other.startswith(key + ".") or key.startswith(other + "."):
            return other
    return None


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Deep merge: sections merge key by key, values in `extra` win. `model_args` merges too."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


MAX_CONFIG_BYTES = 1 << 20  # /dev/zero or a log given as --config is refused, not read


def read_toml(path: str | Path) -> dict[str, Any]:
    """A TOML file as a dict; a file that is missing, not a file, unreadable, not UTF-8 or
    not TOML is a ConfigError naming it (bad input: exit 2)."""
    path = Path(path)
    try:
        if path.exists() and not path.is_dir() and not path.is_file():
            raise ConfigError(f"config file {path} is not a regular file (a device or a pipe?)")
        if path.is_file() and path.stat().st_size > MAX_CONFIG_BYTES:
            raise ConfigError(
                f"config file {path} is {path.stat().st_size:,} bytes; a config is a few "
                f"hundred (at most {MAX_CONFIG_BYTES:,} read)"
            )
        # utf-8-sig: a byte-order mark, as some Windows editors save UTF-8, is not TOML's
        return tomllib.loads(path.read_bytes().decode("utf-8-sig"))
    except RecursionError:
        raise ConfigError(f"config file {path} is nested too deeply") from None
    except FileNotFoundError:
        # configs/... from elsewhere than the repository's root: say where it was looked for
        where = "" if path.is_absolute() else f" (relative to {Path.cwd()})"
        raise ConfigError(f"config file {path} does not exist{where}") from None
    except IsADirectoryError:
        raise ConfigError(
            f"config file {path} is a directory; give a TOML file (a run's is DIR/config.toml)"
        ) from None
    except PermissionError:
        raise ConfigError(f"config file {path} cannot be read (permission denied)") from None
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"config file {path} is not UTF-8 text (byte {e.object[e.start]:#04x} at offset "
            f"{e.start}); TOML files are UTF-8: save it as UTF-8"
        ) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path} is not valid TOML: {e}") from None


# Where an unknown key's user finds the right one (when no known key is close to it).
UNKNOWN_KEY_HINT = (
    " (`dfl train MODEL --print-config` shows every key; a model's arguments go under "
    "model_args, and `dfl models MODEL` lists them)"
)


def build_config(
    file: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    base: dict[str, Any] | None = None,
) -> TrainConfig:
    """defaults < base (an experiment's own defaults) < TOML file < overrides, validated once."""
    tree: dict[str, Any] = dict(base or {})
    overrides = overrides or {}
    if file is not None:
        given = read_toml(file)
        if "model" in given and "model" in overrides and given["model"] != overrides["model"]:
            raise ConfigError(
                f"config file {file} names model '{given['model']}' and the command "
                f"'{overrides['model']}': give one"
            )
        tree = merge(tree, given)
    tree = merge(tree, overrides)
    if file is not None and "model" not in tree and {"grid", "search"} & tree.keys():
        raise ConfigError(
            f"{file} is a sweep spec, not a run's config: run it with dfl sweep {file}"
        )
    if file is not None and "model" not in tree:  # TrainConfig's default: a model nobody chose
        raise ConfigError(
            f'config file {file} names no model: add `model = "cnn_lab"` (say) to it, or '
            "give the model beside it (`dfl train MODEL --config FILE`)"
        )
    try:
        return TrainConfig.model_validate(tree)
    except ValidationError as e:
        parts = [_describe(item, tree.get("model")) for item in e.errors()]
        raise ConfigError("; ".join(parts)) from None


def _describe(item: Any, model: Any) -> str:
    """One error; a section's key or a model argument given as a top-level key
    (`train_subset=2000`, `--set enc=64`) is pointed to its section."""
    loc = item["loc"]
    if (
        item["type"] == "extra_forbidden"
        and len(loc) == 1
        and (meant := _section_of(loc[0], model))
    ):
        return f"config key '{loc[0]}': unknown key (did you mean '{meant}.{loc[0]}'?)"
    return describe_item(item, TrainConfig, UNKNOWN_KEY_HINT)


def _section_of(key: str, model: Any) -> str | None:
    """The section (data, optim, ..., or model_args for the model's arguments) that has `key`."""
    for name, field in TrainConfig.model_fields.items():
        section, keyed = model_in(field.annotation)  # `PretrainConfig | None` too
        if section is not None and not keyed and key in section.model_fields:
            return name
    if isinstance(model, str):
        from dfl.models import registry  # here: config stays importable without torch

        if model in registry.names() and key in registry.get(model).defaults():
            return "model_args"
    return None


def config_to_toml(config: BaseModel, show_unset: bool = False) -> str:
    """Write a config as TOML (tomllib reads; tomli-w writes, escaping every string and key).
    None values are left out, which reads back as the default None; `show_unset` lists them as
    comments (`# train_subset =  (not set)`), so --print-config shows every key there is."""
    tree = config.model_dump(mode="json")
    if not show_unset:
        return dict_to_toml(tree)
    unset = lambda d: [f"# {k} =  (not set)" for k, v in d.items() if v is None]  # noqa: E731
    top = {k: v for k, v in tree.items() if not isinstance(v, dict)}
    chunks = [dict_to_toml(top) + "\n".join(unset(top))]
    for name, section in tree.items():
        if isinstance(section, dict):
            header, _, rest = dict_to_toml({name: section}).partition("\n")
            chunks.append("\n".join([header, *unset(section), rest]).rstrip("\n"))
    return "\n\n".join(c.strip("\n") for c in chunks) + "\n"


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
