"""`dfl reproduce`: every lab experiment, faithful and corrected, then the report.

Re-running the same command resumes: an experiment whose result.json exists is reused, and
inside an unfinished experiment every finished training run is reused (runs resume from their
checkpoints). `dfl report RUN_DIR` rebuilds the report from saved results alone.

An experiment that fails (it raises anything but Ctrl-C or SIGTERM, or its side-by-side
process dies: killed, out of memory) does not stop the others: its result records the reason,
the report marks it failed, and once every selected experiment has run `reproduce` raises
`ExperimentsFailed` (exit code 4) naming the failed ones.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
import os
import platform
import sys
import threading
import time
import typing
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel
from tqdm.auto import tqdm

from dfl.config import TrainConfig
from dfl.data import load_dataset
from dfl.errors import ConfigError, ExperimentsFailed, one_line, option
from dfl.experiments import EXPERIMENTS
from dfl.experiments.context import Context
from dfl.experiments.engine import for_workers, in_worker
from dfl.experiments.experiment import (
    OlderRecord,
    Record,
    load_record,
    read_manifest,
    save_record,
)
from dfl.experiments.profiles import ALIASES, PROFILES, canonical
from dfl.experiments.registry import REGISTRY
from dfl.report.build import build_report
from dfl.runtime.atomic import atomic_write_json
from dfl.runtime.local_workers import available_cores, check_workers, run_in_workers
from dfl.runtime.run_lock import claim_run_dir
from dfl.training.run_dir import CONFIG, rebase_config
from dfl.training.trainer import resolve_device

# Seeds behind each mean ± std at most: every number is that many trainings, so a slip of the
# keyboard (1000, or 20 digits) would start days of work or build a plan that fills memory.
MAX_SEEDS = 100
PRECISIONS = typing.get_args(TrainConfig.model_fields["precision"].annotation)


def environment(device: str, precision: str, jobs: int = 1, at_once: int = 1) -> dict[str, Any]:
    import numpy
    import optuna

    return {
        "dfl": importlib.import_module("dfl").__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "optuna": optuna.__version__,
        "device": device,
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "precision": precision,
        "jobs": jobs,
        "experiments_at_once": at_once,
        **({"gpu": torch.cuda.get_device_name(device)} if device.startswith("cuda") else {}),
    }


def _manifest(
    out: Path,
    profile: str,
    dataset: str,
    selected: list[str],
    device: str,
    precision: str,
    seeds: int | None,
    jobs: int,
    at_once: int,
) -> dict:
    """This reproduction's description; refuses an --out made with another profile, data,
    precision or number of seeds (one report, one way of running). `seeds` None: the
    directory's, or else the profile's."""
    old: dict[str, Any] = read_manifest(out) or {}
    had = old.get("seeds")  # None in a reproduce.json that does not record them
    if old:
        was = (old["profile"], old["dataset"], old.get("environment", {}).get("precision", "fp32"))
        made_by = canonical(was[0])
        same = made_by == profile or (made_by, profile) in UPGRADES
        if not same or was[1:] != (dataset, precision):
            raise ConfigError(
                f"{out} holds a reproduction with profile {was[0]} on {was[1]} in precision "
                f"{was[2]}; use another {option('out')} for profile {profile} on {dataset} in "
                f"{precision}"
            )
    if seeds is not None and had is not None and seeds != had:  # its finished experiments'
        raise ConfigError(
            f"{out} holds a reproduction over {had} seed{'s' * (had != 1)}; leave out "
            f"{option('seeds')} to continue it, or use another {option('out')} for {seeds}"
        )
    return {
        "profile": profile,
        "dataset": dataset,
        "selected": selected,
        "seeds": seeds or had or PROFILES[profile].seeds,
        "environment": environment(device, precision, jobs, at_once),
        "started": time.time(),
        # on the clock, every invocation in this directory so far (experiments overlap, so
        # their own wall times do not add up to it)
        "wall_s": old.get("wall_s", 0.0),
        "at": str(out),  # where it is: a later invocation elsewhere finds it was moved
    }


def _follow_move(out: Path, was: str | None, said_as: str = "dfl reproduce") -> None:
    """A reproduction directory moved from `was` to `out`: its runs' configs that name paths
    inside the old place (init_from) name the new one, so they resume as the same runs."""
    if not was or was == str(out):
        return
    configs = sorted(out.rglob(CONFIG))
    rebased = [c.parent for c in configs if rebase_config(c.parent, was, str(out))]
    if rebased:
        print(
            f"{said_as}: {out} was at {was}; {len(rebased)} run config(s) now name the new place",
            file=sys.stderr,
        )


# A profile that runs everything another does, with the same settings, may continue that
# profile's directory: `dfl reproduce --profile every --out runs/lab` trains only what lab left.
UPGRADES = {("lab", "every")}


def reproduce(
    out: Path,
    profile: str = "lab",
    dataset: str = "mnist",
    data_dir: str | Path | None = None,
    device: str = "auto",
    seeds: int | None = None,
    only: list[str] | None = None,
    precision: str = "auto",
    jobs: int = 1,
    at_once: int | None = None,
    said_as: str = "dfl reproduce",
) -> Path:
    # `said_as` prefixes the progress lines: the command's name for the CLI, "dfl.lab" for
    # dfl.lab.run from Python (where "dfl reproduce:" names a command nobody typed).
    # Absolute: results and configs name runs by path, and `dfl report` may run from elsewhere
    # (a moved directory's paths are renamed when read: experiment.load_record, _follow_move)
    out = Path(out).absolute()
    selected = only or EXPERIMENTS
    unknown = sorted(set(selected) - set(EXPERIMENTS))
    if unknown:
        raise ConfigError(
            f"--only: unknown experiment(s) {', '.join(unknown)} "
            f"(choose from {','.join(EXPERIMENTS)})"
        )
    check_workers(jobs, "jobs")  # the sweeps' workers too: at most 4 a core
    if at_once is not None and at_once < 1:
        raise ConfigError(f"--experiments-at-once must be at least 1 (got {at_once})")
    if profile not in PROFILES and profile not in ALIASES:
        raise ConfigError(
            f"{option('profile')} must be one of {', '.join(PROFILES)}, not '{profile}'"
        )
    if precision not in PRECISIONS:  # else it would be written into reproduce.json
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if seeds is not None and not (isinstance(seeds, int) and 1 <= seeds <= MAX_SEEDS):
        raise ConfigError(f"seeds must be a whole number from 1 to {MAX_SEEDS} (got {seeds!r})")
    profile = canonical(profile)
    resolved = str(resolve_device(device))
    at_once = min(at_once or default_at_once(), len(selected))
    if (out / CONFIG).is_file() and not (out / "reproduce.json").exists():
        # A training run's directory: its config.toml, status and checkpoints would sit among
        # the experiments'. Other files are left alone beside them (the notebooks train the
        # user's own runs inside a reproduction's directory).
        raise ConfigError(f"{out} is a training run's directory (it holds {CONFIG}): name another")
    if clash := _not_ours(out):
        raise ConfigError(
            f"{out} holds {', '.join(clash)} but no reproduce.json: a reproduction would "
            f"overwrite or mix with {'it' if len(clash) == 1 else 'them'}; name another "
            f"{option('out')}"
        )
    # One reproduction at a time in a directory: two would train the same runs and write one
    # reproduce.json each (a report may then show neither's failures). A refused start, or
    # one that fails before reproduce.json is written, leaves the directory as it found it.
    with claim_run_dir(out, "reproducing it") as claim:
        was = (read_manifest(out) or {}).get("at")
        manifest = _manifest(
            out, profile, dataset, selected, resolved, precision, seeds, jobs, at_once
        )
        _follow_move(out, was, said_as)
        data = load_dataset(dataset, data_dir)
        manifest["data"] = dataset_arg = str(data.path) if data_dir else dataset
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / "reproduce.json", manifest)
        claim.started = True  # the reproduction's own files from here: kept whatever happens
        ctx = Context(
            out, profile, data, dataset_arg, device, manifest["seeds"], precision, jobs=jobs
        )

        with _OnTheClock(out / "reproduce.json", manifest):
            records = _run_experiments(ctx, selected, manifest["environment"], at_once, said_as)
        failed = {n: r.reason for n, r in records.items() if r.status == "failed"}
        report = build_report(out)
        if failed:
            raise ExperimentsFailed(failed, report)
        return report


# The files a reproduction writes at its directory's top level, and a sweep's database: in a
# directory that is no reproduction (no reproduce.json), they are someone else's. (An
# experiment's folder may be there first: a rerun's own, or a test's prepared state.)
WRITES = ("report.html", "report.md", "results.json", "figures", "study.db")


def _not_ours(out: Path) -> list[str]:
    """The files and folders in `out` that a new reproduction would overwrite or mix with."""
    if (out / "reproduce.json").exists() or not out.is_dir():
        return []
    return [name for name in WRITES if (out / name).exists()]


CLOCK_EVERY_S = 10.0  # how much of its time a killed invocation can lose from the report's


class _OnTheClock:
    """Keeps reproduce.json's `wall_s` (the time on the clock over every invocation) current
    while the block runs: every CLOCK_EVERY_S from a thread, and at its end, however it ends.
    A SIGKILLed invocation, whose `finally` never runs, then still counts but its last seconds."""

    def __init__(self, path: Path, manifest: dict[str, Any]) -> None:
        self.path, self.manifest = path, manifest
        self.before, self.t0 = manifest["wall_s"], time.perf_counter()
        self.done = threading.Event()
        self.lock = threading.Lock()  # one writer of the file at a time
        self.thread = threading.Thread(target=self._tick, daemon=True)

    def _write(self) -> None:
        with self.lock:
            self.manifest["wall_s"] = self.before + time.perf_counter() - self.t0
            atomic_write_json(self.path, self.manifest)

    def _tick(self) -> None:
        while not self.done.wait(CLOCK_EVERY_S):
            with contextlib.suppress(OSError):  # a full disk: the final write says so
                self._write()

    def __enter__(self) -> _OnTheClock:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:  # a Ctrl-C's part counts too
        self.done.set()
        self.thread.join()
        self._write()


def _run_experiments(
    ctx: Context,
    selected: list[str],
    env: dict[str, Any],
    at_once: int,
    said_as: str = "dfl reproduce",
) -> dict[str, Record]:
    """Run the selected experiments that have not finished yet; their records by name."""
    out, profile = ctx.out, ctx.profile
    todo: dict[str, Record | None] = {}  # the experiments left to run, with their old records
    bar = tqdm(total=len(selected), desc="reproduce", unit="experiment", disable=None)
    progress = Progress(PROFILES[profile], selected, bar.disable or at_once > 1, at_once, said_as)
    with bar:
        for name in selected:
            existing = _existing(out, name)
            if _finished(existing, profile):
                progress.kept(name)
                bar.update()
            else:
                todo[name] = existing
        if at_once > 1 and len(todo) > 1:
            records = _side_by_side(ctx, todo, env, at_once, progress, bar)
        else:
            records = {}
            for name, existing in todo.items():
                progress.start(name)
                records[name] = _run_one(ctx, name, existing, env)
                progress.end(name, records[name])
                bar.update()
    return records


def default_profile(device: str) -> str:
    """What `dfl reproduce` runs when no profile is named: on a CUDA device every lab number and
    every stage at its full recipe fit minutes (benchmarks/GPU.md); on a CPU the lab profile."""
    return "complete" if resolve_device(device).type == "cuda" else "lab"


def default_at_once() -> int:
    """Two experiments at once on a machine with two or more cores: each of them trains with
    the cores the other leaves (dfl/runtime/core_share.py), so the small models' runs, which use a
    second thread poorly, keep both cores busy."""
    return min(2, available_cores())


def _side_by_side(
    ctx: Context,
    todo: dict[str, Record | None],
    env: dict[str, Any],
    at_once: int,
    progress: Progress,
    bar: tqdm,
) -> dict[str, Record]:
    """The experiments in `at_once` spawned processes, the longest first (so that the last
    one to start is a short one); their trainings share the cores by themselves. Their own
    progress bars are off (two processes' bars would garble a terminal): the lines say when
    each starts and ends instead."""
    longest_first = sorted(todo, key=lambda n: -progress.estimate[n])

    def ended(name: str, record: Record) -> None:
        progress.end(name, record)
        bar.update()

    def failed(name: str, reason: str) -> Record:
        # Its process could not save the record (it died, or could not set up): saved here.
        seconds = time.perf_counter() - progress.started[name]
        return _save(ctx, name, todo[name], env, None, reason, seconds)

    return run_in_workers(
        _run_in_lane,
        {n: (n, todo[n], env) for n in longest_first},
        workers=at_once,
        pin=False,
        initializer=_start_lane,
        initargs=(dataclasses.replace(ctx, data=for_workers(ctx.data)),),
        on_start=progress.start,
        on_result=ended,
        on_failure=failed,
    )


_LANE: Context | None = None  # a side-by-side process's context


def _start_lane(ctx: Context) -> None:
    global _LANE
    sys.stderr = _NotATerminal(sys.stderr)  # no bars: see _side_by_side
    _LANE = dataclasses.replace(ctx, data=in_worker(ctx.data))


def _run_in_lane(name: str, existing: Record | None, env: dict[str, Any]) -> Record:
    return _run_one(_LANE, name, existing, env)


class _NotATerminal:
    """A stream as a log file sees it: progress bars (tqdm's disable=None) stay off."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def isatty(self) -> bool:
        return False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _existing(out: Path, name: str) -> Record | None:
    """The experiment's saved record; one an older dfl wrote is run again (its finished
    trainings are reused, so only the result is rebuilt)."""
    try:
        return load_record(out, name)
    except OlderRecord:
        return None


def _run_one(ctx: Context, name: str, existing: Record | None, env: dict[str, Any]) -> Record:
    """Run one experiment and save its record; an exception is recorded as its failure."""
    t0 = time.perf_counter()
    try:
        result, reason = REGISTRY[name].execute(ctx), ""
    except Exception as e:  # one experiment failing (a bug, out of memory) must not lose the others
        result, reason = None, one_line(e)
    except BaseException:  # Ctrl-C or SIGTERM: the next invocation goes on, and counts this
        earlier = _spent(ctx.out, name) + _upgraded_wall(existing)
        _record_spent(ctx.out, name, earlier + time.perf_counter() - t0)
        raise
    return _save(ctx, name, existing, env, result, reason, time.perf_counter() - t0)


def _save(
    ctx: Context,
    name: str,
    existing: Record | None,
    env: dict[str, Any],
    result: BaseModel | None,
    reason: str,
    seconds: float,
) -> Record:
    """Save how the experiment ended: its result, or (None) its failure and the reason, after
    `seconds` in this invocation."""
    out = ctx.out
    wall = _spent(out, name) + _upgraded_wall(existing) + seconds
    if result is not None:
        _spent_path(out, name).unlink(missing_ok=True)  # counted in wall_s now
    else:
        _record_spent(out, name, wall)
    record = Record(
        experiment=name,
        profile=ctx.profile,
        status="completed" if result is not None else "failed",
        reason=reason,
        wall_s=wall,  # every invocation's part, when it took several to finish
        environment=env,
        result=None if result is None else result.model_dump(mode="json"),
    )
    save_record(out, record)
    return record


def _finished(record: Record | None, profile: str) -> bool:
    """A completed result of this profile (one of a profile this one upgrades is rerun: its
    finished runs are reused, the runs it left out are trained)."""
    if record is None or record.status != "completed":
        return False
    return (canonical(record.profile), profile) not in UPGRADES


def _upgraded_wall(record: Record | None) -> float:
    """The seconds a completed result of a profile this one upgrades took: its runs are reused,
    so they count in this profile's time."""
    return record.wall_s if record is not None and record.status == "completed" else 0.0


SLACK_S = 10.0  # how far past its measured time a running experiment may be and still be on time


class Progress:
    """One line on stderr when each experiment starts and ends, with the elapsed time and an
    estimate of the time left for the whole profile, when stderr is not a terminal (a log, CI,
    nohup) or when experiments run side by side; otherwise the progress bars say it."""

    def __init__(
        self,
        profile: Any,
        selected: list[str],
        enabled: bool,
        at_once: int,
        said_as: str = "dfl reproduce",
    ) -> None:
        self.said_as = said_as  # each line's prefix: "dfl reproduce", or "dfl.lab" from Python
        # Seconds per experiment as measured (profile_costs.json); a profile never measured
        # says no time left rather than a guess
        self.measured = bool(profile.estimate_s)
        self.estimate = {n: profile.estimate_s.get(n, 60.0) for n in selected}
        self.left = list(selected)
        self.enabled, self.at_once, self.t0 = enabled, at_once, time.perf_counter()
        self.started: dict[str, float] = {}  # experiments running now: when they started
        self.spent = self.expected = 0.0  # this invocation's experiments: actual, estimated

    def kept(self, name: str) -> None:
        self.left.remove(name)
        self._say(f"{name}: finished earlier, kept")

    def start(self, name: str) -> None:
        self.started[name] = time.perf_counter()
        self._say(f"{name}: started")

    def end(self, name: str, record: Record) -> None:
        seconds = time.perf_counter() - self.started.pop(name)
        self.left.remove(name)
        if seconds > 0.2 * self.estimate[name]:  # one whose runs were reused says nothing
            self.spent, self.expected = self.spent + seconds, self.expected + self.estimate[name]
        if record.status == "failed":
            tqdm.write(f"dfl: {name} failed: {record.reason}", file=sys.stderr)
        self._say(f"{name}: {record.status} in {_minutes(seconds)}")

    def _scale(self) -> float:
        """How this invocation's experiments ran against their measured times (a slower
        machine, another job sharing the cores)."""
        return min(max(self.spent / self.expected, 0.5), 3.0) if self.expected > 1 else 1.0

    def overdue(self) -> list[str]:
        """The running experiments past their (scaled) measured time, by more than the slack:
        what is left of them cannot be told. The slack keeps one measured at a second or less
        (conv, attention) from being late the moment it starts."""
        now, scale = time.perf_counter(), self._scale()
        return [n for n, t in self.started.items() if now - t > scale * self.estimate[n] + SLACK_S]

    def time_left(self) -> float:
        """The measured estimates of the experiments left (less what the running ones have
        done), shared among the processes, scaled by how this invocation's experiments ran
        against theirs."""
        scale = self._scale()
        now = time.perf_counter()
        left = [
            max(self.estimate[n] - (now - self.started[n]), 0.0)
            if n in self.started
            else self.estimate[n]
            for n in self.left
        ]
        return scale * max(max(left, default=0.0), sum(left) / self.at_once)

    def _say(self, what: str) -> None:
        if self.enabled:
            elapsed = _minutes(time.perf_counter() - self.t0)
            line = f"{self.said_as}: {what} (elapsed {elapsed}, {self._left_text()})\n"
            tqdm.write(line, file=sys.stderr, end="")  # one write with its newline: see `say`

    def _left_text(self) -> str:
        if not self.left:
            return "done"
        if not self.measured:
            return "no measured time to estimate what is left"
        if late := self.overdue():
            their = "its" if len(late) == 1 else "their"
            return f"{' and '.join(late)} past {their} measured time: no estimate of what is left"
        return f"about {_minutes(self.time_left())} left"


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


def _spent_path(out: Path, name: str) -> Path:
    return out / name / "spent.json"


def _spent(out: Path, name: str) -> float:
    """Seconds earlier, unfinished invocations spent on this experiment (a killed one's are
    lost: at least this many)."""
    path = _spent_path(out, name)
    try:
        seconds = json.loads(path.read_text())["seconds"] if path.exists() else 0.0
    except (ValueError, TypeError, KeyError, UnicodeDecodeError):  # damaged, hand-edited
        return 0.0  # a lower bound of the time spent, as for a killed invocation's
    return float(seconds) if isinstance(seconds, int | float) else 0.0


def _record_spent(out: Path, name: str, seconds: float) -> None:
    path = _spent_path(out, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, {"seconds": seconds})
