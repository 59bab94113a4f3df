"""Sweeps: experiments as Optuna studies, run by any number of workers on any number of
machines, resumable, each trial a normal `dfl train` run directory.

    spec.py      the sweep spec (TOML): base config, grid or search space, metric; validation
    storage.py   the study's storage: SQLite by default (made safe for concurrent workers), or
                 any SQLAlchemy URL (PostgreSQL for many machines)
    study.py     create or continue the study; the grid's queue; sampler and pruner
    trial.py     one trial: its run directory (named by its parameters), heartbeat, records
    worker.py    the worker loop: claim, train, tell, until the study is done
    launch.py    `dfl sweep`: check, create, start N local workers, show progress
    status.py    `dfl sweep status`: counts, best so far, ETA
    commands.py  the CLI commands

Import from the modules (`from dfl.sweep.launch import run_sweep`): the package itself
imports nothing at import time, so `dfl --help` and `python -m dfl.sweep` stay light; `run`
below is `dfl.sweep.run` for Python users.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dfl.arguments import checked


@checked("dfl.sweep.run")
def run(
    spec: str | Path | dict[str, Any],
    *,
    out: str | Path | None = None,
    workers: int | None = None,
    storage: str | Path | None = None,
    threads: int | None = None,
    retry_failed: bool = False,
) -> Any:
    """Run or continue a sweep, as `dfl sweep SPEC` does: `spec` is a spec file (TOML) or the
    same as a dict (`{"name": ..., "metric": ..., "base": {...}, "grid": {...}}`); `out` is
    its directory (default `sweeps/NAME`), `storage` a database URL (default SQLite in `out`).
    Returns the sweep's status (`.trials`, `.best`); raises `ConfigError` for a bad spec, and
    `SweepFailed` (its `.status` the same) when no trial completed; a status with failed
    trials is returned (`dfl sweep` then exits 4, naming them)."""
    from dfl.sweep.launch import check_counts, run_sweep
    from dfl.sweep.spec import spec_from_dict
    from dfl.sweep.status import require_a_completed_trial

    check_counts(workers, threads)
    if isinstance(spec, dict):
        spec = spec_from_dict(spec)
    status = run_sweep(
        spec,
        workers=workers,
        storage=None if storage is None else str(storage),
        out=out,
        threads=threads,
        retry_failed=retry_failed,
    )
    return require_a_completed_trial(status)
