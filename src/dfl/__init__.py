"""dfl: deep feature learning on MNIST — the lab reproduced faithfully, then better.

From Python (the same machinery as the `dfl` command, errors raised as `DflError`s):

    dfl.train(model_or_config, out=None, **overrides) -> Run    train one model
    dfl.load(run_dir) -> Run                                     a finished or paused run
    dfl.lab.run(name, profile=None, out=None) -> LabRun          one lab question
    dfl.models.create(name, **args), dfl.models.list()           the registered models
    dfl.data.load("mnist" | "fashion-mnist" | a directory)       a verified dataset
    dfl.sweep.run(spec, out=None, workers=None)                  an Optuna sweep

Everything is imported on first use, so `import dfl` stays instant (no torch).
"""

from __future__ import annotations

import importlib
from typing import Any

from dfl.errors import ConfigError, DataError, DflError, ShapeError, TrainingDiverged, UnloadableRun

__version__ = "0.1.0"
__all__ = [
    "ConfigError",
    "DataError",
    "DflError",
    "ShapeError",
    "TrainingDiverged",
    "UnloadableRun",
    "data",
    "lab",
    "load",
    "models",
    "sweep",
    "train",
]

_FUNCTIONS = {"train": "dfl.api", "load": "dfl.api", "Run": "dfl.api"}
_MODULES = {"lab", "models", "data", "sweep"}


def __getattr__(name: str) -> Any:
    if name in _FUNCTIONS:
        return getattr(importlib.import_module(_FUNCTIONS[name]), name)
    if name in _MODULES:
        return importlib.import_module(f"dfl.{name}")
    raise AttributeError(f"module 'dfl' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted([*globals(), *_FUNCTIONS, *_MODULES])
