"""What every lab experiment shares: a context that trains (resumably) inside the
reproduction's directory, and a saved result that the report reads.

An experiment is a module with NAME, TITLE, QUESTION, `run(ctx) -> dict` and
`section(result) -> Section`. `run` trains and measures, saving figures under `figures/`;
its dict is written to `<out>/<NAME>/result.json` and is all the report ever sees, so
`dfl report RUN_DIR` rebuilds everything without training.

A run's recipe is config data: a dict of dotted config keys (`{"optim.lr": 3e-4}`) or nested
sections, merged over the reproduction's common settings by `config.merge`. Values travel as
they are, never formatted into config text and parsed back (a path with a quote in it stays
that path).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import multiprocessing
import re
import shlex
import sys
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from dfl.atomic import atomic_write_json
from dfl.config import TrainConfig, build_config, dict_to_toml, merge, set_dotted
from dfl.data import Dataset
from dfl.train import RunResult, available_cores, fit


@dataclass(frozen=True)
class Profile:
    """One way of running the whole lab: what it buys, what it cost when measured (2 CPU
    cores unless it says otherwise), and how many runs stand behind each number."""

    name: str
    buys: str  # what a user gets, for --help, the README and the report
    cost: str  # measured wall time and peak memory, or "not measured yet"
    seeds: int  # corrected counterparts: mean ± std over this many seeds
    faithful_seeds: int | None = None  # runs per lab-protocol number (None: `seeds`)
    # Measured seconds per experiment on 2 CPU cores: the progress lines' time left.
    estimate_s: dict[str, float] = field(default_factory=dict)


PROFILES = {
    p.name: p
    for p in (
        Profile("smoke", "tiny data and one epoch: for tests, not numbers", "seconds", 1),
        Profile(
            "preview",
            "a first look: every table and figure, epochs cut short; sets 8 of the 38 lab "
            "numbers beside ours, the rest not comparable",
            "7.6 min, peak memory 1.1 GB",
            2,
            # A rough split of its measured 7.6 min (not timed per experiment).
            estimate_s={"ae": 60, "sae": 90, "conv": 1, "cnn": 180, "attention": 1, "vit": 120},
        ),
        Profile(
            "lab",
            "every experiment whose lab protocol fits about 20 minutes, at exactly that protocol "
            "(one run per number, as the lab), corrected counterparts over 2 seeds: sets 32 of "
            "the 38 lab numbers beside ours (6 ViT configurations left out)",
            "23.8 min measured with test runs sharing the cores, 41 CPU-minutes, so about "
            "20.5 min on 2 idle cores; largest process 1.1 GB",
            2,
            faithful_seeds=1,
            estimate_s={"ae": 669, "sae": 160, "conv": 1, "cnn": 153, "attention": 1, "vit": 438},
        ),
        Profile(
            "every",
            "all 38 lab numbers at the lab's protocol (the lab profile plus the other six ViT "
            "configurations, 20 epochs each on all 60,000 images); resumes across invocations",
            "not yet timed end to end: about 83 min estimated from its parts' measured times",
            2,
            faithful_seeds=1,
            estimate_s={"ae": 669, "sae": 160, "conv": 1, "cnn": 153, "attention": 1, "vit": 3300},
        ),
        Profile(
            "full",
            "the lab's settings for every run, 3 seeds throughout, and the beyond-the-lab stages "
            "at full length",
            "about 9 hours on 2 CPU cores (the ViT part 11 min on one H200)",
            3,
        ),
    )
}
ALIASES = {"quick": "preview"}  # the preview profile's old name


def canonical(profile: str) -> str:
    """A profile's name, given its name or its old name (`quick` is `preview`)."""
    return ALIASES.get(profile, profile)


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

    def train(self, experiment: str, key: str, overrides: Overrides, **fit_args: Any) -> RunResult:
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

    def train_many(self, experiment: str, runs: list[tuple[str, Overrides]]) -> list[RunResult]:
        """Independent runs (key, overrides), in order. With `jobs` > 1 they train in that many
        worker processes of cores // jobs threads each. Small models use a second thread or a
        GPU poorly, so runs side by side finish sooner (benchmarks/RESULTS.md: two 1-thread
        workers train 1.7-2.5x the autoencoder samples per second of one 2-thread process; ten
        ViT runs on an H200 1.4x the epochs per second of three). Results are the same either
        way up to rounding: each run is seeded by its own config, but fewer intra-op threads
        per worker change the order of some sums (the quick profile with 2 jobs: 20 of 22
        numbers identical, the bf16 CNN's within seed noise)."""
        plans = [(self.config(o), self.run_dir(experiment, k)) for k, o in runs]  # check all first
        bar = tqdm(total=len(plans), desc=f"{experiment} runs", unit="run", disable=None)
        with bar:
            if self.jobs <= 1 or len(plans) <= 1:
                results = []
                for cfg, run_dir in plans:
                    result = fit(cfg, run_dir, dataset=self.data, resume=True, epoch_bar=False)
                    results.append(result)
                    bar.update()
                return results
            return self._train_side_by_side(plans, bar)

    def _train_side_by_side(
        self, plans: list[tuple[TrainConfig, Path]], bar: tqdm
    ) -> list[RunResult]:
        jobs = min(self.jobs, len(plans))
        threads = max(1, available_cores() // jobs)
        pool = ProcessPoolExecutor(
            jobs,
            mp_context=multiprocessing.get_context("spawn"),  # CUDA cannot be forked
            initializer=_start_worker,
            initargs=(_as_arrays(self.data), threads),
        )
        with pool:
            futures = [pool.submit(_fit_in_worker, c, d) for c, d in plans]
            for f in futures:
                f.add_done_callback(lambda _: bar.update())
            try:
                return [f.result() for f in futures]
            except BaseException:  # a failed run or Ctrl-C: stop the others (they resume later)
                for f in futures:
                    f.cancel()
                for proc in list(pool._processes.values()):  # no public way before Python 3.14
                    proc.terminate()
                raise


_WORKER_DATA: Dataset | None = None  # a worker process's copy of the dataset
_TENSORS = ("train_images", "train_labels", "test_images", "test_labels")


def _as_arrays(data: Dataset) -> Dataset:
    """The dataset with NumPy arrays for tensors: they travel to a worker by value, where torch
    tensors would go through shared memory (/dev/shm is small on some machines)."""
    return dataclasses.replace(data, **{k: getattr(data, k).numpy() for k in _TENSORS})


def _start_worker(data: Dataset, threads: int) -> None:
    global _WORKER_DATA
    _WORKER_DATA = dataclasses.replace(
        data, **{k: torch.from_numpy(getattr(data, k)) for k in _TENSORS}
    )
    torch.set_num_threads(threads)
    torch.set_flush_denormal(True)  # before its thread pool starts: see dfl/subnormals.py


def _fit_in_worker(cfg: TrainConfig, run_dir: Path) -> RunResult:
    return fit(cfg, run_dir, dataset=_WORKER_DATA, resume=True, epoch_bar=False)


def slug(text: str) -> str:
    """A readable directory name for a run key: 'enc=32 batch=16' -> 'enc-32_batch-16'."""
    return re.sub(r"[^A-Za-z0-9.]+", "_", text.replace("=", "-")).strip("_")


def provenance(result: RunResult, experiment: str) -> dict[str, Any]:
    """Where a number came from and how to get it again."""
    cfg_path = result.run_dir / "config.toml"
    return {
        "experiment": experiment,
        "run_dir": str(result.run_dir),
        "command": shlex.join(  # quoted for a shell: --out may hold any character
            ["dfl", "train", "--config", str(cfg_path), "--out", f"{result.run_dir}-again"]
        ),
    }


def number(
    value: Any, label: str, source: RunResult | None = None, experiment: str = "", **extra: Any
) -> dict[str, Any]:
    """A reported number with its provenance, as results.json stores it."""
    entry = {"value": value, "label": label, **extra}
    if source is not None:
        entry.update(provenance(source, experiment))
    return entry


def result_path(out: Path, name: str) -> Path:
    return out / name / "result.json"


def save_result(out: Path, name: str, result: dict[str, Any]) -> None:
    path = result_path(out, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, result)


def load_result(out: Path, name: str) -> dict[str, Any] | None:
    path = result_path(out, name)
    if not path.exists():
        return None
    return json.loads(path.read_text())


def study_sweep(
    ctx: Context,
    experiment: str,
    name: str,
    base: dict[str, Any],
    *,
    grid: dict[str, list[Any]] | None = None,
    search: dict[str, Any] | None = None,
    metric: str = "val_loss",
) -> list[dict[str, Any]]:
    """Run a grid, or a TPE search with its pruner, as an Optuna study through the sweep
    engine (resumable, exactly once per point, shorter epochs read off longer runs where
    exact); returns one dict per completed trial: its params, validation value, per-epoch
    curve, wall time, run directory and reproducing command."""
    from dfl.sweep.launch import run_sweep  # here: the sweep engine loads optuna
    from dfl.sweep.spec import spec_from_dict

    sweep_dir = ctx.out / experiment / "sweeps" / name
    sweep_dir.mkdir(parents=True, exist_ok=True)
    tree = {
        "name": f"{experiment}-{name}",
        "metric": metric,
        "base": overrides_tree(ctx.common(), ctx.base_overrides, base, {"evaluate_test": False}),
        **({"grid": grid} if grid is not None else {"search": search}),
    }
    spec = spec_from_dict(tree)  # the trials get these values as data, through the study
    # The spec as a file too: `dfl sweep SPEC --out SWEEP_DIR` continues or inspects it.
    (sweep_dir / "spec.toml").write_text(dict_to_toml(tree))
    workers = ctx.jobs if ctx.jobs > 1 else None  # None: the sweep engine's own policy
    status = run_sweep(spec, out=sweep_dir, workers=workers, progress=sys.stderr)
    points = []
    for t in status.trials:
        if t.state.name != "COMPLETE":
            continue
        points.append(
            {
                "params": dict(t.params),
                "value": t.value,
                "curve": t.user_attrs.get("curve", []),
                "wall_s": t.user_attrs.get("wall_s"),
                "run_dir": t.user_attrs.get("run_dir"),
                "epochs_from": t.user_attrs.get("epochs_from"),
                "command": t.user_attrs.get("command"),
            }
        )
    return points
