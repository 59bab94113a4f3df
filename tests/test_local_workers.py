"""The local worker processes: the split of the cores, and a group that stops every worker
when one fails, on Ctrl-C and on SIGTERM; functions in spawned workers, results by key."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dfl.runtime.local_workers import (
    WorkerDied,
    WorkerGroup,
    default_workers,
    run_in_workers,
    threads_per_worker,
)

SLEEP = [sys.executable, "-c", "import time; time.sleep(60)"]
FAIL = [sys.executable, "-c", "import sys; sys.exit(3)"]


def test_workers_times_threads_is_the_cores():
    assert threads_per_worker(1, cores=2) == 2
    assert threads_per_worker(2, cores=2) == 1
    assert threads_per_worker(3, cores=8) == 2
    assert threads_per_worker(4, cores=2) == 1  # at least one
    assert default_workers(10, on_gpu=False, cores=2) == 2  # one per core
    assert default_workers(1, on_gpu=False, cores=16) == 1  # never more than runs
    assert default_workers(10, on_gpu=True, cores=16) == 1  # the one device


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_one_failed_worker_stops_the_others_at_once(tmp_path: Path):
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match="worker 1 failed"), WorkerGroup(60.0) as group:
        for i, argv in enumerate([SLEEP, FAIL, SLEEP]):
            group.start_command(argv, threads=1, log=tmp_path / f"w{i}.log")
        while group.running():
            if group.workers[1].poll() not in (None, 0):
                raise RuntimeError("worker 1 failed")
            group.wait(0.05)
    # SIGTERM at once, not after the 60 s a Ctrl-C's workers get to wind down.
    assert time.monotonic() - t0 < 30
    assert [w.returncode for w in group.workers] == [-signal.SIGTERM, 3, -signal.SIGTERM]


def test_ctrl_c_gives_the_workers_time_then_stops_them(tmp_path: Path):
    with pytest.raises(KeyboardInterrupt), WorkerGroup(0.3) as group:
        group.start_command(SLEEP, threads=1, log=tmp_path / "w.log")
        t0 = time.monotonic()
        raise KeyboardInterrupt  # as from a terminal, which sent the workers SIGINT as well
    assert time.monotonic() - t0 >= 0.3  # waited for it to wind down first
    assert group.workers[0].returncode == -signal.SIGTERM


def test_sigterm_stops_the_workers_and_the_handler_comes_back(tmp_path: Path):
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt), WorkerGroup(60.0) as group:
        group.start_command(SLEEP, threads=2, log=tmp_path / "w.log")
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises before this ends
    assert group.sigterm and group.workers[0].returncode == -signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_command_gets_its_threads_and_its_log(tmp_path: Path):
    show = [sys.executable, "-c", "import os; print(os.environ['OMP_NUM_THREADS'])"]
    with WorkerGroup() as group:
        group.start_command(show, threads=3, log=tmp_path / "w.log")
    assert group.workers[0].returncode == 0
    assert (tmp_path / "w.log").read_text() == "3\n"


# Spawned function workers (each imports torch to pin its threads: a few seconds).


def square(x: int) -> tuple[int, int]:
    import torch

    return x * x, torch.get_num_threads()


def sleep_or_fail(what: str, pid_file: Path) -> None:
    if what in ("fail", "die"):
        while not pid_file.exists():  # the other worker is busy with its task
            time.sleep(0.02)
        if what == "die":
            os._exit(7)
        raise ValueError("this run failed")
    pid_file.write_text(str(os.getpid()))
    time.sleep(60)


@pytest.mark.slow
def test_functions_in_workers_return_by_key_in_order():
    tasks = {f"x{i}": (i,) for i in (3, 1, 2)}
    started: list[str] = []
    done: dict[str, tuple[int, int]] = {}
    got = run_in_workers(
        square, tasks, workers=2, threads=2, on_start=started.append, on_result=done.__setitem__
    )
    assert list(got) == ["x3", "x1", "x2"]  # the order asked for, whatever finished first
    assert got == {"x3": (9, 2), "x1": (1, 2), "x2": (4, 2)}  # pinned, over OMP_NUM_THREADS
    assert started == list(tasks) and done == got  # handed out in order; each result told


@pytest.mark.slow
def test_unpinned_workers_keep_the_thread_count_they_start_with(monkeypatch):
    """pin=False (experiments side by side): the workers' trainings share the cores by
    themselves, so the pool sets no thread count (the environment's 1 stays, not threads=2)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    got = run_in_workers(square, {"a": (2,), "b": (3,)}, workers=2, threads=2, pin=False)
    assert got == {"a": (4, 1), "b": (9, 1)}


@pytest.mark.slow
@pytest.mark.parametrize(("what", "error"), [("fail", ValueError), ("die", WorkerDied)])
def test_a_failed_function_stops_the_other_workers(tmp_path: Path, what: str, error: type):
    pid_file = tmp_path / "sleeper.pid"
    tasks = {"sleeper": ("sleep", pid_file), what: (what, pid_file)}
    t0 = time.monotonic()
    with pytest.raises(error) as raised:
        run_in_workers(sleep_or_fail, tasks, workers=2, threads=1, stop_wait_s=60.0)
    assert time.monotonic() - t0 < 45
    if what == "fail":
        assert "this run failed" in str(raised.value)
        assert "sleep_or_fail" in str(raised.value.__cause__)  # the worker's traceback
    else:
        assert "died running 'die': its process exited with code 7" in str(raised.value)
    assert not alive(int(pid_file.read_text()))  # the sleeping worker was stopped


def killed_raises_or_doubled(what: str) -> str:
    if what == "killed":
        os.kill(os.getpid(), signal.SIGKILL)  # as the kernel does a process out of memory
    if what == "raises":
        raise RuntimeError("no luck\nand a second line")
    return what * 2


@pytest.mark.slow
def test_with_on_failure_a_dead_or_failed_task_is_its_result_and_the_others_go_on():
    """One worker: the one that was SIGKILLed gives way to a fresh one, which answers the
    rest; each failure comes back as a one-line reason."""
    tasks = {what: (what,) for what in ("killed", "raises", "ok")}
    got = run_in_workers(
        killed_raises_or_doubled, tasks, workers=1, pin=False, on_failure=lambda k, r: f"! {r}"
    )
    assert got == {
        "killed": "! its process was killed (signal 9)",
        "raises": "! RuntimeError: no luck",
        "ok": "okok",
    }


LAUNCHER = """
import sys, time
from pathlib import Path
from dfl.runtime.local_workers import WorkerGroup, run_in_workers
from test_local_workers import SLEEP, sleep_or_fail

with WorkerGroup() as group:
    group.start_command(SLEEP, threads=1, log=Path(sys.argv[1]) / "command.log")
    run_in_workers(sleep_or_fail, {"a": ("sleep", Path(sys.argv[1]) / "worker.pid")}, workers=1)
"""


@pytest.mark.slow
def test_a_killed_launcher_takes_its_workers_with_it(tmp_path: Path):
    """SIGKILL of the process that started a command and a spawned worker: the kernel sends
    both SIGTERM (Linux), and they end quietly instead of running on for nobody."""
    psutil = pytest.importorskip("psutil")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}  # for this module
    launcher = subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, str(tmp_path)], env=env, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "worker.pid").exists():  # the spawned worker is in its task
            assert time.monotonic() < deadline and launcher.poll() is None
            time.sleep(0.05)
        workers = psutil.Process(launcher.pid).children(recursive=True)
        assert int((tmp_path / "worker.pid").read_text()) in {w.pid for w in workers}
        assert any("time.sleep(60)" in " ".join(w.cmdline()) for w in workers)
    finally:
        launcher.kill()
    _, left = psutil.wait_procs(workers, timeout=10)
    assert left == []
    assert "Traceback" not in launcher.communicate(timeout=10)[1]


def caller_here(_: int) -> str:
    from dfl.errors import CALLER

    return CALLER.get()


def test_spawned_workers_word_their_messages_for_the_caller_that_started_them():
    """A `dfl reproduce` lane words its errors as the command does (`--out`), a notebook's
    `dfl.lab.run` lane as the API does (`out=`): the caller travels to the spawned process."""
    from dfl.errors import CALLER

    assert run_in_workers(caller_here, {"a": (0,)}, workers=1, pin=False) == {"a": "python"}
    token = CALLER.set("cli")
    try:
        assert run_in_workers(caller_here, {"a": (0,)}, workers=1, pin=False) == {"a": "cli"}
    finally:
        CALLER.reset(token)
