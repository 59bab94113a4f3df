"""One trial: a normal training run in its own run directory, recorded on the Optuna trial.

The run directory is named by the trial's parameters, not its number, so a trial requeued
after its worker died finds the dead worker's checkpoints and resumes (`fit(resume=True)`).
With epoch reuse, the grid points that differ only in epochs share one directory trained to
the longest epochs; a shorter point pauses the run after its epochs (or reads the curve of a
run that went further). The run directory's one lock (dfl/runtime/run_lock.py), taken by
waiting, keeps two workers out of one directory: the second waits its turn, as it does for a
`dfl train` training there.

What a trial records as user attributes: its config, per-epoch curve, final metrics, wall
time, parameter count, run directory and the command that reproduces it; `epochs_from` when it
was read off a longer run, `resumed_from_epoch` when it continued a checkpoint, and `reason`
when it failed or was pruned.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import os
import re
import shlex
import socket
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from dfl.config import TrainConfig
from dfl.data import Dataset, load_dataset
from dfl.errors import DflError, DiskFull, disk_full, one_line
from dfl.runtime.run_lock import Claim, claim_run_dir
from dfl.runtime.run_lock import file_lock as file_lock  # launch.py's create.lock
from dfl.sweep.spec import Params, RunPlan, SweepSpec, decode, encode, run_plan
from dfl.sweep.storage import StorageUnreachable, without_waiting
from dfl.training.run import Run, fit_each
from dfl.training.run_dir import RunStatus, read_history
from dfl.training.trainer import StopRun, build_model

CURVE_KEYS = ("epoch", "lr", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "seconds")
Log = Callable[[str], None]
BEAT_RETRY_S = 0.5  # after a beat the database missed, the next try comes this soon


@dataclass
class WorkerContext:
    """What every trial of one worker shares."""

    spec: SweepSpec
    study: optuna.Study
    storage: optuna.storages.BaseStorage  # the study's own (cached) storage
    study_id: int
    sweep_dir: Path
    reuse_epochs: int | None  # epochs every grid row trains to, when shorter points reuse it
    log: Log
    worker: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")
    datasets: dict[tuple[str, str | None], Dataset] = field(default_factory=dict)
    # each queued grid point's group, as worker._fusable_shape found it
    shapes: dict[tuple[str, bool], str | None] = field(default_factory=dict)

    def dataset(self, cfg: TrainConfig) -> Dataset:
        """Loaded once per worker, not once per trial (MNIST takes a second to read)."""
        key = (cfg.data.dataset, cfg.data.data_dir)
        if key not in self.datasets:
            self.datasets[key] = load_dataset(cfg.data.dataset, cfg.data.data_dir)
        return self.datasets[key]


@dataclass
class TrialOutcome:
    number: int
    state: TrialState
    value: float | None
    params: Params
    reason: str | None = None


def suggest(trial: optuna.Trial, spec: SweepSpec) -> Params:
    """The trial's values, through Optuna's suggest API (so the study knows the space): a
    queued grid point returns its fixed values, a search draws from the sampler."""
    if spec.grid is not None:
        return {
            key: decode(trial.suggest_categorical(key, [encode(v) for v in values]), values)
            for key, values in spec.grid.items()
        }
    assert spec.search is not None
    params: Params = {}
    for key, dist in spec.search.space.items():
        if dist.choices is not None:
            stored = trial.suggest_categorical(key, [encode(v) for v in dist.choices])
            params[key] = decode(stored, dist.choices)
        elif dist.is_int:
            params[key] = trial.suggest_int(
                key, int(dist.low), int(dist.high), step=int(dist.step or 1), log=dist.log
            )
        else:
            params[key] = trial.suggest_float(
                key, dist.low, dist.high, step=dist.step, log=dist.log
            )
    return params


def run_dir_name(params: Params) -> str:
    """`enc=32_epochs=60-1a2b3c4d`: readable leaf names and values, then a hash of the full
    dotted keys and values, so two different points never share a name."""
    digest = hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()
    parts = [f"{key.rsplit('.', 1)[-1]}={_slug(value)}" for key, value in params.items()]
    readable = re.sub(r"[^A-Za-z0-9=._+-]+", "", "_".join(parts))[:80]
    return f"{readable}-{digest[:8]}"


def _slug(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return "x".join(_slug(v) for v in value)  # hidden=[128, 64] -> hidden=128x64
    return value if isinstance(value, str) else json.dumps(value)


def run_dir_lock(run_dir: Path, log: Log) -> contextlib.AbstractContextManager[Claim]:
    """Hold `run_dir` for the trial: one worker (or `dfl train`) in a run directory at a time.
    The run directory's own lock, taken by waiting (saying once whom for); `fit`'s claim of
    the directory inside the block joins it (reentrant) rather than refusing the trial."""
    return claim_run_dir(
        run_dir,
        wait=True,
        on_wait=lambda holder: log(f"waiting for {run_dir.name}: {holder} is training it"),
        reentrant=True,
    )


class Heartbeat:
    """Records the trial's heartbeat every `interval` seconds while the worker lives; a worker
    that is killed stops beating and, after the grace period, its trial is requeued. While
    the database is away a beat tries once (the storage says once that it is away) and the
    next comes BEAT_RETRY_S later, not a whole interval: the first beat after the server's
    return is that prompt, which the other workers count on
    (storage.ReconnectingStorage._get_stale_trial_ids), and stopping never waits on a beat."""

    def __init__(
        self, storage: optuna.storages.BaseStorage, trial_id: int, interval: int, log: Log
    ):
        self.storage, self.trial_id, self.interval, self.log = storage, trial_id, interval, log
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True, name="heartbeat")

    def __enter__(self) -> Heartbeat:
        self.storage.record_heartbeat(self.trial_id)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _beat(self) -> None:
        wait = self.interval
        with without_waiting():
            while not self._stop.wait(wait):
                wait = self.interval
                try:
                    self.storage.record_heartbeat(self.trial_id)
                except StorageUnreachable:  # said once by the storage
                    wait = min(BEAT_RETRY_S, self.interval)
                except Exception as e:  # a database hiccup: try again next beat, never kill it
                    self.log(f"heartbeat of trial id {self.trial_id} not recorded: {e}")


@dataclass
class _Trial:
    """One claimed trial on its way: what it trains, and what it has reported."""

    trial: optuna.Trial
    trial_id: int
    params: Params = field(default_factory=dict)
    cfg: TrainConfig | None = None  # the trial's own config (its epochs, not a shared run's)
    plan: RunPlan | None = None
    run_dir: Path | None = None
    reported: set[int] = field(default_factory=set)
    trained: list[int] = field(default_factory=list)  # epochs trained here (fit calls back)

    def prepare(self, ctx: WorkerContext) -> None:
        self.params = suggest(self.trial, ctx.spec)
        self.cfg = ctx.spec.trial_config(self.params)
        self.plan = run_plan(ctx.spec, self.params, ctx.reuse_epochs)
        self.run_dir = ctx.sweep_dir / "trials" / run_dir_name(self.plan.params)
        _record_setup(ctx, self.trial, self.cfg, self.plan, self.run_dir)
        self.reported = set(ctx.storage.get_trial(self.trial_id).intermediate_values)

    def report_and_prune(self, ctx: WorkerContext, record: dict[str, Any]) -> None:
        """fit's callback after each epoch: the epoch reported, and the pruner asked."""
        assert self.cfg is not None
        trial, metric, epoch, epochs = self.trial, ctx.spec.metric, record["epoch"], self.cfg.epochs
        if not self.trained and epoch > 1:
            # The run continued a checkpoint (a dead worker's, or a shared run paused earlier):
            # its earlier epochs are reported first, as the pruner expects them in order.
            trial.set_user_attr("resumed_from_epoch", epoch - 1)
            ctx.log(f"trial {trial.number}: continued {self.run_dir} from epoch {epoch - 1}")
            for earlier in read_history(self.run_dir)[: min(epoch - 1, epochs)]:
                _report(trial, earlier, metric, self.reported)
        self.trained.append(epoch)
        if epoch > epochs:
            return  # a shared run past this trial's epochs: the longer point's business
        _report(trial, record, metric, self.reported)
        search = ctx.spec.search
        if search is not None and search.pruner != "none" and trial.should_prune():
            raise StopRun(
                RunStatus.PRUNED,
                f"pruned at epoch {epoch}: {metric} {record[metric]:.6g} ({search.pruner} rule)",
            )


# How a trial ended: its state, value and reason; None when another worker took it over.
Ending = tuple[TrialState, float | None, str | None] | None


def run_trial(ctx: WorkerContext, trial: optuna.Trial, trial_id: int) -> TrialOutcome | None:
    """Train the trial and tell the study how it ended (`run_trials` of one)."""
    return run_trials(ctx, [(trial, trial_id)])[0]


def run_trials(
    ctx: WorkerContext, claimed: list[tuple[optuna.Trial, int]]
) -> list[TrialOutcome | None]:
    """Train the claimed trials and tell the study how each ended. Trials that differ only in
    their seed, learning rate or weight decay (the worker claims them together:
    `worker.claim_siblings`) train as one group (`fit_each`, fused where that pays), each
    still its own trial: its run directory, reports, pruning, value. A failure is recorded
    with its reason and the worker goes on; Ctrl-C puts the trials back in the queue and stops
    the worker. None for a trial another worker took over (see `_say_taken_over`)."""
    t0 = time.perf_counter()
    jobs = [_Trial(trial, trial_id) for trial, trial_id in claimed]
    ended: dict[int, Ending] = {}
    try:
        for i, job in enumerate(jobs):
            try:
                job.prepare(ctx)
            except Exception as e:
                ended[i] = _failed(ctx, jobs, ended, job, e)
        live, runs = [], []
        with contextlib.ExitStack() as held:
            # Locked in the order of their directories: two workers whose groups share
            # directories (epoch reuse) then never hold one each while waiting for the other.
            for i, job in sorted(enumerate(jobs), key=lambda item: str(item[1].run_dir)):
                if i in ended:
                    continue
                try:
                    held.enter_context(run_dir_lock(job.run_dir, ctx.log))  # type: ignore[arg-type]
                    live.append(i)
                except Exception as e:  # an unwritable directory, say
                    ended[i] = _failed(ctx, jobs, ended, job, e)
            try:
                runs = _train(ctx, [jobs[i] for i in live]) if live else []
            except Exception as e:  # the data would not load, say: each trial's failure
                runs = [e] * len(live)
            for i, run in zip(live, runs, strict=True):
                try:
                    if isinstance(run, Exception):
                        raise run
                    ended[i] = _result(ctx, jobs[i], run)
                except Exception as e:
                    ended[i] = _failed(ctx, jobs, ended, jobs[i], e)
    except KeyboardInterrupt:
        _requeue_untold(ctx, jobs, ended)
        raise
    wall = round(time.perf_counter() - t0, 3)
    together = [job.trial.number for job in jobs] if len(jobs) > 1 else None
    return [_tell(ctx, job, ended[i], wall, together) for i, job in enumerate(jobs)]


def _train(ctx: WorkerContext, jobs: list[_Trial]) -> list[Run | Exception]:
    plans = [job.plan for job in jobs]
    assert all(plans)
    return fit_each(
        [plan.config for plan in plans],  # type: ignore[union-attr]
        [job.run_dir for job in jobs],  # type: ignore[misc]
        dataset=ctx.dataset(plans[0].config),  # type: ignore[union-attr]
        resume=True,
        callbacks=[[functools.partial(job.report_and_prune, ctx)] for job in jobs],
        log=ctx.log,
        epoch_bar=False,
        until_epoch=plans[0].until_epoch,  # type: ignore[union-attr]
    )


def _failed(
    ctx: WorkerContext, jobs: list[_Trial], ended: dict[int, Ending], job: _Trial, e: Exception
) -> Ending:
    """How `job` ended on error `e`: failed with its reason, or taken over (None). Errors that
    are not the trial's own end the worker: a database that is away (raised on), a full disk
    (every unfinished trial back in the queue, when the database still takes that write)."""
    if isinstance(e, optuna.exceptions.UpdateFinishedTrialError):
        _say_taken_over(ctx, job.trial)
        return None
    if isinstance(e, StorageUnreachable):  # nothing can be recorded anyway
        raise e
    if disk_full(e):
        # The worker could not write the next trial either: it stops.
        with contextlib.suppress(DiskFull):
            _requeue_untold(ctx, jobs, ended)
        raise e if isinstance(e, DiskFull) else DiskFull(one_line(e)) from None
    reason = str(e) if isinstance(e, DflError) else f"{type(e).__name__}: {e}"
    if not isinstance(e, DflError):
        ctx.log("".join(traceback.format_exception(e)))
    if job.run_dir is not None:  # the epochs before the failure, to see where it went wrong
        # A damaged metrics.jsonl: the reason says so. A trial taken over meanwhile: the `tell`
        # says so.
        with contextlib.suppress(DflError, optuna.exceptions.UpdateFinishedTrialError):
            history = read_history(job.run_dir)
            curve = [{k: r[k] for k in CURVE_KEYS if k in r} for r in history]
            job.trial.set_user_attr("curve", curve)
    return TrialState.FAIL, None, reason


def _requeue_untold(ctx: WorkerContext, jobs: list[_Trial], ended: dict[int, Ending]) -> None:
    """Every trial of the group not yet told back in the queue (the study is told only once all
    ended), but those another worker took over; a finished run is read back by its retry."""
    for i, job in enumerate(jobs):
        if i not in ended or ended[i] is not None:
            _requeue(ctx, job.trial, job.trial_id)


def _tell(
    ctx: WorkerContext, job: _Trial, ending: Ending, wall: float, together: list[int] | None
) -> TrialOutcome | None:
    if ending is None:
        return None
    state, value, reason = ending
    trial = job.trial
    try:
        trial.set_user_attr("wall_s", wall)
        if together:
            trial.set_user_attr("trained_with", together)
        if reason:
            trial.set_user_attr("reason", reason)
        ctx.study.tell(trial, value if state == TrialState.COMPLETE else None, state=state)
    except optuna.exceptions.UpdateFinishedTrialError:
        # This worker stalled past the grace period (suspended, say): another worker failed
        # the trial and requeued it, and that retry, finding this run done, records it.
        ctx.log(f"trial {trial.number} was requeued meanwhile; its retry records the result")
    return TrialOutcome(trial.number, state, value, job.params, reason)


def _requeue(ctx: WorkerContext, trial: optuna.Trial, trial_id: int) -> None:
    """Put an interrupted trial back in the queue. Not waiting for a database that is away:
    the trial then stays RUNNING, and its heartbeat, stopped with this worker, gets it failed
    and requeued once the server is back, as a killed worker's trial."""
    try:
        with without_waiting():
            ctx.storage.set_trial_state_values(trial_id, TrialState.WAITING)
    except optuna.exceptions.UpdateFinishedTrialError:
        return  # taken over meanwhile: the other worker has it
    except StorageUnreachable:
        ctx.log(
            f"trial {trial.number} interrupted while the database is unreachable: requeued "
            f"once it is back and {ctx.spec.grace_period}s have passed without a heartbeat"
        )
        return
    ctx.log(f"trial {trial.number} interrupted: back in the queue, its checkpoints kept")


def _say_taken_over(ctx: WorkerContext, trial: optuna.Trial) -> None:
    """The study refused this worker's write to its own trial: the worker was silent past the
    grace period (stopped, suspended, starved), so another worker failed the trial and queued
    it again. The requeued trial resumes the run directory once this worker lets go of it
    (`fit` has just stopped at the refused write, and the run lock goes with it), so this
    worker drops the trial, saying so once, and claims the next."""
    ctx.log(
        f"trial {trial.number} was taken over by another worker while this one was silent "
        f"(over {ctx.spec.grace_period}s without a heartbeat); dropped here, its run continues "
        "from its checkpoint in the requeued trial"
    )


# Attributes of one attempt: a requeued trial starts with the dead attempt's user attributes
# (Optuna's retry callback copies them), so they are cleared rather than left stale.
ATTEMPT_ATTRS = (
    "resumed_from_epoch",
    "reason",
    "curve",
    "final",
    "wall_s",
    "epochs_from",
    "trained_with",
)


def _record_setup(
    ctx: WorkerContext, trial: optuna.Trial, cfg: TrainConfig, plan: RunPlan, run_dir: Path
) -> None:
    for key in ATTEMPT_ATTRS:
        if trial.user_attrs.get(key) is not None:
            trial.set_user_attr(key, None)
    argv = ["dfl", "train", "--config", str(run_dir / "config.toml")]
    argv += ["--out", f"runs/{ctx.spec.name}-trial-{trial.number}"]
    if plan.until_epoch is not None:
        argv += ["--epochs", str(plan.until_epoch)]
        trial.set_user_attr("epochs_from", f"{run_dir} curve at epoch {plan.until_epoch}")
    command = shlex.join(argv)  # quoted for a shell: a run directory may hold any character
    trial.set_user_attr("config", cfg.model_dump(mode="json"))
    trial.set_user_attr("run_dir", str(run_dir))
    trial.set_user_attr("command", command)
    trial.set_user_attr("worker", ctx.worker)


def _result(ctx: WorkerContext, job: _Trial, result: Run) -> Ending:
    """A trained trial's state, value and reason, its curve and final metrics recorded."""
    cfg, metric, trial = job.cfg, ctx.spec.metric, job.trial
    assert cfg is not None
    epochs = cfg.epochs
    curve = [{k: r[k] for k in CURVE_KEYS if k in r} for r in result.history[:epochs]]
    for record in result.history[:epochs]:
        _report(trial, record, metric, job.reported)
    trial.set_user_attr("curve", curve)
    n_params = result.final.get("params") or sum(
        p.numel() for p in build_model(cfg, ctx.dataset(cfg).num_classes)[0].parameters()
    )
    trial.set_user_attr("n_parameters", int(n_params))
    if result.status == RunStatus.PRUNED:
        return TrialState.PRUNED, None, result.reason
    if job.plan is not None and job.plan.until_epoch is not None:
        # read off the shared run's curve at this trial's epochs
        if len(curve) < epochs:
            return TrialState.FAIL, None, f"{job.run_dir} stopped before epoch {epochs}"
        final = {k: v for k, v in curve[-1].items() if k.startswith("val_")}
        final.update(epochs_run=epochs, params=int(n_params))
    else:
        final = result.final
    trial.set_user_attr("final", final)
    value = final.get(metric)
    if value is None or not math.isfinite(value):
        return TrialState.FAIL, None, f"{metric} is {value} after training"
    return TrialState.COMPLETE, float(value), None


def _report(trial: optuna.Trial, record: dict[str, Any], metric: str, reported: set[int]) -> None:
    # Each epoch's validation metric is an intermediate value: the pruner reads it, and so
    # does optuna-dashboard's curve plot. An epoch is reported once, however often it is seen.
    epoch = record["epoch"]
    if epoch not in reported and metric in record and math.isfinite(record[metric]):
        trial.report(record[metric], epoch)
        reported.add(epoch)
