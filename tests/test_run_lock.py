"""One process per run directory, with real processes: a live run holds its directory, a
second `dfl train` or `--resume` there exits 2 naming the holder's pid and touches nothing
(not the live run's half-written checkpoint), and after the holder is SIGKILLed the kernel's
release of the lock lets `--resume` continue the run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import write_idx_dataset
from dfl.cli import main
from dfl.errors import DflError
from dfl.runtime.run_lock import LOCK_NAME, RunDirInUse, claim_run_dir
from dfl.training.run_dir import read_history, read_status

DFL = [sys.executable, "-c", "import sys; from dfl.cli import main; sys.exit(main())"]
OPTIONS = ["--device", "cpu", "--threads", "1", "--set", "model_args.hidden=[16]"]


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    return write_idx_dataset(tmp_path_factory.mktemp("lock") / "digits", 256, 64)


def train_args(digits: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "mlp", "--dataset", str(digits), "--epochs", "3", *OPTIONS, *extra,
            "--out", str(out)]  # fmt: skip


def wait_for(condition, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "timed out waiting for the process"
        time.sleep(0.05)


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
