"""A worker: claim a trial, train it, tell the study, repeat, until nothing is left to do.

Any number of workers, on any number of machines, can share a study. A grid's points are all
queued before the workers start and a worker only ever pops a queued trial (the storage marks
it RUNNING only if it is still WAITING, atomically), so no point runs twice and none is
skipped. A search asks the sampler for a new trial while the budget lasts. Before each claim a
worker fails the trials whose workers stopped beating; Optuna's retry callback requeues them
with the same parameters, hence the same run directory, and the next worker resumes them. A
worker that was only silent (stopped, then continued) finds its trial taken over at its next
write to it, drops it and claims the next.

A database server that goes away (restarted, failed over) is waited for, up to a minute: every
storage call retries (storage.ReconnectingStorage), so a worker mid-trial goes on training
and reports its epochs once the server is back. Past that, the worker ends on one line, its
trial left RUNNING for the heartbeat mechanism to requeue when the sweep is run again.
"""

from __future__ import annotations

import contextlib
import json
import signal
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from dfl.errors import DflError
from dfl.runtime.interrupts import note_sigterm, say
from dfl.sweep import study as studies
from dfl.sweep.spec import SweepSpec, check_trials, decode, run_plan
from dfl.sweep.storage import open_storage, study_id
from dfl.sweep.trial import Heartbeat, Log, TrialOutcome, WorkerContext, run_trials

WAIT_POLL_S = 1.0  # how often an idle worker looks for requeued trials


def default_sweep_dir(storage: optuna.storages.RDBStorage, name: str) -> Path:
    """Where the first machine put the trials, if this machine sees that directory (same
    machine, or a shared filesystem mounted at the same path), else `sweeps/NAME`."""
    hint = studies.sweep_dir_hint(storage, name)
    return hint if hint is not None and hint.is_dir() else Path("sweeps") / name


def run_worker(
    name: str,
    url: str,
    *,
    sweep_dir: Path | None = None,
    threads: int | None = None,
    index: int | None = None,
    log: Log | None = None,
) -> list[TrialOutcome]:
    """Work on study `name` until it is finished; returns what this worker ran."""
    log = log or say
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if threads:
        from dfl.runtime.core_share import pin_threads

        pin_threads(threads)  # the launcher's split of the cores (or --threads) holds
    spec = _stored_spec(name, url)
    storage = open_storage(
        url, heartbeat_interval=spec.heartbeat_interval, grace_period=spec.grace_period, log=log
    )
    study, spec = studies.load(name, storage, index)
    sweep_dir = sweep_dir or default_sweep_dir(storage, name)
    ctx = WorkerContext(
        spec=spec,
        study=study,
        # Optuna reads and writes through a cache in front of the RDBStorage; a trial claimed
        # here must go through that same object, or the study's Trial would not know it.
        storage=study._storage,
        study_id=study_id(storage, name),
        sweep_dir=sweep_dir,
        reuse_epochs=check_trials(spec),  # this machine's code and models must accept it too
        log=log,
    )
    log(f"worker {ctx.worker} on study {name} ({spec.kind}, {spec.n_trials} trials) -> {sweep_dir}")
    done: list[TrialOutcome] = []
    waiting_said = False
    with _sigterm_as_interrupt():
        while True:
            _fail_stale_trials(study)
            claimed = _claim(ctx)
            if claimed is None:
                running = _count(ctx, (TrialState.RUNNING, TrialState.WAITING))
                if running == 0:
                    break
                if not waiting_said:
                    log(
                        f"nothing to claim; {running} trial(s) still running elsewhere (a dead "
                        f"worker's trial is requeued after {spec.grace_period}s without heartbeat)"
                    )
                    waiting_said = True
                time.sleep(min(WAIT_POLL_S, spec.heartbeat_interval))
                continue
            waiting_said = False
            group = [claimed, *claim_siblings(ctx, claimed[1])]
            if len(group) > 1:
                numbers = ", ".join(str(trial.number) for trial, _ in group)
                log(f"trials {numbers} differ only in seed, rate or decay: claimed as one group")
            with contextlib.ExitStack() as beating:
                for _, trial_id in group:
                    beating.enter_context(
                        Heartbeat(ctx.storage, trial_id, spec.heartbeat_interval, log)
                    )
                outcomes = run_trials(ctx, group)
            for outcome in outcomes:
                if outcome is not None:  # None: taken over by another worker, which it said
                    log(_describe(outcome, spec))
                    done.append(outcome)
    log(f"worker {ctx.worker} done: ran {len(done)} trial(s); nothing left to claim")
    return done


def _stored_spec(name: str, url: str) -> SweepSpec:
    # The heartbeat settings are part of the storage object, and they come from the spec the
    # study carries: read it through a plain storage first.
    plain = open_storage(url)
    try:
        return studies.load(name, plain)[1]
    finally:
        plain.engine.dispose()


def _claim(ctx: WorkerContext) -> tuple[optuna.Trial, int] | None:
    """A queued trial (grid points, requeued trials), else for a search a new one while the
    budget lasts; None when there is nothing to start."""
    group_of = lambda attrs: _fusable_shape(ctx, attrs, check_pays=True)  # noqa: E731
    trial_id = pop_waiting(ctx.storage, ctx.study_id, group_of)
    if trial_id is not None:
        return optuna.trial.Trial(ctx.study, trial_id), trial_id
    if ctx.spec.search is None:
        return None
    trials = ctx.storage.get_all_trials(ctx.study_id, deepcopy=False)
    if len(trials) - len(studies.superseded(trials)) >= ctx.spec.search.n_trials:
        return None
    with warnings.catch_warnings():
        # ask() warns that heartbeats are meant for optimize(); this loop beats for itself.
        warnings.simplefilter("ignore", UserWarning)
        trial = ctx.study.ask()
    return trial, ctx.storage.get_trial_id_from_study_id_trial_number(ctx.study_id, trial.number)


def pop_waiting(
    storage: optuna.storages.BaseStorage,
    study_id: int,
    group_of: Callable[[dict[str, Any]], str | None] | None = None,
) -> int | None:
    """Mark the first WAITING trial RUNNING and return its id; None if none is left. The
    storage changes the state only if it is still WAITING, in one transaction (see
    storage.py for what that takes on SQLite), so each queued trial is popped once.

    `group_of(system_attrs)`: the group a queued trial would train in (None: it trains
    alone). A trial whose group another worker has begun to claim comes last: that worker is
    taking its siblings one by one, and two workers that start together would otherwise split
    the first group between them (2 runs and 1, each slower than 3 as one)."""
    waiting = storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.WAITING,))
    busy: set[str | None] = set()
    if group_of is not None:
        running = storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,))
        busy = {group_of(t.system_attrs) for t in running} - {None}
    later = []
    for frozen in waiting:
        group = group_of(frozen.system_attrs) if group_of is not None else None
        if group is not None and group in busy:
            later.append(frozen)
            continue
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, frozen.number)
        if _take(storage, trial_id):
            return trial_id
        busy.add(group)  # another worker took it this instant, and is claiming its siblings
    for frozen in later:
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, frozen.number)
        if _take(storage, trial_id):
            return trial_id
    return None


def _take(storage: optuna.storages.BaseStorage, trial_id: int) -> bool:
    """Mark a WAITING trial RUNNING; False if another worker took it first."""
    # Beat before claiming: a trial requeued by Ctrl-C still has its old heartbeat, and
    # another worker must not take it for dead in the instant after this claim.
    if storage.get_heartbeat_interval() is not None:  # type: ignore[attr-defined]
        storage.record_heartbeat(trial_id)  # type: ignore[attr-defined]
    try:
        return storage.set_trial_state_values(trial_id, TrialState.RUNNING)
    except optuna.exceptions.UpdateFinishedTrialError:
        return False


# At most this many trials train as one group (a grid's seeds of one point, in practice).
GROUP_MAX = 8


def claim_siblings(ctx: WorkerContext, trial_id: int) -> list[tuple[optuna.Trial, int]]:
    """Queued grid points that differ from the claimed trial only in their seed, learning rate
    or weight decay (dfl/training/fused.py: PER_RUN_KEYS), claimed too when training them as
    one pays for their model (`fuse_pays`); they then train as one group, each still its own
    trial."""
    if ctx.spec.grid is None:
        return []
    shape = _fusable_shape(ctx, ctx.storage.get_trial(trial_id).system_attrs, check_pays=True)
    if shape is None:
        return []
    siblings = []
    waiting = (TrialState.WAITING,)
    for frozen in ctx.storage.get_all_trials(ctx.study_id, deepcopy=False, states=waiting):
        if len(siblings) + 1 >= GROUP_MAX:
            break
        if _fusable_shape(ctx, frozen.system_attrs) != shape:
            continue
        other = ctx.storage.get_trial_id_from_study_id_trial_number(ctx.study_id, frozen.number)
        if _take(ctx.storage, other):
            siblings.append((optuna.trial.Trial(ctx.study, other), other))
    return siblings


def _fusable_shape(
    ctx: WorkerContext, system_attrs: dict[str, Any], check_pays: bool = False
) -> str | None:
    """What a queued grid point trains, but for PER_RUN_KEYS (None when it cannot join a group):
    its run's config and the epoch it pauses at."""
    fixed = system_attrs.get("fixed_params")
    grid = ctx.spec.grid
    if not fixed or grid is None or set(fixed) != set(grid):
        return None
    key = (json.dumps(fixed, sort_keys=True), check_pays)
    if key not in ctx.shapes:  # asked of every queued trial at every claim: build each once
        ctx.shapes[key] = _shape_of(ctx, fixed, grid, check_pays)
    return ctx.shapes[key]


def _shape_of(
    ctx: WorkerContext, fixed: dict[str, Any], grid: dict[str, Any], check_pays: bool
) -> str | None:
    from dfl.training.fused import fusing_pays, step_shape

    try:
        params = {key: decode(value, grid[key]) for key, value in fixed.items()}
        plan = run_plan(ctx.spec, params, ctx.reuse_epochs)
        cfg = plan.config
        if check_pays and not fusing_pays(cfg):
            return None
    except DflError:
        return None  # the trial itself says what is wrong when it runs
    return json.dumps([step_shape(cfg), plan.until_epoch])


def _count(ctx: WorkerContext, states: tuple[TrialState, ...]) -> int:
    return len(ctx.storage.get_all_trials(ctx.study_id, deepcopy=False, states=states))


def _fail_stale_trials(study: optuna.Study) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def _describe(outcome: TrialOutcome, spec: SweepSpec) -> str:
    from dfl.sweep.spec import format_params

    what = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed"}
    line = f"trial {outcome.number} {what.get(outcome.state, outcome.state.name.lower())}"
    if outcome.value is not None:
        line += f": {spec.metric} {outcome.value:.6g}"
    line += f"  ({format_params(outcome.params)})"
    if outcome.reason:
        line += f"  {outcome.reason}"
    return line


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (a scheduler, `dfl sweep` stopping its workers) ends the worker like Ctrl-C: its
    trial goes back in the queue with its checkpoints."""

    def interrupt(signum: int, frame: Any) -> None:
        # once: a killed launcher's SIGTERM comes several times, and a second one would cut
        # the trial's requeue short
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        note_sigterm()
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
