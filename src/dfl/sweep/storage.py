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

A database server can go away for a while (a restart, a failover, a network cut): workers and
the launcher wait it out, up to OUTAGE_LIMIT_S (`ReconnectingStorage`), and then end on one
line; the trials they leave RUNNING are requeued by the heartbeat mechanism, as a killed
worker's are. An SQLite file has no server to lose; a write to it that finds no room ends in
one line too (`SqliteStorage`).

The waits here (`_use_wal`, `open_storage`, `ReconnectingStorage`) are hand-written loops
rather than a retry library such as tenacity: each is a few lines that retry one named kind of
error ("locked", tables created twice, a lost connection) until a deadline or a count, and a
decorator would say no more while adding a dependency (run_lock's ATTEMPTS loop is a race
re-check, not a retry with waits).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import random
import sqlite3
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import RDBStorage
from sqlalchemy import event, exc

from dfl.errors import DflError, DiskFull, option, rerun
from dfl.runtime.interrupts import say

SQLITE_BUSY_TIMEOUT_S = 120  # how long a worker waits for another's write before giving up
MAX_RETRIES = 3  # requeues of a trial whose worker died; a trial that kills workers stops
OPEN_ATTEMPTS = 4  # tries to open a storage (see open_storage)
OUTAGE_LIMIT_S = 60.0  # how long a database server may be away before a sweep gives up
BACKOFF_S = (0.1, 2.0)  # the first and the longest wait between tries while it is away
CONNECT_TIMEOUT_S = 10  # a server that does not answer at all costs a try this much, no more


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
                raise DflError(
                    f"cannot open the sweep database {path}: {e}{_sqlite_hint(path)}"
                ) from None
            time.sleep(0.05 + 0.1 * random.random())  # apart, not in step with the other
        except sqlite3.DatabaseError as e:  # "file is not a database": some other file
            raise DflError(
                f"the sweep database {path} is not an SQLite database ({e}); give "
                f"{option('storage')} a sweep's study.db or a path that does not exist yet, or "
                f"{option('out')} another directory"
            ) from None


def open_storage(
    url: str,
    *,
    heartbeat_interval: int | None = None,
    grace_period: int | None = None,
    log: Callable[[str], None] | None = None,
) -> RDBStorage:
    """An RDBStorage; with a heartbeat, a trial whose worker stopped beating for
    `grace_period` seconds is failed by the next worker that looks, and requeued. A server
    database's storage rides out the server's outages (`ReconnectingStorage`), saying so on
    `log` (default: stderr). One that cannot be reached now is an error at once: a sweep
    starting against a database that is down, or a mistyped URL, should not wait a minute."""
    is_sqlite = url.startswith("sqlite")
    engine_kwargs: dict[str, Any] = {}
    if is_sqlite:
        path = Path(url.removeprefix("sqlite:///"))
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:  # a file in the path, a read-only or virtual file system
            raise DflError(
                f"the sweep database's directory {path.parent} cannot be made ({e.strerror}): "
                f"give {option('out')} or {option('storage')} a place that can"
            ) from None
        _use_wal(path)
        # isolation_level=None: the driver emits no BEGIN of its own; ours follows below.
        engine_kwargs["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_S, "isolation_level": None}
    else:
        engine_kwargs["pool_pre_ping"] = True  # a connection the server dropped is replaced
        if url.startswith("postgresql"):  # libpq's, for psycopg 2 and 3 alike
            engine_kwargs["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT_S}
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
    kind: Callable[..., RDBStorage] = (
        SqliteStorage if is_sqlite else functools.partial(ReconnectingStorage, log=log or say)
    )
    for attempt in range(OPEN_ATTEMPTS):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                storage = kind(url, engine_kwargs=engine_kwargs, **heartbeat)
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
            raise DflError(
                f"cannot open study storage {describe_url(url)}: {_first_line(e)}"
            ) from None
    if is_sqlite:
        event.listen(storage.engine, "begin", _begin_immediate)
    return storage


def _sqlite_hint(path: Path) -> str:
    """Why SQLite cannot open `path`, where the file system says: a directory given for the
    database, or a read-only folder (SQLite writes its journal beside the file, even to read)."""
    if path.is_dir():
        return (
            f" ({path} is a directory: give the sweep's study.db, or {option('out')} its directory)"
        )
    if path.parent.is_dir() and not os.access(path.parent, os.W_OK):
        return (
            f" ({path.parent} is read-only, and SQLite writes its journal beside the database "
            "even to read it: copy the sweep's directory somewhere writable)"
        )
    return ""


def _first_line(error: BaseException) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def _begin_immediate(connection: Any) -> None:
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def study_id(storage: optuna.storages.RDBStorage, name: str) -> int:
    try:
        return storage.get_study_id_from_name(name)
    except KeyError:
        known = [s.study_name for s in storage.get_all_studies()]
        hint = f" (studies there: {', '.join(known)})" if known else " (it holds no study)"
        raise DflError(f"no study '{name}' in {describe_url(storage.url)}{hint}") from None


def stalled_trials(
    url: str, name: str, heartbeat_interval: int, grace_period: int
) -> frozenset[int]:
    """The numbers of study `name`'s running trials whose worker has not beaten for
    `grace_period` seconds, judged by the database's clock as the workers judge them. It only
    looks: failing and requeueing them is the next worker's job. (Optuna's judgement,
    `_get_stale_trial_ids`, is private; fail_stale_trials, its public user, also fails them.)"""
    storage = open_storage(url, heartbeat_interval=heartbeat_interval, grace_period=grace_period)
    stale = storage._get_stale_trial_ids(study_id(storage, name))
    return frozenset(storage.get_trial_number_from_id(trial_id) for trial_id in stale)


# ---------------------------------------------------------------------------------------------
# Riding out a database server's outage


class StorageUnreachable(DflError):
    """The database server stayed away past OUTAGE_LIMIT_S (or past this thread's patience,
    see `without_waiting`)."""

    exit_code = 1


_outage_lock = threading.Lock()  # one "unreachable" line per outage, whichever thread meets it
_this_thread = threading.local()  # .patience_s: how long this thread's calls wait out an outage


@contextlib.contextmanager
def without_waiting() -> Iterator[None]:
    """Storage calls made in this block, by this thread, try once and raise StorageUnreachable
    rather than wait out an outage: for a heartbeat (its next beat is the retry) and for a
    worker on its way out (the trial it could not requeue is requeued by the heartbeat
    mechanism once the server is back)."""
    before = getattr(_this_thread, "patience_s", None)
    _this_thread.patience_s = 0.0
    try:
        yield
    finally:
        _this_thread.patience_s = before


def _chain(error: BaseException) -> Iterator[BaseException]:
    """`error` and the errors behind it, as its traceback would show them."""
    seen: BaseException | None = error
    while seen is not None:
        yield seen
        seen = seen.__cause__ or (None if seen.__suppress_context__ else seen.__context__)


def is_connection_error(error: BaseException) -> bool:
    """Whether `error`, or an error behind it (RDBStorage raises StorageInternalError from
    SQLAlchemy's), is about the connection: the server refused it, dropped it, is shutting
    down or starting up. Deadlocks and statement timeouts are OperationalErrors too, and worth
    a retry as well; a bad value (DataError) or a bug (ProgrammingError) is not retried."""
    return any(isinstance(e, (exc.OperationalError, exc.InterfaceError)) for e in _chain(error))


class ReconnectingStorage(RDBStorage):
    """An RDBStorage that waits out its database server's outage for up to OUTAGE_LIMIT_S: a
    call that fails with a connection error is tried again, waiting BACKOFF_S[0], twice that,
    and so on up to BACKOFF_S[1], and the outage is logged once, when it begins. (The pool's
    pre-ping, see open_storage, replaces a connection the server dropped while it was idle;
    this is for the calls made while the server is away.)

    Is a retry safe? Each retried method is one transaction of its own. If the server went
    away before the commit, nothing was written and the retry is the call. If it went away
    after committing but before answering (a window of microseconds per write), the retry
    meets its own write:
    - attributes, intermediate values, heartbeats: written again with the same value; a
      parameter: refused as a duplicate, which RDBStorage ignores; a new study: refused as a
      duplicate, and `create_study(load_if_exists=True)` loads it. Safe.
    - claiming a queued trial (WAITING -> RUNNING, `pop_waiting`): the retry finds it RUNNING
      and the worker claims another. The claimed one has the heartbeat beaten just before the
      claim and none after, so it is failed and requeued after the grace period, and runs
      once. Safe (one FAIL record more).
    - finishing a trial (`tell`): the retry finds it finished; the result is recorded, though
      the worker logs that the trial "was requeued meanwhile". Safe.
    - failing a stale trial (`fail_stale_trials`): the retry finds it failed and Optuna skips
      the requeue: that point stays failed until `dfl sweep --retry-failed`. Not safe.
    - creating a trial (queueing a grid point, requeueing a stale trial, a search's `ask`):
      the trial is created twice. Not safe: a grid point queued twice runs twice (in one run
      directory: the second reads the first's result); a search's extra trial is RUNNING
      with no heartbeat, so it is never failed and the workers wait for it. Optuna's own
      retries of trial creation (for deadlocks, up to 5) have the same window."""

    def __init__(self, url: str, *, log: Callable[[str], None], **kwargs: Any) -> None:
        self._log = log
        self._down_since: float | None = None  # monotonic time the current outage began
        self._back_at = -float("inf")  # monotonic time the last one ended
        super().__init__(url, **kwargs)

    def _call(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        delay = BACKOFF_S[0]
        while True:
            try:
                result = method(self, *args, **kwargs)
            except Exception as e:
                if not is_connection_error(e):
                    raise
                self._wait_or_give_up(e, delay)
                delay = min(2 * delay, BACKOFF_S[1])
                continue
            if self._down_since is not None:  # looked at without the lock: every call is here
                self._came_back()
            return result

    def _wait_or_give_up(self, error: Exception, delay: float) -> None:
        now = time.monotonic()
        with _outage_lock:
            if self._down_since is None:
                self._down_since = now
                self._log(
                    f"database {describe_url(self.url)} unreachable ({_db_message(error)}); "
                    f"retrying for up to {OUTAGE_LIMIT_S:g} s"
                )
            away = now - self._down_since
        patience = getattr(_this_thread, "patience_s", None)
        patience = OUTAGE_LIMIT_S if patience is None else patience
        if away >= patience:
            raise StorageUnreachable(
                f"database {describe_url(self.url)} unreachable for {away:.0f} s "
                f"({_db_message(error)}); {rerun()} once it is back: finished trials are "
                "kept, and the ones left running are requeued"
            ) from None
        # Jittered, so that workers do not all knock at the same instant when it returns.
        time.sleep(min(delay * random.uniform(0.5, 1.0), patience - away))

    def _came_back(self) -> None:
        with _outage_lock:
            if self._down_since is not None:
                self._down_since, self._back_at = None, time.monotonic()

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        # While the server was away nobody could beat, so right after an outage every running
        # trial looks stale, the live workers' too. Each live worker beats again within half a
        # second of the server's return (trial.Heartbeat), so no verdict is given until a grace
        # period and a beat after this process reconnected (this very call may have waited
        # for it). A worker that died meanwhile still has its trial failed, that much later.
        stale = self._call(RDBStorage._get_stale_trial_ids, study_id)
        assert self.heartbeat_interval is not None
        grace = self.grace_period or 2 * self.heartbeat_interval
        return stale if time.monotonic() - self._back_at >= grace + self.heartbeat_interval else []


def _db_message(error: BaseException) -> str:
    """The driver's own first line ('connection to server at ... failed: Connection
    refused'), without SQLAlchemy's and Optuna's wrapping."""
    dbapi = next((e for e in _chain(error) if isinstance(e, exc.DBAPIError)), None)
    return _first_line(error if dbapi is None else dbapi.orig)


def _guarded(name: str) -> Callable[..., Any]:
    method = getattr(RDBStorage, name)

    @functools.wraps(method)
    def call(self: ReconnectingStorage | SqliteStorage, *args: Any, **kwargs: Any) -> Any:
        return self._call(method, *args, **kwargs)

    return call


# ---------------------------------------------------------------------------------------------
# An SQLite file that cannot be written


class SqliteStorage(RDBStorage):
    """An RDBStorage on an SQLite file whose writes that fail (a full disk or a file-size
    limit: SQLite says "disk I/O error"; a read-only file) end in one line, not SQLAlchemy's
    traceback. On a full disk (`DiskFull`) workers put their trial back in the queue, or
    leave it to the heartbeat when even that write fails, so the same command completes once
    there is room."""

    def _call(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except Exception as e:
            said = next((str(c) for c in _chain(e) if isinstance(c, sqlite3.OperationalError)), "")
            path = self.url.removeprefix("sqlite:///")
            if "readonly database" in said:
                raise DflError(
                    f"cannot write the sweep database {path} ({said}); make it writable and "
                    f"{rerun()}",
                    exit_code=1,
                ) from None
            if "disk I/O error" in said or "database or disk is full" in said:
                raise DiskFull(
                    f"cannot write the sweep database {path} ({said}: is the disk full?); "
                    f"free some space and {rerun()}: finished trials are kept"
                ) from None
            raise


# RDBStorage's methods that run a transaction each (its other methods, and Optuna's cache in
# front of it, call these), so each is retried or checked whole; none calls another.
for _name in (
    "create_new_study", "delete_study", "get_all_studies", "get_study_id_from_name",
    "get_study_name_from_id", "get_study_directions", "get_study_user_attrs",
    "get_study_system_attrs", "set_study_user_attr", "set_study_system_attr",
    "_create_new_trial", "_get_trials", "get_trial", "get_trial_id_from_study_id_trial_number",
    "get_trial_param", "get_trial_user_attrs", "get_trial_system_attrs", "_get_best_trial_id",
    "_set_trial_param", "set_trial_state_values", "set_trial_intermediate_value",
    "set_trial_user_attr", "set_trial_system_attr", "record_heartbeat",
):  # fmt: skip
    setattr(ReconnectingStorage, _name, _guarded(_name))
    setattr(SqliteStorage, _name, _guarded(_name))
