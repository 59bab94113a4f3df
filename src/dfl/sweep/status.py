"""Where a sweep stands, read from its study alone (any machine that reaches the storage can
ask): trials done, running, waiting, failed and pruned, the best so far, and an ETA."""

from __future__ import annotations

import datetime as dt
import statistics
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from dfl.errors import DflError, option
from dfl.sweep.spec import SweepSpec
from dfl.sweep.study import superseded

STATE_NAMES = {
    TrialState.COMPLETE: "complete",
    TrialState.RUNNING: "running",
    TrialState.WAITING: "waiting",
    TrialState.FAIL: "failed",
    TrialState.PRUNED: "pruned",
}


@dataclass
class SweepStatus:
    spec: SweepSpec
    storage: str  # the URL, password hidden
    counts: dict[str, int]  # complete, running, waiting, failed, pruned, retried, to_start
    # (retried: failed trials that a later trial retries, so not failures of the sweep)
    best: FrozenTrial | None
    eta_s: float | None  # None until a trial has finished
    trials: list[FrozenTrial] = field(repr=False, default_factory=list)
    # Running trials whose worker has been silent past the grace period: it is gone, and the
    # next worker to look at the study requeues the trial (from its newest checkpoint).
    stalled: frozenset[int] = frozenset()
    # Workers alive now: those of the running trials that are not stalled (a worker training
    # a fused group runs several trials)
    workers: int = 0

    @property
    def finished(self) -> bool:
        c = self.counts
        return c["running"] == 0 and c["waiting"] == 0 and c["to_start"] == 0


class SweepFailed(DflError):
    """A sweep that ran to its end with a failure: no trial completed, or (`dfl sweep`, and a
    grid point in an experiment) a trial failed for good. Exit 4, as a reproduction whose
    experiments ran but failed: the work was done and recorded, its outcome is the failure.
    `status` is where the sweep stands, each failure's reason in it."""

    exit_code = 4

    def __init__(self, message: str, status: SweepStatus) -> None:
        super().__init__(message)
        self.status = status


def failed_trials(status: SweepStatus) -> list[FrozenTrial]:
    """The sweep's failures: failed trials that no later trial retries."""
    retried = superseded(status.trials)
    return [t for t in status.trials if t.state == TrialState.FAIL and t.number not in retried]


def require_a_completed_trial(
    status: SweepStatus,
    retry: str | None = None,
) -> SweepStatus:
    """`status`, if a trial completed; else `SweepFailed` with the count of failures, the
    first one's reason and `retry` (a sweep whose every trial failed is no success)."""
    if status.counts["complete"]:
        return status
    failed = failed_trials(status)
    what = _failures(failed) if failed else f"{status.counts['pruned']} pruned"
    raise SweepFailed(
        f"sweep {status.spec.name}: no trial completed ({what}); {retry or _retry()}", status
    )


def require_no_failure(status: SweepStatus) -> SweepStatus:
    """`status`, if a trial completed and none failed for good; else `SweepFailed` naming the
    first failure, as a reproduction whose experiment failed exits 4 (the trials that
    completed stay)."""
    require_a_completed_trial(status)
    failed = failed_trials(status)
    if not failed:
        return status
    done = status.counts["complete"]
    raise SweepFailed(
        f"sweep {status.spec.name}: {_failures(failed)} ({done} completed); {_retry()}", status
    )


def _failures(failed: list[FrozenTrial]) -> str:
    first = failed[0]
    said = f"trial {first.number} ({format_trial_params(first)}): {reason(first)}"
    return f"1 failed, {said}" if len(failed) == 1 else f"{len(failed)} failed, the first: {said}"


def _retry() -> str:
    # A retry reruns the same spec: it mends a cause outside it, and a rate or a grad_clip
    # changed in the spec is another sweep (the study refuses a changed spec).
    return (
        "if the cause lies outside the spec (disk, memory), fix it and rerun with "
        f"{option('retry-failed')}; a changed spec is a new sweep (rename it)"
    )


def sweep_status(
    study: optuna.Study, spec: SweepSpec, storage: str, stalled: frozenset[int] = frozenset()
) -> SweepStatus:
    """Where `study` stands; `stalled`: the numbers of its running trials whose worker is gone
    (`dfl.sweep.storage.stalled_trials`)."""
    trials = study.get_trials(deepcopy=False)
    retried = superseded(trials)
    live = [t for t in trials if t.number not in retried]
    counts = Counter(STATE_NAMES[t.state] for t in live)
    result = {name: counts.get(name, 0) for name in STATE_NAMES.values()}
    result["retried"] = len(retried)
    result["to_start"] = max(spec.n_trials - len(live), 0)
    running = [t for t in live if t.state == TrialState.RUNNING]
    stalled = frozenset(t.number for t in running) & stalled
    workers = len(
        {t.user_attrs.get("worker", t.number) for t in running if t.number not in stalled}
    )
    eta = _eta(live, result, workers)
    return SweepStatus(spec, storage, result, _best(live, spec), eta, trials, stalled, workers)


def _best(trials: list[FrozenTrial], spec: SweepSpec) -> FrozenTrial | None:
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    if not done:
        return None
    pick = min if spec.direction == "minimize" else max
    return pick(done, key=lambda t: t.value)


def _eta(trials: list[FrozenTrial], counts: dict[str, int], workers: int) -> float | None:
    """Mean finished-trial duration x trials left, over the `workers` now running; None when
    no trial has finished, or no worker is alive to finish the rest. Trials read off a longer
    run's curve take no time, and pull the mean down as they should. A running trial's part
    left is the mean less its time so far, a stalled one's too (resumed from its checkpoint)."""
    if not workers:
        return None
    durations = [
        (t.datetime_complete - t.datetime_start).total_seconds()
        for t in trials
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
        and t.datetime_start
        and t.datetime_complete
    ]
    if not durations:
        return None
    mean = statistics.fmean(durations)
    now = dt.datetime.now()
    left = (counts["waiting"] + counts["to_start"]) * mean
    left += sum(
        max(mean - (now - t.datetime_start).total_seconds(), 0.0)
        for t in trials
        if t.state == TrialState.RUNNING and t.datetime_start
    )
    return left / workers


def format_status(status: SweepStatus, list_trials: bool = False) -> str:
    spec, c, stalled = status.spec, status.counts, len(status.stalled)
    lines = [
        f"sweep {spec.name}: {spec.kind} of {spec.n_trials} trials, {spec.direction} "
        f"{spec.metric}  ({status.storage})",
        "  "
        + "  ".join(
            f"{name} {c[name]}" + (f" ({stalled} stalled)" if name == "running" and stalled else "")
            for name in ("complete", "running", "waiting", "pruned", "failed")
        )
        + (f"  not started {c['to_start']}" if c["to_start"] else "")
        + (f"  retried {c['retried']}" if c["retried"] else ""),
    ]
    if status.best is not None:
        b = status.best
        lines.append(
            f"  best: trial {b.number}  {spec.metric} {b.value:.6g}  ({format_trial_params(b)})"
            f"  {b.user_attrs.get('run_dir') or ''}"
        )
    else:
        lines.append("  best: none yet")
    if status.finished:
        lines.append("  finished")
    elif status.stalled and not status.workers:  # killed: an ETA would promise idle work
        lines.append("  no worker is alive: run the sweep again (or `dfl worker`) to go on")
    elif not status.workers:  # after Ctrl-C; or workers starting, or between two trials
        lines.append(
            "  no trial running now: if no `dfl sweep` or `dfl worker` runs on this study "
            "either, run the sweep again to go on"
        )
    elif status.eta_s is not None:
        lines.append(f"  ETA {format_seconds(status.eta_s)} at {status.workers} worker(s)")
    else:
        lines.append("  ETA: after the first trial finishes")
    for t in status.trials:
        if t.number in status.stalled:
            lines.append(
                f"  stalled: trial {t.number} ({format_trial_params(t)}): no heartbeat for "
                f"over {spec.grace_period}s, its worker is gone; the next worker to start "
                "requeues it (or fails it, once its retries are spent)"
            )
    for t in failed_trials(status):
        lines.append(f"  failed: trial {t.number} ({format_trial_params(t)}): {reason(t)}")
    if list_trials:
        lines.append(format_table(status))
    return "\n".join(lines)


def format_table(status: SweepStatus) -> str:
    spec = status.spec
    retried = superseded(status.trials)
    rows = [("trial", "state", spec.metric, "epochs", "time", "params")]
    for t in status.trials:
        state = "retried" if t.number in retried else STATE_NAMES[t.state]
        state = "stalled" if t.number in status.stalled else state
        value = f"{t.value:.6g}" if t.value is not None else "-"
        # A running trial has no curve yet: the epochs it reported so far show its progress.
        epochs = str(len(t.user_attrs.get("curve") or t.intermediate_values))
        wall = t.user_attrs.get("wall_s")
        rows.append(
            (
                str(t.number),
                state,
                value,
                epochs,
                format_seconds(wall) if wall is not None else "-",
                format_trial_params(t),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join(
        "  "
        + "  ".join(cell.ljust(w) for cell, w in zip(r[:-1], widths, strict=True))
        + "  "
        + r[-1]
        for r in rows
    )


def format_trial_params(trial: FrozenTrial) -> str:
    params: dict[str, Any] = trial.params or trial.system_attrs.get("fixed_params", {})
    return ", ".join(f"{k}={_short(v)}" for k, v in params.items())


def reason(trial: FrozenTrial) -> str:
    if trial.user_attrs.get("reason"):
        return str(trial.user_attrs["reason"])
    return "its worker stopped (no heartbeat) and the retries ran out"


def format_seconds(seconds: float) -> str:
    seconds = max(float(seconds), 0.0)
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds // 60:.0f}m{seconds % 60:02.0f}s"
    return f"{seconds // 3600:.0f}h{seconds % 3600 // 60:02.0f}m"


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
