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
imports nothing, so `dfl --help` and `python -m dfl.sweep` stay light.
"""
