"""dfl from Python: train a model, load a run, look at it. The same machinery as `dfl train`:
the same config validation, run directories, resume and checkpoints, and the same errors,
raised as `DflError` subclasses with the CLI's one-line message (a notebook sees
`ConfigError: config key 'optim.lrr' ...`, never a `sys.exit`). Both return a `Run`
(dfl/training/run.py), the type the trainer's `fit` returns to sweeps and experiments too.

    import dfl
    run = dfl.train("cnn_lab", epochs=2, **{"data.train_subset": 2000})
    run.final["test_accuracy"], run.plot()
    model = dfl.load(run.run_dir).model
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dfl.arguments import checked
from dfl.config import TrainConfig, UserKeys, build_config, merge
from dfl.errors import ConfigError, UnloadableRun
from dfl.training.layerwise import FINETUNE
from dfl.training.run import Run, default_run_dir, fit
from dfl.training.run_dir import CONFIG, load_saved_config, read_history, read_status

__all__ = ["Run", "load", "train"]

# The common overrides by name, as the CLI's flags name them (dfl train --lr ...).
NAMED = {
    "epochs": "epochs",
    "batch_size": "batch_size",
    "lr": "optim.lr",
    "seed": "seed",
    "device": "device",
    "precision": "precision",
    "threads": "threads",
}


@checked("dfl.train")
def train(
    model_or_config: str | Path | TrainConfig | dict[str, Any],
    *,
    out: str | Path | None = None,
    resume: bool = False,
    **overrides: Any,
) -> Run:
    """Train one model, as `dfl train` does, and return its run.

    `model_or_config` is a registered model's name (`dfl.models.list()`), a TOML config file,
    a `TrainConfig`, or a dict of config keys. `overrides` set config keys: the common ones by
    name (`epochs`, `batch_size`, `lr`, `seed`, `device`, `precision`, `threads`) and any other
    by its dotted key, as `--set` takes it: `dfl.train("mlp", lr=3e-4, **{"data.train_subset":
    2000, "model_args.hidden": [128]})`. A key given twice (`lr` and `optim.lr`, a model name
    and `model=`, a dict's `optim` and `optim.lr`) is refused; overrides of a config file's,
    a TrainConfig's or a dict's keys are what overrides are for.

    The run is written to `out` (default `runs/train/MODEL-TIME`); `resume=True` continues an
    unfinished run there from its newest checkpoint, or returns a finished one as it is.
    Progress shows as a bar (a widget in Jupyter). Ctrl-C (a notebook's interrupt) stops the
    run and keeps its checkpoints: train again with `resume=True` to go on from the newest.

    Raises `ConfigError` for a bad key or value (naming the key), `DataError` for data that
    cannot be read, `TrainingDiverged` for a NaN loss, and other `DflError`s with one-line
    messages."""
    keys = UserKeys()
    config_file, tree = _starting_point(model_or_config, keys)
    for name, value in overrides.items():
        keys.set(NAMED.get(name, name), value, f"{name}=")
    cfg = build_config(config_file, merge(tree, keys.tree))
    run_dir = out if out is not None else default_run_dir(cfg.model)  # fit refuses "" as it is
    return fit(cfg, run_dir, resume=resume)


@checked("dfl.load")
def load(run_dir: str | Path) -> Run:
    """The run in `run_dir`, finished or not (a paused run resumes with `dfl.train(...,
    resume=True)`); `UnloadableRun` when it is not a dfl run directory."""
    if not str(run_dir):  # Path("") is the current directory: not what an empty name meant
        raise UnloadableRun("dfl.load got an empty path: give a run's directory")
    run_dir = Path(run_dir)
    if run_dir.name == CONFIG and run_dir.is_file():
        raise UnloadableRun(f"{run_dir} is a run's config: give its directory, {run_dir.parent}")
    if not run_dir.exists():
        raise UnloadableRun(f"{run_dir} does not exist: give a run's directory (dfl.train's out=)")
    cfg = load_saved_config(run_dir) if run_dir.is_dir() else None
    if cfg is None:
        raise UnloadableRun(f"{run_dir} is not a dfl run directory (it has no {CONFIG})")
    if cfg.pretrain:  # a layer-wise pretrained run's folder: its result is the fine-tuning's
        if not (run_dir / FINETUNE / CONFIG).exists():
            raise UnloadableRun(
                f"{run_dir} is a layer-wise pretrained run that has not reached its "
                "fine-tuning; train it again with resume=True to go on"
            )
        return load(run_dir / FINETUNE)
    status = read_status(run_dir) or {"status": "running"}
    return Run(
        run_dir,
        cfg,
        status["status"],
        read_history(run_dir),
        status.get("final", {}),
        status.get("reason"),
    )


def _starting_point(what: Any, keys: UserKeys) -> tuple[Path | None, dict[str, Any]]:
    """(config file, config tree) for a file, a TrainConfig or a dict (each key of a dict
    given once), which overrides may change; a model name is a key given in `keys`, as the
    overrides are. (`checked` has refused any other type, and a dict key that is no str.)"""
    if isinstance(what, TrainConfig):
        return None, what.model_dump(mode="json")
    if isinstance(what, dict):
        given = UserKeys()
        for key, value in what.items():
            given.set(key, value, f"the dict's '{key}'")
        if "model" not in given.tree:  # TrainConfig's default: a model nobody chose
            raise ConfigError("the config dict names no model: add 'model': 'cnn_lab' (say)")
        return None, given.tree
    if isinstance(what, Path) or what.endswith(".toml"):
        return Path(what), {}
    keys.set("model", what, f"the model name '{what}'")
    return None, {}
