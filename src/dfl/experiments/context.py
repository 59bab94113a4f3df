"""What an experiment trains with: the reproduction's directory, profile, data and common
settings, and the canvas its figures are drawn on.

A run's recipe is config data: a dict of dotted config keys (`{"optim.lr": 3e-4}`) or nested
sections, merged over the reproduction's common settings by `config.merge`. Values travel as
they are, never formatted into config text and parsed back (a path with a quote in it stays
that path).
"""

from __future__ import annotations

import copy
import functools
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from dfl.config import TrainConfig, build_config, merge, set_dotted
from dfl.data import Dataset
from dfl.experiments.profiles import PROFILES
from dfl.training.run import Run, fit

# One run's config overrides: dotted keys ("optim.lr", "model_args.enc") or nested sections
# ("data": {...}) to values, as data.
Overrides = dict[str, Any]


def overrides_tree(*parts: Overrides) -> dict[str, Any]:
    """The nested config tree of `parts`, later parts winning key by key (sections merge)."""
    tree: dict[str, Any] = {}
    for part in parts:
        nested: dict[str, Any] = {}
        for key, value in part.items():
            set_dotted(nested, key, copy.deepcopy(value))  # a recipe's lists stay its own
        tree = merge(tree, nested)
    return tree


@dataclass
class Canvas:
    """What figures are drawn with: the reproduction's folder and, when a figure needs images
    or saved weights, the dataset (loaded on first use). Figures come from saved results only,
    so `dfl report` redraws every one of them without training."""

    out: Path
    load_data: Callable[[], Dataset]

    def figure_path(self, name: str) -> Path:
        return self.out / "figures" / f"{name}.png"  # figures.py makes the folder

    @functools.cached_property
    def data(self) -> Dataset:
        return self.load_data()


@dataclass
class Context:
    out: Path  # the reproduction's directory, e.g. runs/lab
    profile: str  # a key of PROFILES
    data: Dataset
    dataset_arg: str  # as the user named it: mnist, fashion-mnist or a path
    device: str = "auto"
    seeds: int = 1
    precision: str = "auto"
    base_overrides: Overrides = field(default_factory=dict)  # applied to every run
    jobs: int = 1  # independent runs (and sweep trials) trained side by side

    def lab_subset(self, n: int) -> int:
        """The lab's random-subset size; the smoke profile caps it so tests fit tiny data."""
        return min(n, 500) if self.profile == "smoke" else n

    @property
    def faithful_seeds(self) -> int:
        """Runs per lab-protocol number: one in the lab profiles, as the lab ran them."""
        return PROFILES[self.profile].faithful_seeds or self.seeds

    def lab_precision(self) -> Overrides:
        """The lab's precision (fp32, as it trained on its GPU) for a run on the lab's protocol,
        unless the user chose one: `auto` would train CNNs in bf16 on CPUs with native bf16,
        which is a speed choice for our own recipes, not part of the lab's protocol."""
        return {"precision": "fp32"} if self.precision == "auto" else {}

    def test_set(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The test images and labels a finished model is scored on after training (the search's
        trials, the ensembles): all of them, but the smoke profile's first 1,000, as it checks
        that everything runs and sets no numbers."""
        n = 1000 if self.profile == "smoke" else None
        return self.data.test_images[:n], self.data.test_labels[:n]

    def smoke_cap(self) -> Overrides:
        """Overrides that keep a full-data run small in the smoke profile (none otherwise)."""
        return {"data.train_subset": 2000} if self.profile == "smoke" else {}

    def run_dir(self, experiment: str, key: str) -> Path:
        return self.out / experiment / "runs" / slug(key)

    def common(self) -> Overrides:
        """What every run of the reproduction shares: device, precision, dataset."""
        return {
            "checkpoint_interval_s": 10.0,  # many short runs: lose at most 10 s to a kill
            "device": self.device,
            "precision": self.precision,
            "data.dataset": self.dataset_arg,
        }

    def config(self, overrides: Overrides) -> TrainConfig:
        tree = overrides_tree(self.common(), self.base_overrides, overrides)
        return build_config(overrides=tree)

    def train(self, experiment: str, key: str, overrides: Overrides, **fit_args: Any) -> Run:
        """One training run, reused when it already finished (reproduce resumes)."""
        cfg = self.config(overrides)
        return fit(
            cfg,
            self.run_dir(experiment, key),
            dataset=self.data,
            resume=True,
            epoch_bar=False,
            **fit_args,
        )

    def train_many(self, experiment: str, runs: dict[str, Overrides]) -> dict[str, Run]:
        """Independent runs, keyed by run name (the result of each under its name). With
        `jobs` > 1 they train side by side (dfl.experiments.engine); results are the same
        either way up to rounding."""
        from dfl.experiments.engine import train_all  # here: the engine starts processes

        plans = {k: (self.config(o), self.run_dir(experiment, k)) for k, o in runs.items()}
        return train_all(plans, self.data, jobs=self.jobs, desc=f"{experiment} runs")


def slug(text: str) -> str:
    """A readable directory name for a run key: 'enc=32 batch=16' -> 'enc-32_batch-16'."""
    return re.sub(r"[^A-Za-z0-9.]+", "_", text.replace("=", "-")).strip("_")
