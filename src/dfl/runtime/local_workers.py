"""Worker processes on this machine: how many, how many threads each, and their life.

Two things in dfl train several runs side by side on one machine: an experiment's independent
runs (`dfl reproduce` and `dfl lab` with --jobs, dfl/experiments/engine.py) and a sweep's local
workers (`dfl sweep`, dfl/sweep/launch.py). Both go through this module, so one place decides
- the split of the cores: `threads_per_worker` (cores // workers, at least 1) and
  `default_workers` (one worker per core on CPU, one on a GPU);
- the life of the processes: a `WorkerGroup` starts them, sees them end, and stops all of
  them together when its block is left by a failure, Ctrl-C or SIGTERM: the workers get time
  to put their work back (a sweep worker requeues its trial), then SIGTERM, then SIGKILL;
  and a launcher killed outright (SIGKILL, out of memory) takes its workers with it: on
  Linux the kernel sends each SIGTERM (`_stops_with`), and they wind down the same way.

A group starts two kinds of process, because the two callers need different things and
forcing one onto the other would only add code. A sweep worker is a command, `python -m
dfl.sweep worker ...` with OMP/MKL_NUM_THREADS set and its output in a log file: the same
command `dfl worker` runs on other machines, and its results go through the Optuna study, so
nothing has to come back but an exit code (`start_command`). An experiment's runs need the
dataset, which travels in memory to a spawned function (no file to write, no second load) and
their Runs must come back: `run_in_workers` hands tasks one at a time to spawned
processes over pipes and collects the results by key (`start_function` underneath). Spawned,
not forked: CUDA cannot be forked. Both kinds are handles with Popen's methods in one group,
so how they are stopped is written once, with public APIs only.

A worker's thread count is pinned (`core_share.pin_threads`, or the environment of a
command), so its trainings keep the launcher's split instead of recounting the cores.
"""

from __future__ import annotations

import ctypes
import functools
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any, Protocol, TypeVar

from dfl.errors import CALLER, DflError, one_line, option
from dfl.runtime.interrupts import INTERRUPTED, TERMINATED, note_sigterm

STOP_WAIT_S = 15.0  # how long workers get to wind down (requeue a trial) before each signal
POLL_S = 0.05  # how often a wait looks at the workers

K = TypeVar("K", bound=Hashable)
R = TypeVar("R")


# ---------------------------------------------------------------------------------------------
# The split of the cores


def available_cores() -> int:
    """The cores this process may use (taskset, cgroups), not the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


# Local worker processes a sweep or a reproduction starts at most, a core each: every one is a
# Python with torch (a few hundred MB before it trains), so thousands exhaust memory before any
# trial runs, and more than a few a core only take turns on it. Workers on other machines (`dfl
# worker`) are not counted.
WORKERS_PER_CORE = 4


def check_workers(workers: int | None, name: str = "workers") -> None:
    """A count of worker processes (None: the default), checked before anything is created;
    `name` is the option it was given as (jobs, workers), named as the caller gives it."""
    if workers is None:
        return
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise DflError(
            f"{option(name)} must be a whole number, at least 1 (got {workers!r}); leave it "
            "out for the default"
        )
    cores = available_cores()
    if workers > WORKERS_PER_CORE * cores:
        raise DflError(
            f"{option(name, workers)} is more than {WORKERS_PER_CORE} a core on this machine's "
            f"{cores} cores: give {WORKERS_PER_CORE * cores} or fewer"
        )


def threads_per_worker(workers: int, cores: int | None = None) -> int:
    """Intra-op threads for each of `workers` processes: workers x threads = cores."""
    return max(1, (cores if cores is not None else available_cores()) // max(1, workers))


def default_workers(tasks: int, *, on_gpu: bool, cores: int | None = None) -> int:
    """One single-threaded worker per core on CPU, one worker on a GPU machine (its runs
    would only queue for the one device), never more workers than runs to train.

    Measured on 2 cores, the lab's autoencoder on MNIST, 4 sweep trials (enc {32, 128} x
    epochs, `dfl sweep SPEC --workers N`, wall time of the whole command): with epochs {3, 6}
    2 workers x 1 thread took 17.5-18.4 s, 1 worker x 2 threads 21.7-26.3 s; with epochs
    {1, 2} the two were within a second of each other (about 10 s, mostly process start-up).
    Small matrix products gain little from a second thread (enc 32: 65k samples/s with 1, 72k
    with 2), while a second process doubles the work done."""
    if on_gpu:
        return 1
    return max(1, min(cores if cores is not None else available_cores(), tasks))


# ---------------------------------------------------------------------------------------------
# A group of worker processes


class Worker(Protocol):
    """What the group needs of a process: subprocess.Popen's methods."""

    pid: int

    @property
    def returncode(self) -> int | None: ...

    def poll(self) -> int | None: ...

    def send_signal(self, sig: int) -> None: ...

    def wait(self) -> int: ...


class _Spawned:
    """A spawned multiprocessing.Process seen through Popen's methods."""

    def __init__(self, process: multiprocessing.process.BaseProcess) -> None:
        self.process = process
        self.pid = process.pid

    @property
    def returncode(self) -> int | None:
        return self.process.exitcode

    def poll(self) -> int | None:
        return self.process.exitcode  # reaps it once it has ended

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:  # never a pid that was reaped (and may be reused)
            os.kill(self.pid, sig)

    def wait(self) -> int:
        self.process.join()
        return self.process.exitcode  # type: ignore[return-value]


class WorkerGroup:
    """Worker processes started together and stopped together.

    Use as a context manager. While it is open, SIGTERM to this process raises
    KeyboardInterrupt (in the main thread), so a scheduler's stop goes through the same way out
    as Ctrl-C; later ones are ignored until it closes, so that they cannot cut that stop short
    (a killed launcher's worker gets several: `_stops_with`). Leaving it normally waits for
    the workers to end. Leaving it on an exception stops every worker still running: after a
    Ctrl-C from a terminal they got the same SIGINT and are winding down, so they get
    `stop_wait_s` first; after SIGTERM or a failure they get SIGTERM at once; then SIGTERM
    again and, `stop_wait_s` later, SIGKILL."""

    def __init__(self, stop_wait_s: float = STOP_WAIT_S) -> None:
        self.stop_wait_s = stop_wait_s
        self.workers: list[Worker] = []
        self.sigterm = False  # whether the KeyboardInterrupt came from a SIGTERM
        self._logs: list[Any] = []
        self._previous: Any = None

    # --- starting -------------------------------------------------------------------------

    def start_command(self, argv: Sequence[str], *, threads: int, log: Path) -> Worker:
        """Start `argv` with `threads` OpenMP/MKL threads, its output appended to `log`."""
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        env["DFL_CALLER"] = CALLER.get()  # a dfl command there words its messages for ours
        log_file = open(log, "a")  # noqa: SIM115 (closed when the group ends)
        self._logs.append(log_file)
        proc = subprocess.Popen(
            list(argv),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=env,
            preexec_fn=functools.partial(_command_stops_with, os.getpid()),
        )
        self.workers.append(proc)
        return proc

    def start_function(self, target: Callable[..., Any], *args: Any) -> Worker:
        """Start `target(*args)` in a spawned process (the arguments travel pickled)."""
        spawn = multiprocessing.get_context("spawn")
        process = spawn.Process(target=_as_caller, args=(CALLER.get(), target, *args))
        process.start()
        worker = _Spawned(process)
        self.workers.append(worker)
        return worker

    # --- watching -------------------------------------------------------------------------

    def running(self) -> bool:
        return any(w.poll() is None for w in self.workers)

    def wait(self, seconds: float) -> bool:
        """Sleep up to `seconds`, returning early when the last worker ends; whether all
        have ended."""
        deadline = time.monotonic() + seconds
        while self.running():
            if time.monotonic() >= deadline:
                return False
            time.sleep(POLL_S)
        return True

    # --- stopping -------------------------------------------------------------------------

    def signal_all(self, sig: int) -> None:
        for w in self.workers:
            if w.poll() is None:
                w.send_signal(sig)

    def stop(self, *, signal_first: bool) -> None:
        """Stop every worker still running (see the class docstring); returns once all ended."""
        if signal_first:
            self.signal_all(signal.SIGTERM)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if self.wait(self.stop_wait_s):
                break
            self.signal_all(sig)
        for w in self.workers:
            w.wait()

    def __enter__(self) -> WorkerGroup:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)
        return self

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # until __exit__ puts the old one back
        self.sigterm = True
        note_sigterm()
        raise KeyboardInterrupt

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        try:
            if exc_type is None:
                for w in self.workers:
                    w.wait()
            else:
                interrupted = exc_type is KeyboardInterrupt and not self.sigterm
                self.stop(signal_first=not interrupted)
        finally:
            if self._previous is not None:
                signal.signal(signal.SIGTERM, self._previous)
            for f in self._logs:
                f.close()


def _as_caller(caller: str, target: Callable[..., Any], *args: Any) -> Any:
    """`target(*args)` in a spawned process, its messages worded for the caller that started
    it (a command's flags, or the API's keywords)."""
    CALLER.set(caller)
    return target(*args)


# ---------------------------------------------------------------------------------------------
# Functions in spawned workers, results by key


class WorkerDied(DflError):
    """A worker process ended without answering (killed, out of memory, a crash in C)."""


class RemoteTraceback(Exception):
    """The traceback of an exception raised in a worker, as its `__cause__`."""

    def __str__(self) -> str:
        return str(self.args[0])


def run_in_workers(
    fn: Callable[..., R],
    tasks: dict[K, tuple[Any, ...]],
    *,
    workers: int,
    threads: int | None = None,
    pin: bool = True,
    initializer: Callable[..., None] | None = None,
    initargs: tuple[Any, ...] = (),
    on_start: Callable[[K], None] = lambda key: None,
    on_result: Callable[[K, R], None] = lambda key, result: None,
    on_failure: Callable[[K, str], R] | None = None,
    stop_wait_s: float = STOP_WAIT_S,
) -> dict[K, R]:
    """`fn(*task)` for every task, in `workers` spawned processes of `threads` intra-op
    threads each (default: cores // workers; with `pin=False` none is set, and the trainings
    in them share the cores by themselves: dfl/runtime/core_share.py), a task at a time to whichever
    worker is free, in the tasks' order; each worker first runs `initializer(*initargs)`.
    Returns the results by the tasks' keys, in their order.
    The first failure stops the other workers: an exception in `fn` (or in the set-up) is
    raised here, its traceback as the cause, and a worker that died raises WorkerDied. With
    `on_failure` the others go on instead: the failed task's result is `on_failure(key,
    reason)`, a one-line reason ("RuntimeError: ...", "its process was killed (signal 9)"),
    and a fresh worker takes a dead one's place. Either way a worker stopped by Ctrl-C or
    SIGTERM raises KeyboardInterrupt here."""
    if not tasks:
        return {}
    workers = max(1, min(workers, len(tasks)))
    threads = (threads or threads_per_worker(workers)) if pin else None
    todo = deque(tasks.items())
    results: dict[K, R] = {}
    busy: dict[Connection, tuple[int, Worker, K]] = {}  # a worker's pipe: its index, its task

    def hand_out(conn: Connection, i: int, w: Worker) -> None:
        """The next task to the free worker `i`, or (none left) the word to stop."""
        if not todo:
            conn.send(None)  # it ends by itself
            return
        key, args = todo.popleft()
        conn.send(args)
        busy[conn] = (i, w, key)
        on_start(key)

    def done(key: K, result: R) -> None:
        results[key] = result
        on_result(key, result)

    with WorkerGroup(stop_wait_s) as group:

        def start(i: int) -> None:
            ours, theirs = multiprocessing.get_context("spawn").Pipe()
            w = group.start_function(_serve, theirs, fn, threads, initializer, initargs)
            theirs.close()  # so that the worker's end closing reads as its death here
            hand_out(ours, i, w)

        for i in range(workers):
            start(i)
        while len(results) < len(tasks):
            for conn in wait(list(busy)):
                i, w, key = busy.pop(conn)
                try:
                    ok, value = conn.recv()
                except EOFError:
                    reason = _why_it_died(w.wait())
                    if on_failure is None:
                        raise WorkerDied(f"worker {i} died running {key!r}: {reason}") from None
                    done(key, on_failure(key, reason))
                    if todo:
                        start(i)  # a fresh worker in its place
                    continue
                if ok:
                    done(key, value)
                elif on_failure is None:
                    exc, tb = value
                    raise exc from RemoteTraceback(tb)
                else:
                    done(key, on_failure(key, one_line(value[0])))
                hand_out(conn, i, w)
    return {k: results[k] for k in tasks}


def _why_it_died(code: int) -> str:
    """Why a worker ended without answering, from its exit code; a worker stopped by Ctrl-C
    or SIGTERM raises KeyboardInterrupt instead: that stops everything."""
    if code in (INTERRUPTED, TERMINATED):
        raise KeyboardInterrupt
    if code < 0:  # a signal: SIGKILL by hand or by the kernel out of memory, a crash in C
        return f"its process was killed (signal {-code})"
    return f"its process exited with code {code}"


def _serve(
    conn: Connection,
    fn: Callable[..., Any],
    threads: int | None,
    initializer: Callable[..., None] | None,
    initargs: tuple[Any, ...],
) -> None:
    """A spawned worker: pin the threads (unless None), set up, then answer tasks until told
    to stop.
    SIGTERM (the group stopping it, or its launcher dying: `_stops_with`) ends it like Ctrl-C,
    so its run unwinds as from a Ctrl-C (as a sweep worker's does), and what it holds is given
    back."""
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        if not _stops_with(multiprocessing.parent_process().pid):  # type: ignore[union-attr]
            return  # the launcher is gone already
        from dfl.runtime.core_share import pin_threads  # here: torch loads in the worker only

        if threads is not None:
            pin_threads(threads)
        failed_setup = None  # the answer to every task when the set-up failed
        try:
            if initializer is not None:
                initializer(*initargs)
        except Exception as e:
            failed_setup = (False, (e, traceback.format_exc()))
        while (args := conn.recv()) is not None:
            try:
                answer: tuple[bool, Any] = failed_setup or (True, fn(*args))
            except Exception as e:
                answer = (False, (e, traceback.format_exc()))
            try:
                conn.send(answer)
            except ConnectionError:  # the launcher is gone: below
                raise
            except Exception as e:  # the result or the exception cannot be pickled
                text = f"{type(e).__name__}: {e} (sending the worker's answer back)"
                conn.send((False, (DflError(text), traceback.format_exc())))
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the launcher got it too, or is gone
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # see _interrupt: on its way out now
        sys.exit(INTERRUPTED)
    except (EOFError, ConnectionError):  # the launcher is gone
        pass


def _interrupt(signum: int, frame: Any) -> None:
    """A worker's SIGTERM, as Ctrl-C, once: a later one (a killed launcher's comes several
    times, see `_stops_with`) would cut its way out into a traceback."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt


# ---------------------------------------------------------------------------------------------
# Workers end with their launcher

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
# prctl(2), None off Linux. Looked up once here: a command calls it between fork and exec,
# where looking a symbol up could wait forever on a lock another thread held at the fork.
_prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform == "linux" else None


def _stops_with(parent: int) -> bool:
    """Have the kernel send this worker SIGTERM when its launcher `parent` dies, however it
    dies (SIGKILL included), so that no worker trains on for nobody; on Linux, elsewhere
    nothing. Whether `parent` is still there: it may have died before the signal was set.
    The kernel sends it when the *thread* that started the worker ends: a group's workers are
    started by the thread that then waits for them in the group's block, so that thread ends
    with the launcher or after the workers. When the launcher dies, the worker passes from
    each of its dying threads to the next, with a SIGTERM each time (measured: three within
    a tenth of a second): the handlers here act on the first and ignore the rest."""
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    return os.getppid() == parent


def _command_stops_with(parent: int) -> None:
    """`_stops_with` for a command, between fork and exec: it never starts if `parent` died."""
    if not _stops_with(parent):
        os._exit(INTERRUPTED)
