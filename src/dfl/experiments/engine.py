"""The local engine for independent trainings: runs that share nothing but the dataset, trained
one after another (those that differ only in seed, learning rate or weight decay as one fused
group, where that pays), or side by side in `jobs` worker processes of cores // jobs threads
each.

Small models use a second thread or a GPU poorly, so runs side by side finish sooner
(benchmarks/RESULTS.md: two 1-thread workers train 1.7-2.5x the autoencoder samples per second
of one 2-thread process; ten ViT runs on an H200 1.4x the epochs per second of three). Results
are the same either way up to rounding: each run is seeded by its own config, but fewer intra-op
threads per worker change the order of some sums (the preview profile with 2 jobs: 20 of 22
numbers identical, the bf16 CNN's within seed noise).
"""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path

import torch
from tqdm.auto import tqdm

from dfl.config import TrainConfig
from dfl.data import Dataset
from dfl.runtime import flushed_to_zero
from dfl.runtime.local_workers import run_in_workers
from dfl.training.fused import fusing_pays, same_shape
from dfl.training.run import Run, fit, fit_group

Plan = tuple[TrainConfig, Path]  # a run's config and its directory


def train_all(plans: dict[str, Plan], data: Dataset, *, jobs: int, desc: str) -> dict[str, Run]:
    """Train every plan (each resumed, or reused when it finished); results by the same keys.

    In one process, plans that differ only in their seed, learning rate or weight decay train
    as one fused group where that pays (`fusing_pays`: dense models at small batches on a
    CPU); the others one after another. With `jobs` > 1 every plan is a worker's task of its
    own: two 1-thread workers train more samples per second than a fused group on two threads
    for the stacked autoencoder, the MLP at batch 16 and the CNN, fewer for the autoencoder
    (0.77x at batch 16; docs/SPEED.md)."""
    bar = tqdm(total=len(plans), desc=desc, unit="run", disable=None)
    with bar:
        if jobs <= 1 or len(plans) <= 1:
            results = {}
            for keys in same_shape({key: cfg for key, (cfg, _) in plans.items()}):
                if len(keys) > 1 and fusing_pays(plans[keys[0]][0]):
                    results.update(_train_group({key: plans[key] for key in keys}, data))
                    bar.update(len(keys))
                    continue
                for key in keys:  # built and trained one at a time
                    cfg, run_dir = plans[key]
                    results[key] = fit(cfg, run_dir, dataset=data, resume=True, epoch_bar=False)
                    bar.update()
            return {key: results[key] for key in plans}  # in the order asked for
        return _side_by_side(plans, data, jobs, bar)


def _train_group(plans: dict[str, Plan], data: Dataset) -> dict[str, Run]:
    cfgs, run_dirs = zip(*plans.values(), strict=True)
    runs = fit_group(list(cfgs), list(run_dirs), dataset=data, resume=True, epoch_bar=False)
    return dict(zip(plans, runs, strict=True))


def _side_by_side(plans: dict[str, Plan], data: Dataset, jobs: int, bar: tqdm) -> dict[str, Run]:
    """The plans in `jobs` spawned workers of cores // jobs threads each (runtime/local_workers.py:
    the split, and a failed run, Ctrl-C or SIGTERM stopping the other workers; their runs
    resume from their checkpoints next time). The longest start first (`images_to_train`):
    a long run handed out last would train alone at the end while the other workers idle."""
    longest_first = sorted(plans, key=lambda key: -images_to_train(plans[key][0], data))
    results = run_in_workers(
        _fit_in_worker,
        {key: plans[key] for key in longest_first},
        workers=jobs,
        initializer=_start_worker,
        initargs=(for_workers(data),),
        on_result=lambda *_: bar.update(),
    )
    return {key: results[key] for key in plans}  # in the order asked for


def images_to_train(cfg: TrainConfig, data: Dataset) -> int:
    """A run's length as the images it trains on, all epochs together: among one experiment's
    runs, where the models are alike, the order of their training times."""
    images = cfg.data.train_subset or len(data.train_images)
    return cfg.epochs * round(images * (1 - cfg.data.val_fraction))


_WORKER_DATA: Dataset | None = None  # a worker process's copy of the dataset
_TENSORS = ("train_images", "train_labels", "test_images", "test_labels")


def for_workers(data: Dataset) -> Dataset:
    """The dataset with NumPy arrays for tensors: they travel to a worker by value, where torch
    tensors would go through shared memory (/dev/shm is small on some machines)."""
    return dataclasses.replace(data, **{k: getattr(data, k).numpy() for k in _TENSORS})


_WORKER_LIFE = contextlib.ExitStack()  # what a worker process holds until it ends


def in_worker(data: Dataset) -> Dataset:
    """A worker's set-up, after run_in_workers pinned its threads (or not): the dataset that
    `for_workers` sent, as tensors again."""
    # before its thread pool starts, which inherits it (dfl/runtime/subnormals.py); held for
    # the worker's life: the process ends with its pool
    _WORKER_LIFE.enter_context(flushed_to_zero())
    return dataclasses.replace(data, **{k: torch.from_numpy(getattr(data, k)) for k in _TENSORS})


def _start_worker(data: Dataset) -> None:
    global _WORKER_DATA
    _WORKER_DATA = in_worker(data)


def _fit_in_worker(cfg: TrainConfig, run_dir: Path) -> Run:
    return fit(cfg, run_dir, dataset=_WORKER_DATA, resume=True, epoch_bar=False)
