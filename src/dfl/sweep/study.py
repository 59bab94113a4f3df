"""The Optuna study behind a sweep: created once from the spec (which it then carries, so a
worker on another machine needs only the study's name and storage), its grid enqueued, and
the same sampler and pruner rebuilt in every worker."""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from dfl import __version__
from dfl.errors import DflError, option
from dfl.sweep.spec import SweepSpec, encode, spec_from_dict
from dfl.sweep.storage import describe_url

SPEC_ATTR = "dfl_spec"  # study user attribute: the validated spec, as JSON
SWEEP_DIR_ATTR = "dfl_sweep_dir"  # where trial run directories went on the first machine
# Spec keys that may change when a sweep is rerun: a longer search, other heartbeats.
CHANGEABLE = {"search.n_trials", "heartbeat_interval", "grace_period"}


class QueuedGridSampler(optuna.samplers.GridSampler):
    """Optuna's GridSampler with every point enqueued up front and popped by workers, each
    exactly once: the sampler alone lets concurrent workers pick the same point. Its
    `after_trial` calls `Study.stop()` at the last point, which raises outside
    `Study.optimize` (workers ask and tell); here workers stop when the queue is empty."""

    def after_trial(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        return None


def make_sampler(
    spec: SweepSpec, worker_index: int | None, trials_before: int = 0
) -> optuna.samplers.BaseSampler:
    """The spec's sampler for local worker `worker_index`, in a study that held
    `trials_before` trials when the worker joined it."""
    if spec.grid is not None:
        space = {key: [encode(v) for v in values] for key, values in spec.grid.items()}
        return QueuedGridSampler(space, seed=0)
    assert spec.search is not None
    # Workers with one seed would draw the same random start-up points, so each local worker
    # seeds its own, and so does each launch: a search continued (rerun after a kill, or with
    # more n_trials) drew its first points again, into the same run directories, and spent
    # its budget reading them back. A fresh search from one worker repeats itself. A worker
    # joining from elsewhere (no index) draws its own.
    seed = None
    if worker_index is not None:
        entropy = [spec.search.sampler_seed, worker_index, trials_before]
        seed = int(np.random.SeedSequence(entropy).generate_state(1)[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        # constant_liar: a running trial counts as a poor result, so concurrent workers spread.
        return optuna.samplers.TPESampler(seed=seed, constant_liar=True)


def make_pruner(spec: SweepSpec) -> optuna.pruners.BasePruner:
    search = spec.search
    if search is None or search.pruner == "none":
        return optuna.pruners.NopPruner()
    if search.pruner == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=search.startup_trials, n_warmup_steps=search.warmup_epochs
        )
    max_epochs: Any = "auto" if "epochs" in search.space else spec.trial_config({}).epochs
    return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max_epochs)


def create_or_load(
    spec: SweepSpec, storage: optuna.storages.RDBStorage, sweep_dir: Path
) -> optuna.Study:
    """The spec's study, created on the first run. A rerun checks the stored spec is the same
    (only CHANGEABLE keys may differ) and enqueues the grid points not yet in the study."""
    study = optuna.create_study(
        study_name=spec.name,
        storage=storage,
        direction=spec.direction,
        sampler=make_sampler(spec, 0),
        pruner=make_pruner(spec),
        load_if_exists=True,
    )
    stored = study.user_attrs.get(SPEC_ATTR)
    if stored is None and study.trials:
        raise DflError(
            f"study '{spec.name}' in {describe_url(storage.url)} was not made by `dfl sweep`; "
            "name the sweep differently"
        )
    if stored is not None:
        _check_same_spec(spec, stored, storage.url)
    study.set_user_attr(SPEC_ATTR, spec.dump())
    study.set_user_attr(SWEEP_DIR_ATTR, str(sweep_dir.resolve()))
    study.set_user_attr("dfl_version", __version__)
    if spec.grid is not None:
        queued = {
            _key(t.system_attrs.get("fixed_params", t.params))
            for t in study.get_trials(deepcopy=False)
        }
        for point in spec.grid_points():
            encoded = {k: encode(v) for k, v in point.items()}
            if _key(encoded) not in queued:
                study.enqueue_trial(encoded)
    return study


def load(
    name: str, storage: optuna.storages.RDBStorage, worker_index: int | None = None
) -> tuple[optuna.Study, SweepSpec]:
    """A sweep's study and the spec it was made from, with its sampler and pruner."""
    from dfl.sweep.storage import study_id

    attrs = storage.get_study_user_attrs(study_id(storage, name))
    if SPEC_ATTR not in attrs:
        raise DflError(f"study '{name}' in {describe_url(storage.url)} was not made by `dfl sweep`")
    spec = spec_from_dict(attrs[SPEC_ATTR], stored=True)
    trials_before = len(storage.get_all_trials(study_id(storage, name), deepcopy=False))
    study = optuna.load_study(
        study_name=name,
        storage=storage,
        sampler=make_sampler(spec, worker_index, trials_before),
        pruner=make_pruner(spec),
    )
    return study, spec


def sweep_dir_hint(storage: optuna.storages.RDBStorage, name: str) -> Path | None:
    from dfl.sweep.storage import study_id

    stored = storage.get_study_user_attrs(study_id(storage, name)).get(SWEEP_DIR_ATTR)
    return Path(stored) if stored else None


def retry_failed(study: optuna.Study) -> int:
    """Queue again every failed trial that no later trial retries (a fixed bug, a worker that
    lacked the data): the same parameters, so the same run directory, listed in the retry's
    `retry_history` like a dead worker's trial. Returns how many were queued."""
    trials = study.get_trials(deepcopy=False)
    retried = superseded(trials)
    failed = [t for t in trials if t.state == TrialState.FAIL and t.number not in retried]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        requeue = optuna.storages.RetryHeartbeatStaleTrialCallback()
        for trial in failed:
            requeue(study, trial)
    return len(failed)


def superseded(trials: Sequence[FrozenTrial]) -> set[int]:
    """Numbers of failed trials queued again as a later trial (a dead worker's, or by
    `--retry-failed`; the retry lists them in its `retry_history`): not the sweep's failures."""
    out: set[int] = set()
    for t in trials:
        out.update(t.system_attrs.get("retry_history", []))
    return out


def _check_same_spec(spec: SweepSpec, stored: dict[str, Any], url: str) -> None:
    new = _flat(spec.dump())
    old = _flat(stored)
    for key in sorted(set(old) | set(new)):
        if key not in CHANGEABLE and old.get(key) != new.get(key):
            raise DflError(
                f"study '{spec.name}' in {describe_url(url)} was made from another spec: "
                f"'{key}' was {json.dumps(old.get(key))}, now {json.dumps(new.get(key))} "
                f"(rename the sweep, or use another {option('out')} or {option('storage')})"
            )


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and key not in ("grid", "space"):
            out.update(_flat(value, f"{prefix}{key}."))
        elif isinstance(value, dict):  # grid and space keys are dotted already
            out.update({f"{prefix}{key}.{k}": v for k, v in value.items()})
        else:
            out[f"{prefix}{key}"] = value
    return out


def _key(params: dict[str, Any]) -> str:
    return json.dumps(params, sort_keys=True)
