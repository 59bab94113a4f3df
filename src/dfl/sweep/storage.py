"""Where a sweep's study lives: an SQLite file in the sweep directory by default (nothing to
start), or any SQLAlchemy URL Optuna accepts (PostgreSQL for workers on several machines).

Two things about SQLite under concurrent workers, both measured here, not assumed:
- Python's sqlite3 driver opens a transaction only at the first write, so Optuna's "read the
  trial, then mark it RUNNING if it is still WAITING" is two separate steps: with 4 processes
  popping 300 queued trials, 345 pops succeeded. Starting every transaction with
  `BEGIN IMMEDIATE` (the write lock first) makes the read and the write one step: 300 pops.
- A deferred transaction that reads, then writes, fails at once with "database is locked" when
  another writer got in between, whatever the busy timeout. `BEGIN IMMEDIATE` waits instead,
  up to the timeout; WAL lets readers go on while one worker writes.
PostgreSQL needs neither: Optuna reads the trial `FOR UPDATE`.

The two waits here (`_use_wal`, `open_storage`) are hand-written loops rather than a retry
library such as tenacity: each is a few lines that retry one named error ("locked", tables
created twice) until a deadline or a count, and a decorator would say no more while adding
a dependency (run_lock's ATTEMPTS loop is a race re-check, not a retry with waits).
"""

from __future__ import annotations

import contextlib
import importlib.util
import random
import sqlite3
import time
import warnings
from pathlib import Path
from typing import Any

import optuna
from sqlalchemy import event

from dfl.errors import DflError

SQLITE_BUSY_TIMEOUT_S = 120  # how long a worker waits for another's write before giving up
MAX_RETRIES = 3  # requeues of a trial whose worker died; a trial that kills workers stops
OPEN_ATTEMPTS = 4  # tries to open a storage (see open_storage)


def storage_url(storage: str | None, sweep_dir: Path) -> str:
    """The study's URL: --storage as given (a bare path means an SQLite file), else
    `SWEEP_DIR/study.db`. `postgresql://` gets the driver that is installed."""
    if storage is None:
        return "sqlite:///" + str((sweep_dir / "study.db").resolve())
    if "://" not in storage:
        return "sqlite:///" + str(Path(storage).resolve())
    scheme, rest = storage.split("://", 1)
    if scheme in ("postgresql", "postgres"):
        # SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3; psycopg2 is what we install.
        has_v3 = importlib.util.find_spec("psycopg") is not None
        has_v2 = importlib.util.find_spec("psycopg2") is not None
        if not has_v3 and has_v2:
            return f"postgresql+psycopg2://{rest}"
        return f"postgresql://{rest}"
    return storage


def describe_url(url: str) -> str:
    """The URL without its password, for messages and logs."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


def _use_wal(path: Path) -> None:
    """Put the database in WAL mode (persistent: stored in the file), so workers read while
    one writes. The switch needs the file to itself, and SQLite answers "database is locked"
    at once, without its busy wait, while another process is opening the same new file (two
    sweeps started together): so wait a little and try again."""
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_S
    while True:
        try:
            with contextlib.closing(sqlite3.connect(path, timeout=SQLITE_BUSY_TIMEOUT_S)) as conn:
                conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise DflError(f"cannot open the sweep database {path}: {e}") from None
            time.sleep(0.05 + 0.1 * random.random())  # apart, not in step with the other
        except sqlite3.DatabaseError as e:  # "file is not a database": some other file
            raise DflError(
                f"--storage {path} is not an SQLite database ({e}); give the sweep's study.db "
                "or a path that does not exist yet"
            ) from None


def open_storage(
    url: str, *, heartbeat_interval: int | None = None, grace_period: int | None = None
) -> optuna.storages.RDBStorage:
    """An RDBStorage; with a heartbeat, a trial whose worker stopped beating for
    `grace_period` seconds is failed by the next worker that looks, and requeued."""
    is_sqlite = url.startswith("sqlite")
    engine_kwargs: dict[str, Any] = {}
    if is_sqlite:
        path = Path(url.removeprefix("sqlite:///"))
        path.parent.mkdir(parents=True, exist_ok=True)
        _use_wal(path)
        # isolation_level=None: the driver emits no BEGIN of its own; ours follows below.
        engine_kwargs["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_S, "isolation_level": None}
    else:
        engine_kwargs["pool_pre_ping"] = True  # a server restart costs a reconnect, not a worker
    heartbeat: dict[str, Any] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if heartbeat_interval is not None:
            heartbeat = {
                "heartbeat_interval": heartbeat_interval,
                "grace_period": grace_period,
                "heartbeat_stale_trial_callback": (
                    optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES)
                ),
            }
    for attempt in range(OPEN_ATTEMPTS):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                storage = optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, **heartbeat)
            break
        except ImportError as e:
            raise DflError(
                f"storage {describe_url(url)}: a database driver is missing ({e})"
            ) from None
        except Exception as e:  # sqlalchemy.exc.OperationalError and friends
            # Two processes opening a new storage at once both create its tables, and one is
            # told they "already exist": by the next try the other has finished.
            if attempt + 1 < OPEN_ATTEMPTS:
                time.sleep(0.2 * (attempt + 1))
                continue
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise DflError(f"cannot open study storage {describe_url(url)}: {first}") from None
    if is_sqlite:
        event.listen(storage.engine, "begin", _begin_immediate)
    return storage


def _begin_immediate(connection: Any) -> None:
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def study_id(storage: optuna.storages.RDBStorage, name: str) -> int:
    try:
        return storage.get_study_id_from_name(name)
    except KeyError:
        known = [s.study_name for s in storage.get_all_studies()]
        hint = f" (studies there: {', '.join(known)})" if known else " (it holds no study)"
        raise DflError(f"no study '{name}' in {describe_url(storage.url)}{hint}") from None
