"""Trainings share the cores: real processes holding real flocks, one of them SIGKILLed."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dfl.runtime import core_share
from dfl.runtime.core_share import CoreShare

HOLD = (
    "import sys, time; from pathlib import Path; from dfl.runtime.core_share import CoreShare; "
    "share = CoreShare(4, Path(sys.argv[1])); print(share.threads, flush=True); time.sleep(60)"
)


def hold_a_place(directory: Path) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(directory)], stdout=subprocess.PIPE, text=True
    )
    return proc, int(proc.stdout.readline())


@pytest.fixture(autouse=True)
def _keep_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_each_training_gets_its_share_and_a_killed_ones_cores_come_back(tmp_path, monkeypatch):
    monkeypatch.setattr(core_share, "RECHECK_S", 0.0)
    other, its_threads = hold_a_place(tmp_path)
    try:
        assert its_threads == 4  # alone when it started
        with CoreShare(4, tmp_path) as share:
            assert share.alive() == 2 and share.threads == 2 == torch.get_num_threads()
            third, threads = hold_a_place(tmp_path)
            assert threads == 1  # 4 cores // 3 trainings
            third.send_signal(signal.SIGKILL)
            third.wait()
            assert share.rebalance() == 2
            assert len(list(tmp_path.glob("*.lock"))) == 2  # the killed one's file is gone
            other.send_signal(signal.SIGKILL)
            other.wait()
            assert share.rebalance() == 4
        assert list(tmp_path.glob("*.lock")) == []  # leaving gives the place up
    finally:
        other.kill()


def test_the_thread_count_comes_back_after_the_run(tmp_path):
    torch.set_num_threads(3)
    with CoreShare(2, tmp_path) as share:
        assert share.threads == 2 == torch.get_num_threads()
    assert torch.get_num_threads() == 3


def test_recounts_only_when_the_interval_has_passed(tmp_path, monkeypatch):
    monkeypatch.setattr(core_share, "RECHECK_S", 3600.0)
    with CoreShare(2, tmp_path) as share:
        other, _ = hold_a_place(tmp_path)
        try:
            assert share.rebalance() == 2  # counted when it joined, not again yet
            share._next_check = time.monotonic()  # the interval has passed
            assert share.rebalance() == 1
        finally:
            other.kill()


@pytest.mark.parametrize("env", [{"OMP_NUM_THREADS": "1"}, {"MKL_NUM_THREADS": "1"}])
def test_a_chosen_thread_count_is_kept_and_counted_by_the_others(env, tmp_path, monkeypatch):
    """A pinned training (a sweep worker's OMP_NUM_THREADS=1) keeps its threads; the sharing
    ones split what it leaves: 3 of 4 cores, not 4 // 2."""
    monkeypatch.setattr(core_share, "RECHECK_S", 0.0)
    monkeypatch.setattr(core_share, "default_directory", lambda: tmp_path)
    monkeypatch.delenv("DFL_SHARE_CORES")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    torch.set_num_threads(1)
    with CoreShare.join(4) as pinned:
        assert pinned.threads == 1 == torch.get_num_threads()
        assert pinned.rebalance() == 1
        monkeypatch.delenv(next(iter(env)))
        with CoreShare(4, tmp_path) as sharing:
            assert sharing.threads == 3  # the 4 cores less the pinned one's thread
            other, threads = hold_a_place(tmp_path)
            try:
                assert threads == 1  # (4 - 1) // 2 sharing trainings
                assert sharing.rebalance() == 1
            finally:
                other.kill()
                other.wait()
            assert sharing.rebalance() == 3
    assert list(tmp_path.glob("*.lock")) == []


def test_sharing_can_be_turned_off(monkeypatch):
    monkeypatch.setenv("DFL_SHARE_CORES", "0")
    assert CoreShare.join(2) is None
    assert CoreShare.join(2, threads=1) is None


@pytest.mark.parametrize("deterministic", [True, False])
def test_a_deterministic_run_keeps_its_threads_beside_another_training(
    tmp_path, monkeypatch, tiny_data, deterministic
):
    """The same deterministic config gives the same numbers whatever else runs: its thread
    count does not follow the other trainings alive (a sharing run's does)."""
    from dfl.config import build_config
    from dfl.training.run import fit

    monkeypatch.setattr(core_share, "RECHECK_S", 0.0)
    monkeypatch.setattr(core_share, "default_directory", lambda: tmp_path / "places")
    monkeypatch.setattr("dfl.runtime.context.available_cores", lambda: 2)
    monkeypatch.delenv("DFL_SHARE_CORES")
    for chosen in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # a chosen count is never shared
        monkeypatch.delenv(chosen, raising=False)
    (tmp_path / "places").mkdir()
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    seen: list[int] = []
    cfg = build_config(overrides={"epochs": 2, "device": "cpu", "deterministic": deterministic})
    other, _ = hold_a_place(tmp_path / "places")
    try:
        fit(cfg, tmp_path / "run", dataset=tiny_data, epoch_bar=False,
            callbacks=[lambda record: seen.append(torch.get_num_threads())])  # fmt: skip
    finally:
        other.kill()
        other.wait()
        torch.set_num_threads(before)
    assert seen == ([2, 2] if deterministic else [1, 1])  # 2 cores // 2 sharing trainings
