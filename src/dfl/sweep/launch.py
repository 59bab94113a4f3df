"""`dfl sweep SPEC`: check every trial, create (or continue) the study, run N local workers,
show progress. Running the same command again continues: finished trials are kept, a trial
cut off mid-run is requeued and resumes from its checkpoint.

Local workers are processes (`python -m dfl.sweep worker ...`, the same loop `dfl worker`
runs on another machine), each with cores // N intra-op threads so workers x threads = cores;
how many, and how they are started and stopped, is dfl/runtime/local_workers.py's, shared with an
experiment's runs side by side. Worker output goes to SWEEP_DIR/workers/worker-I.log; this
process only watches the study and shows one line per finished trial and a bar.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from pathlib import Path
from typing import Any, TextIO

import optuna
from optuna.trial import TrialState
from tqdm.auto import tqdm

from dfl.errors import ConfigError, DflError, option, rerun
from dfl.runtime import local_workers
from dfl.sweep import study as studies
from dfl.sweep.spec import SweepSpec, check_trials, format_params, load_spec, run_plan
from dfl.sweep.status import (
    STATE_NAMES,
    SweepStatus,
    format_trial_params,
    reason,
    sweep_status,
)
from dfl.sweep.storage import describe_url, open_storage, storage_url
from dfl.sweep.trial import file_lock, run_dir_name
from dfl.training.run_dir import CONFIG

POLL_S = 1.0  # how often the progress display reads the study


def default_workers(spec: SweepSpec, cores: int, reuse_epochs: int | None) -> int:
    """The local workers when --workers is not given: dfl/runtime/local_workers.py's policy (one
    single-threaded worker per core on CPU, one on a GPU machine, never more than runs)."""
    import torch

    device = spec.trial_config({}).device
    on_gpu = device in ("cuda", "mps") or (
        device == "auto" and (torch.cuda.is_available() or torch.backends.mps.is_available())
    )
    return local_workers.default_workers(count_runs(spec, reuse_epochs), on_gpu=on_gpu, cores=cores)


def count_runs(spec: SweepSpec, reuse_epochs: int | None) -> int:
    """Training runs the sweep needs: its trials, less the points read off longer runs."""
    if spec.grid is None:
        return spec.n_trials
    return len({run_dir_name(run_plan(spec, p, reuse_epochs).params) for p in spec.grid_points()})


def check_counts(workers: int | None, threads: int | None) -> None:
    """A sweep's worker processes and their threads (None: the default), checked before
    anything is created."""
    from dfl.config import threads_problem

    if threads is not None and (problem := threads_problem(threads)):
        raise DflError(f"{option('threads')} {problem}")
    local_workers.check_workers(workers, "workers")


def run_sweep(
    spec: SweepSpec | str | Path,
    *,
    workers: int | None = None,
    storage: str | None = None,
    out: str | Path | None = None,
    threads: int | None = None,
    retry_failed: bool = False,
    progress: TextIO | None = None,
) -> SweepStatus:
    """Run (or continue) the sweep `spec` (a validated spec, or a spec file) with `workers`
    local worker processes of `threads` intra-op threads each (default: cores // workers);
    `retry_failed` queues the failed trials again first. Returns the sweep's status once the
    workers stop."""
    # sys.stderr as it is now, not as it was at import (a notebook or a test may replace it)
    progress = progress or sys.stderr
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    check_counts(workers, threads)
    if not isinstance(spec, SweepSpec):
        spec = load_spec(spec)
    reuse = check_trials(spec)
    sweep_dir = Path(out) if out is not None else Path("sweeps") / spec.name
    for holds, what in ((CONFIG, "a training run's"), ("reproduce.json", "a reproduction's")):
        if (sweep_dir / holds).is_file():  # its study.db, trials and logs would mix with it
            raise ConfigError(
                f"{sweep_dir} is {what} directory (it holds {holds}): give the sweep another "
                f"{option('out')}"
            )
    url = storage_url(storage, sweep_dir)
    store = open_storage(url, log=lambda line: tqdm.write(line, file=progress))
    # Two `dfl sweep` commands started together on one new study must not both queue the
    # grid: creating and queueing happen under a lock in the sweep's directory.
    with file_lock(sweep_dir / "create.lock"):
        others = [s.study_name for s in store.get_all_studies() if s.study_name != spec.name]
        if storage is None and others:  # its trials' run directories would meet theirs
            raise ConfigError(
                f"{sweep_dir} holds sweep '{others[0]}': give sweep '{spec.name}' its own "
                f"{option('out')}"
            )
        study = studies.create_or_load(spec, store, sweep_dir)
    if retry_failed and (again := studies.retry_failed(study)):
        print(f"queued {again} failed trial{'s' if again > 1 else ''} again", file=progress)
    cores = local_workers.available_cores()
    n = workers if workers is not None else default_workers(spec, cores, reuse)
    threads = threads or local_workers.threads_per_worker(n, cores)
    logs = sweep_dir / "workers"
    logs.mkdir(parents=True, exist_ok=True)
    monitor = Monitor(store, spec, progress)
    print(
        f"sweep {spec.name}: {spec.kind} of {spec.n_trials} trials, {n} worker(s) x {threads} "
        f"thread(s), study in {describe_url(url)}, logs in {logs}",
        file=progress,
    )
    _run_processes(spec, url, sweep_dir, n, threads, logs, monitor)
    monitor.close()
    status = current_status(store, spec)
    if not status.finished:
        raise DflError(
            f"sweep {spec.name} stopped with trials left ({_left(status)}); see {logs} and "
            f"{rerun()} to continue"
        )
    return status


def current_status(storage: optuna.storages.RDBStorage, spec: SweepSpec) -> SweepStatus:
    study = optuna.load_study(study_name=spec.name, storage=storage)
    return sweep_status(study, spec, describe_url(storage.url))


def dry_run(spec_path: str | Path, out: str | Path | None = None) -> str:
    """Check every trial and list what would run where, running nothing."""
    spec = load_spec(spec_path)
    reuse = check_trials(spec)
    sweep_dir = Path(out) if out is not None else Path("sweeps") / spec.name
    lines = [
        f"sweep {spec.name}: {spec.kind} of {spec.n_trials} trials, {spec.direction} {spec.metric}"
    ]
    if spec.grid is not None:
        for point in spec.grid_points():
            plan = run_plan(spec, point, reuse)
            where = sweep_dir / "trials" / run_dir_name(plan.params)
            note = f" (epoch {plan.until_epoch} of its curve)" if plan.until_epoch else ""
            lines.append(f"  {format_params(point)}  -> {where}{note}")
        if reuse:
            runs = count_runs(spec, reuse)
            lines.append(
                f"  epoch reuse: {runs} runs for {spec.n_trials} trials, each to "
                f"{reuse} epoch{'' if reuse == 1 else 's'}"
            )
    else:
        for key, dist in spec.search.space.items():  # type: ignore[union-attr]
            lines.append(f"  {key}: {dist.model_dump(exclude_none=True, exclude_defaults=True)}")
    lines.append("every trial config is valid")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Workers


def _run_processes(
    spec: SweepSpec,
    url: str,
    sweep_dir: Path,
    n: int,
    threads: int,
    logs: Path,
    monitor: Monitor,
) -> None:
    """Run `n` worker commands until they end; one that fails leaves the others working (the
    study is still there for them), while Ctrl-C or SIGTERM stops them all: they requeue their
    trials (runtime/local_workers.py's WorkerGroup: the same stop as an experiment's workers)."""
    with local_workers.WorkerGroup() as group:
        for i in range(n):
            command = [
                sys.executable, "-m", "dfl.sweep", "worker", spec.name, "--storage", url,
                "--out", str(sweep_dir), "--threads", str(threads), "--index", str(i),
            ]  # fmt: skip
            group.start_command(command, threads=threads, log=logs / f"worker-{i}.log")
        while group.running():
            monitor.poll()
            group.wait(POLL_S)
        monitor.poll()
    for i, p in enumerate(group.workers):
        if p.returncode not in (0, None):
            log = logs / f"worker-{i}.log"
            monitor.say(f"worker {i} exited with code {p.returncode}: {_why(log)}")


def _why(log: Path) -> str:
    """A worker's own one-line error from its log, or where to look."""
    with contextlib.suppress(OSError):
        said = [ln for ln in log.read_text(errors="replace").splitlines() if ": error: " in ln]
        if said and said[-1].startswith("dfl worker: error: "):
            return f"{said[-1].removeprefix('dfl worker: error: ')} (log: {log})"
    return f"see {log}"


# ---------------------------------------------------------------------------------------------
# Progress


class Monitor:
    """Reads the study every second: a line per finished trial, a bar with the best so far."""

    def __init__(self, storage: optuna.storages.RDBStorage, spec: SweepSpec, out: TextIO):
        self.spec, self.out = spec, out
        # Through a Study: Optuna caches finished trials, so each poll reads only the others.
        self.study = optuna.load_study(study_name=spec.name, storage=storage)
        self.seen: set[int] = {
            t.number for t in self._trials() if t.state.is_finished()
        }  # reported before this run
        self.bar = tqdm(
            total=spec.n_trials,
            initial=len(self.seen),
            unit="trial",
            desc=spec.name,
            file=out,
            disable=None,  # off when not a terminal: the lines are enough
            leave=True,
        )
        self.best: float | None = None

    def _trials(self) -> list[Any]:
        return self.study.get_trials(deepcopy=False)

    def say(self, line: str) -> None:
        self.bar.write(line, file=self.out)

    def poll(self) -> None:
        trials = self._trials()
        retried = studies.superseded(trials)
        for t in trials:
            if not t.state.is_finished() or t.number in self.seen:
                continue
            self.seen.add(t.number)
            if t.number in retried or (
                t.state == TrialState.FAIL and not t.user_attrs.get("reason")
            ):
                self.say(f"trial {t.number}: its worker stopped responding; requeued")
                continue
            self.bar.update(1)
            line = f"trial {t.number} {STATE_NAMES[t.state]}"
            if t.value is not None:
                line += f": {self.spec.metric} {t.value:.6g}"
                better = self.best is None or (
                    t.value < self.best
                    if self.spec.direction == "minimize"
                    else t.value > self.best
                )
                self.best = t.value if better else self.best
            line += f"  ({format_trial_params(t)})"
            if t.state != TrialState.COMPLETE:
                line += f"  {reason(t)}"
            elif t.user_attrs.get("epochs_from"):
                line += "  read off a longer run"
            self.say(line)
        running = sum(t.state == TrialState.RUNNING for t in trials)
        postfix = {"running": running}
        if self.best is not None:
            postfix[f"best {self.spec.metric}"] = f"{self.best:.5g}"
        self.bar.set_postfix(postfix, refresh=True)

    def watch(self, stop: threading.Event) -> None:
        while not stop.wait(POLL_S):
            self.poll()
        self.poll()

    def close(self) -> None:
        self.bar.close()


def _left(status: SweepStatus) -> str:
    c = status.counts
    parts = [f"{c[k]} {k}" for k in ("running", "waiting") if c[k]]
    if c["to_start"]:
        parts.append(f"{c['to_start']} not started")
    return ", ".join(parts)
