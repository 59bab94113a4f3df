"""One process per run directory, with real processes: a live run holds its directory, a
second `dfl train` or `--resume` there exits 2 naming the holder's pid and touches nothing
(not the live run's half-written checkpoint), and after the holder is SIGKILLed the kernel's
release of the lock lets `--resume` continue the run."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import DFL, wait_for
from dfl.cli import main
from dfl.errors import DflError
from dfl.runtime.run_lock import LOCK_NAME, RunDirInUse, claim_run_dir
from dfl.sweep.trial import run_dir_lock
from dfl.training.run_dir import read_history, read_status

OPTIONS = ["--device", "cpu", "--threads", "1", "--set", "model_args.hidden=[16]"]


def train_args(digits: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "mlp", "--dataset", str(digits), "--epochs", "3", *OPTIONS, *extra,
            "--out", str(out)]  # fmt: skip


def cli(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().err


@pytest.fixture
def live_run(digits, tmp_path):
    """A real `dfl train` paused inside its epoch-2 checkpoint (written, not yet renamed):
    alive, holding its run directory, with a `.epoch-0002.tmp-PID` folder on disk."""
    out = tmp_path / "run"
    env = {**os.environ, "DFL_FAULT_PAUSE_BEFORE_RENAME": "2:60"}
    proc = subprocess.Popen([*DFL, *train_args(digits, out)], env=env, stderr=subprocess.DEVNULL)
    tmp_checkpoint = out / "checkpoints" / f".epoch-0002.tmp-{proc.pid}"
    try:
        wait_for(lambda: (tmp_checkpoint / "state.json").exists())
        yield proc, out, tmp_checkpoint
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait()


@pytest.mark.slow
def test_a_second_train_or_resume_on_a_live_run_exits_2_naming_its_pid(live_run, capsys, digits):
    proc, out, tmp_checkpoint = live_run
    config = (out / "config.toml").read_text()
    for argv in (
        train_args(digits, out, "--seed", "2", "--lr", "0.003"),  # another run, same --out
        ["train", "--resume", "--out", str(out)],
        train_args(digits, out, "--resume"),
    ):
        code, err = cli(capsys, *argv)
        assert code == 2, err
        lines = err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("dfl: error: run directory"), err
        assert f"is in use by process {proc.pid}" in err
    # Nothing of the live run was touched: its config, status and half-written checkpoint.
    assert (out / "config.toml").read_text() == config
    status = read_status(out)
    assert status["status"] == "running" and status["pid"] == proc.pid
    assert tmp_checkpoint.exists() and proc.poll() is None
    assert (out / LOCK_NAME).read_text().split()[0] == str(proc.pid)


@pytest.mark.slow
def test_after_sigkill_the_lock_does_not_block_a_resume(live_run, capsys):
    proc, out, _ = live_run
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (out / LOCK_NAME).exists()  # stale, but the kernel released its flock
    code, err = cli(capsys, "train", "--resume", "--out", str(out))
    assert code == 0, err
    assert f"resumed {out} from epoch 1" in err
    assert read_status(out)["status"] == "completed"
    assert [r["epoch"] for r in read_history(out)] == [1, 2, 3]
    assert not list((out / "checkpoints").glob(".epoch-*"))  # the dead run's folder is cleared
    assert not (out / LOCK_NAME).exists()  # a finished run gives its lock up


@pytest.mark.slow
def test_two_runs_started_together_on_one_directory(digits, tmp_path):
    """`dfl train ... --out b & dfl train ... --out b`: exactly one trains, the other is told
    who holds the directory; the directory holds the run that trained."""
    out = tmp_path / "b"
    env = {**os.environ, "DFL_FAULT_PAUSE_BEFORE_RENAME": "1:3"}  # both live at once
    procs = [
        subprocess.Popen(
            [*DFL, *train_args(digits, out, "--seed", str(seed))],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed in (1, 2)
    ]
    results = [(p.wait(timeout=120), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    winner = next(i for i, (code, _) in enumerate(results) if code == 0)
    loser_err = results[1 - winner][1]
    assert f"is in use by process {procs[winner].pid}" in loser_err
    assert [ln for ln in loser_err.splitlines() if ln.startswith("dfl:")] == [
        ln for ln in loser_err.splitlines() if ln.startswith("dfl: error: run directory")
    ]
    saved = (out / "config.toml").read_text()
    assert f"seed = {winner + 1}" in saved
    assert read_status(out)["status"] == "completed"


def test_one_claim_per_directory_within_a_process_too(tmp_path):
    out = tmp_path / "run"
    with claim_run_dir(out) as claim:
        claim.started = True  # keep the directory when the block ends
        assert (out / LOCK_NAME).read_text().split()[0] == str(os.getpid())
        with (
            pytest.raises(RunDirInUse, match=f"in use by process {os.getpid()}"),
            claim_run_dir(out),
        ):
            pass
    assert out.is_dir() and not (out / LOCK_NAME).exists()
    with claim_run_dir(out):  # free again
        pass
    assert out.is_dir()  # it existed before this claim: kept


def test_a_claim_that_never_starts_removes_what_it_made(tmp_path):
    out = tmp_path / "a" / "b" / "run"
    with pytest.raises(DflError, match="bad config"), claim_run_dir(out) as claim:
        claim.new_file(out / "config.toml")
        (out / "config.toml").write_text("epochs = 1\n")
        raise DflError("bad config")
    assert not (tmp_path / "a").exists()
    existing = tmp_path / "mine"
    existing.mkdir()
    (existing / "notes.txt").write_text("keep")
    with pytest.raises(DflError), claim_run_dir(existing) as claim:
        claim.new_file(existing / "config.toml")
        (existing / "config.toml").write_text("epochs = 1\n")
        raise DflError("bad config")
    assert sorted(p.name for p in existing.iterdir()) == ["notes.txt"]


def test_a_lock_file_without_a_pid_still_names_the_problem(tmp_path):
    out = tmp_path / "run"
    with claim_run_dir(out) as claim:
        claim.started = True
        os.ftruncate(claim.fd, 0)  # the holder got the lock but has not written its pid yet
        with pytest.raises(RunDirInUse, match="in use by another process"), claim_run_dir(out):
            pass


# A process that takes the run directory's lock by refusing or by waiting, says "held", and
# lets go when a line comes on its stdin.
HOLDER = """
import sys
from pathlib import Path
from dfl.runtime.run_lock import claim_run_dir

def say(line):
    print(line, flush=True)

out, how = Path(sys.argv[1]), sys.argv[2]
waiting = lambda holder: say("waiting for " + holder)
with claim_run_dir(out, wait=how == "wait", on_wait=waiting) as claim:
    claim.started = True
    say("held")
    sys.stdin.readline()
say("released")
"""


def hold(out: Path, how: str) -> subprocess.Popen:
    argv = [sys.executable, "-c", HOLDER, str(out), how]
    return subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)


def line_of(proc: subprocess.Popen, timeout: float = 30.0) -> str:
    """The next line `proc` prints, or a failure after `timeout` (never a hung test)."""
    got = b""
    end = time.monotonic() + timeout
    while not got.endswith(b"\n"):
        ready, _, _ = select.select([proc.stdout], [], [], max(0.0, end - time.monotonic()))
        assert ready, f"no line from process {proc.pid} in {timeout}s (so far {got!r})"
        byte = os.read(proc.stdout.fileno(), 1)
        assert byte, f"process {proc.pid} ended (so far {got!r}, exit {proc.wait()})"
        got += byte
    return got.decode().rstrip("\n")


def let_go(proc: subprocess.Popen) -> None:
    proc.stdin.write(b"\n")
    proc.stdin.flush()


def test_a_waiting_holder_refuses_a_refusing_claim_and_waiters_take_turns(tmp_path):
    """One lock, two ways of taking it: held by waiting, a refusing claim is refused with the
    usual one line; a second waiter waits (a timed one gives up, naming the holder), and takes
    the lock when the holder lets go."""
    out = tmp_path / "run"
    procs = [hold(out, "wait")]
    try:
        first = procs[0]
        assert line_of(first) == "held"
        with pytest.raises(RunDirInUse) as refused, claim_run_dir(out):
            pass
        assert str(refused.value) == (
            f"run directory {out} is in use by process {first.pid}, which is still training "
            "it; wait for it to finish (then resume=True), or choose another out="
        )  # called from Python, it names the API's keywords (the CLI's flags: test_input_errors)
        procs.append(second := hold(out, "wait"))
        assert line_of(second) == f"waiting for process {first.pid}"
        seen = []
        t0 = time.monotonic()
        with (
            pytest.raises(RunDirInUse, match=f"by process {first.pid}, .* after 0.3s of waiting"),
            claim_run_dir(out, wait=True, timeout=0.3, on_wait=seen.append),
        ):
            pass
        assert seen == [f"process {first.pid}"] and time.monotonic() - t0 >= 0.3
        let_go(first)
        assert line_of(first) == "released"
        assert line_of(second) == "held"  # the waiter proceeds once the holder lets go
        assert (out / LOCK_NAME).read_text().split()[0] == str(second.pid)
        with (
            pytest.raises(RunDirInUse, match=f"in use by process {second.pid}"),
            claim_run_dir(out),
        ):
            pass
        let_go(second)
        assert [p.wait(timeout=30) for p in procs] == [0, 0]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    assert out.is_dir() and not (out / LOCK_NAME).exists()


def test_a_refusing_holder_makes_a_waiting_claim_wait_until_it_lets_go(tmp_path):
    out = tmp_path / "run"
    holder = hold(out, "refuse")
    try:
        assert line_of(holder) == "held"
        told = []

        def on_wait(who: str) -> None:  # now waiting: the holder may let go
            told.append(who)
            let_go(holder)

        with claim_run_dir(out, wait=True, timeout=60, on_wait=on_wait) as claim:
            claim.started = True
            assert told == [f"process {holder.pid}"]
            assert (out / LOCK_NAME).read_text().split()[0] == str(os.getpid())
            assert line_of(holder) == "released"
            argv = [sys.executable, "-c", HOLDER, str(out), "refuse"]  # and now, vice versa
            other = subprocess.run(argv, capture_output=True, text=True, timeout=60)
            assert other.returncode == 1 and other.stdout == ""
            assert f"RunDirInUse: run directory {out} is in use by process {os.getpid()}," in (
                other.stderr
            )
        assert holder.wait(timeout=30) == 0
    finally:
        if holder.poll() is None:
            holder.kill()
        holder.wait()


def test_a_trial_waits_for_a_run_there_and_its_fit_joins_the_trials_lock(tmp_path):
    """A sweep trial takes the run directory's lock by waiting (not a lock of its own, which
    a `dfl train` there would not see); `fit`'s claim inside the trial joins it; any other
    claim, even in the same process, is still refused."""
    out = tmp_path / "trials" / "point"
    said, results = [], []
    waiting, held, done = threading.Event(), threading.Event(), threading.Event()

    def log(line: str) -> None:
        said.append(line)
        waiting.set()

    def trial() -> None:
        try:
            with run_dir_lock(out, log) as outer:
                with claim_run_dir(out) as inner:  # what `fit` does inside the trial
                    inner.started = True
                    results.append(inner is outer)
                held.set()
                assert done.wait(30)
        except BaseException as e:
            results.append(e)
        finally:
            held.set()

    worker = threading.Thread(target=trial)
    with claim_run_dir(out) as claim:  # a `dfl train` (here: this thread) holds it first
        claim.started = True
        worker.start()
        assert waiting.wait(30)
        assert said == [f"waiting for point: process {os.getpid()} is training it"]
        assert not held.is_set()
    try:
        assert held.wait(30) and results == [True]
        with (  # a claim outside the trial's block (this thread's): refused, not joined
            pytest.raises(RunDirInUse, match=f"in use by process {os.getpid()}"),
            claim_run_dir(out),
        ):
            pass
    finally:
        done.set()
        worker.join(30)
    assert results == [True] and not (out / LOCK_NAME).exists()
