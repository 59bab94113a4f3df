"""Sweeps on synthetic data: every grid point runs exactly once with concurrent workers (on
SQLite and PostgreSQL), a worker killed with SIGKILL loses nothing when the command is rerun,
a diverging trial is recorded and the rest go on, a shorter-epoch point read off a longer
run equals its own run, and a search prunes.

Worker processes cannot receive a fixture's tensors, so the synthetic digits are written as a
directory of IDX files that every worker loads by path."""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import pwd
import re
import resource
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import torch
from optuna.storages import RDBStorage
from optuna.trial import TrialState

from conftest import DFL as CLI
from conftest import write_idx_dataset
from dfl import cli
from dfl.config import build_config
from dfl.sweep import study as studies
from dfl.sweep.launch import run_sweep
from dfl.sweep.spec import check_trials, load_spec
from dfl.sweep.storage import (
    ReconnectingStorage,
    describe_url,
    open_storage,
    stalled_trials,
    storage_url,
    study_id,
)
from dfl.sweep.trial import WorkerContext, run_dir_name
from dfl.sweep.worker import _claim, _fail_stale_trials, claim_siblings, pop_waiting, run_worker
from dfl.training.run import fit
from dfl.training.run_dir import read_history, read_status

# ---------------------------------------------------------------------------------------------
# Fixtures: an IDX dataset on disk, specs, a PostgreSQL server


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Train in one thread here, as each worker does on 2 cores: tiny models gain nothing from
    a second one, and lose a lot when another process holds the other core."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def idx_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_idx_dataset(tmp_path_factory.mktemp("idx"), n_train=1024, n_test=128)


def write_spec(
    path: Path, idx_dir: Path, body: str, *, name: str | None = None, head: str = ""
) -> Path:
    name = name or f"s{uuid.uuid4().hex[:8]}"
    path.write_text(
        f'name = "{name}"\nmetric = "val_accuracy"\nheartbeat_interval = 1\ngrace_period = 2\n'
        f"{head}\n"
        "[base]\n"
        'model = "mlp"\nmodel_args = { hidden = [32] }\nbatch_size = 32\ndevice = "cpu"\n'
        f'data = {{ dataset = "{idx_dir}" }}\n\n{body}'
    )
    return path


def trials_of(spec_path: Path, url: str) -> list[optuna.trial.FrozenTrial]:
    name = load_spec(spec_path).name
    return optuna.load_study(study_name=name, storage=open_storage(url)).get_trials()


def assert_each_point_once(trials: list[optuna.trial.FrozenTrial], n_points: int) -> None:
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    points = Counter(json.dumps(t.params, sort_keys=True) for t in done)
    assert len(points) == n_points and set(points.values()) == {1}, points
    assert len(trials) == n_points  # nothing ran twice, not even a failed duplicate


def _pg_bindir() -> Path | None:
    if shutil.which("pg_config"):
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True)
        if out.returncode == 0 and (Path(out.stdout.strip()) / "initdb").exists():
            return Path(out.stdout.strip())
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: p.parts[-3])
    if versions:
        return versions[-1].parent
    found = shutil.which("initdb")
    return Path(found).parent if found else None


class Postgres:
    """A throwaway PostgreSQL server on loopback, in its own directory, that a test can stop
    and start again; run as `postgres` when we are root (the server refuses root)."""

    def __init__(self, bindir: Path, root: Path, run_as: list[str]) -> None:
        self.bindir, self.root, self.run_as = bindir, root, run_as
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, tool: str, *args: str) -> subprocess.CompletedProcess:
        command = [*self.run_as, str(self.bindir / tool), "-D", str(self.root / "data"), *args]
        return subprocess.run(command, capture_output=True, text=True)

    def init(self) -> subprocess.CompletedProcess:
        return self._run("initdb", "-A", "trust", "-U", "postgres", "--no-sync")

    def start(self) -> subprocess.CompletedProcess:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        return self._run("pg_ctl", "-o", options, "-l", str(self.root / "log"), "-w", "start")

    def stop(self, mode: str = "fast") -> subprocess.CompletedProcess:
        return self._run("pg_ctl", "-m", mode, "-w", "stop")


@contextlib.contextmanager
def throwaway_postgres() -> Iterator[Postgres]:
    """A new server, removed afterwards; skip saying why when none can be started."""
    bindir = _pg_bindir()
    if bindir is None:
        pytest.skip("no PostgreSQL: set DFL_TEST_POSTGRES_URL or install postgresql (initdb)")
    run_as: list[str] = []
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no `postgres` user to run the server")
        run_as = ["runuser", "-u", "postgres", "--"]
    # Not under tmp_path: `postgres` must reach it, and pytest's base directory is root's only.
    root = Path(tempfile.mkdtemp(prefix="dfl-pg-"))
    if run_as:
        os.chown(root, user.pw_uid, user.pw_gid)
    server = Postgres(bindir, root, run_as)
    try:
        for step in (server.init, server.start):
            done = step()
            if done.returncode != 0:
                pytest.skip(f"could not start PostgreSQL ({step.__name__}): {done.stderr[-300:]}")
        yield server
    finally:
        server.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """$DFL_TEST_POSTGRES_URL (CI starts a server, see .ci/run), else a throwaway server
    started here on loopback, else skip saying why."""
    if os.environ.get("DFL_TEST_POSTGRES_URL"):
        yield os.environ["DFL_TEST_POSTGRES_URL"]
        return
    with throwaway_postgres() as server:
        yield server.url


@pytest.fixture
def restartable_postgres() -> Iterator[Postgres]:
    """A server of the test's own, to stop and start (CI's shared one is not the test's to
    stop)."""
    with throwaway_postgres() as server:
        yield server


# ---------------------------------------------------------------------------------------------
# Exactly once: the claim itself, under real concurrency


def claim_race(url: str, n_trials: int = 60, n_claimers: int = 4) -> list[int]:
    """Queue n trials, then let n claimers (each its own storage, hence connection) pop them
    all at once; returns every trial id any claimer got."""
    name = f"race{uuid.uuid4().hex[:8]}"
    study = optuna.create_study(study_name=name, storage=open_storage(url))
    for i in range(n_trials):
        study.enqueue_trial({"x": i})
    got: list[int] = []
    errors: list[BaseException] = []
    start = threading.Barrier(n_claimers)

    def claim() -> None:
        try:
            storage = open_storage(url)
            sid = storage.get_study_id_from_name(name)
            start.wait()
            while (trial_id := pop_waiting(storage, sid)) is not None:
                got.append(trial_id)
        except BaseException as e:  # "database is locked" would land here
            errors.append(e)

    threads = [threading.Thread(target=claim) for _ in range(n_claimers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    return got


def test_sqlite_claims_each_queued_trial_exactly_once(tmp_path: Path):
    got = claim_race(storage_url(None, tmp_path))
    assert sorted(got) == sorted(set(got)) and len(got) == 60


@pytest.mark.postgres
def test_postgres_claims_each_queued_trial_exactly_once(postgres_url: str):
    got = claim_race(storage_url(postgres_url, Path(".")))
    assert sorted(got) == sorted(set(got)) and len(got) == 60


# ---------------------------------------------------------------------------------------------
# In-process worker: failures, epoch reuse, pruning, status


def prepare(spec_path: Path, out: Path) -> str:
    spec = load_spec(spec_path)
    url = storage_url(None, out)
    studies.create_or_load(spec, open_storage(url), out)
    return url


def test_diverging_trial_is_recorded_failed_and_the_sweep_goes_on(
    tmp_path: Path, idx_dir: Path, capsys
):
    spec = write_spec(
        tmp_path / "s.toml",
        idx_dir,
        '[grid]\n"optim.lr" = [0.05, 1e20]\n',
        head="",
    )
    text = spec.read_text().replace(
        "batch_size = 32", 'batch_size = 32\noptim = { name = "sgd" }\nepochs = 2'
    )
    spec.write_text(text)
    out = tmp_path / "sweep"
    url = prepare(spec, out)
    outcomes = run_worker(load_spec(spec).name, url, sweep_dir=out, index=0, log=lambda s: None)
    assert [o.state for o in outcomes] == [TrialState.COMPLETE, TrialState.FAIL]
    failed = trials_of(spec, url)[1]
    assert failed.user_attrs["reason"].startswith("non-finite loss at epoch 1, step ")
    assert read_status(Path(failed.user_attrs["run_dir"]))["status"] == "failed"

    assert cli.main(["sweep", "status", str(spec), "--out", str(out), "--trials"]) == 0
    shown = capsys.readouterr().out
    assert "complete 1  running 0  waiting 0  pruned 0  failed 1" in shown
    assert "best: trial 0  val_accuracy " in shown and "finished" in shown
    assert "failed: trial 1 (optim.lr=1e+20): non-finite loss at epoch 1" in shown

    # --retry-failed queues it again, in the same run directory; it fails the same way.
    study = optuna.load_study(study_name=load_spec(spec).name, storage=open_storage(url))
    assert studies.retry_failed(study) == 1
    again = run_worker(load_spec(spec).name, url, sweep_dir=out, index=0, log=lambda s: None)
    assert [(o.number, o.state) for o in again] == [(2, TrialState.FAIL)]
    retry = trials_of(spec, url)[2]
    assert retry.system_attrs["retry_history"] == [1]
    assert retry.user_attrs["run_dir"] == failed.user_attrs["run_dir"]
    assert cli.main(["sweep", "status", str(spec), "--out", str(out)]) == 0
    assert "failed 1  retried 1" in capsys.readouterr().out


def test_epoch_reuse_equals_separate_runs(tmp_path: Path, idx_dir: Path):
    body = '[grid]\nepochs = [2, 3]\n"optim.lr" = [0.01]\n'
    spec_path = write_spec(tmp_path / "s.toml", idx_dir, body)
    text = spec_path.read_text().replace(
        "batch_size = 32", 'batch_size = 32\nschedule = { name = "exponential", gamma = 0.5 }'
    )
    spec_path.write_text(text)
    out = tmp_path / "sweep"
    url = prepare(spec_path, out)
    run_worker(load_spec(spec_path).name, url, sweep_dir=out, index=0, log=lambda s: None)
    by_epochs = {t.params["epochs"]: t for t in trials_of(spec_path, url)}
    assert sorted(p.name for p in (out / "trials").iterdir() if p.is_dir()) == [
        Path(by_epochs[3].user_attrs["run_dir"]).name
    ]  # one run directory, trained once to 3 epochs
    assert (
        by_epochs[2].user_attrs["epochs_from"]
        == f"{by_epochs[3].user_attrs['run_dir']} curve at epoch 2"
    )
    assert "epochs_from" not in by_epochs[3].user_attrs
    spec = load_spec(spec_path)
    for epochs, trial in by_epochs.items():
        cfg = spec.trial_config({"epochs": epochs, "optim.lr": 0.01})
        alone = fit(cfg, tmp_path / f"alone-{epochs}", epoch_bar=False)
        assert trial.value == alone.final["val_accuracy"]
        assert trial.user_attrs["final"]["val_loss"] == alone.final["val_loss"]
        curve = [
            {k: r[k] for k in r if k not in ("seconds", "samples_per_s")} for r in alone.history
        ]
        assert [{k: r[k] for k in r if k != "seconds"} for r in trial.user_attrs["curve"]] == curve
        assert trial.intermediate_values == {r["epoch"]: r["val_accuracy"] for r in alone.history}
        assert trial.user_attrs["config"]["epochs"] == epochs
        assert trial.user_attrs["n_parameters"] > 0


def test_grid_points_that_differ_in_seed_and_rate_train_as_one_group(tmp_path: Path, idx_dir: Path):
    """A worker claims the queued points that differ from its trial only in their seed and
    learning rate and trains them as one fused group (a dense model at batch 16 on a CPU, where
    that pays), with the shorter epochs read off the longer runs as alone; each stays its own
    trial, with the value, curve and pruner reports of the same run trained alone."""
    body = '[grid]\nseed = [0, 1, 2]\nepochs = [1, 2]\n"optim.lr" = [0.01, 0.02]\n'
    spec_path = write_spec(tmp_path / "s.toml", idx_dir, body)
    spec_path.write_text(spec_path.read_text().replace("batch_size = 32", "batch_size = 16"))
    out = tmp_path / "sweep"
    url = prepare(spec_path, out)
    said: list[str] = []
    run_worker(load_spec(spec_path).name, url, sweep_dir=out, index=0, log=said.append)
    trials = trials_of(spec_path, url)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 12
    groups = {tuple(t.user_attrs["trained_with"]) for t in trials}
    assert len(groups) == 2 and all(len(g) == 6 for g in groups)  # the 2 epochs' points
    # One training: the grid queues the longest epochs first, the shorter ones read them off.
    assert sum("6 runs as one fused model" in line for line in said) == 1
    spec = load_spec(spec_path)
    for trial in trials:
        cfg = spec.trial_config(trial.params)
        if cfg.seed != 2:
            continue
        alone = fit(cfg.model_copy(update={"epochs": 2}), tmp_path / f"alone{trial.number}",
                    epoch_bar=False, until_epoch=cfg.epochs)  # fmt: skip
        expected = alone.history[cfg.epochs - 1]["val_loss"]
        assert trial.user_attrs["curve"][-1]["val_loss"] == pytest.approx(expected, rel=1e-5)
        assert list(trial.intermediate_values) == list(range(1, cfg.epochs + 1))


def test_a_worker_claims_a_whole_group_rather_than_the_rest_of_one_being_claimed(
    tmp_path: Path, idx_dir: Path
):
    """Two workers starting together: the one that finds a group's first trial taken (its
    claimer still taking the siblings) claims the next group whole instead of splitting the
    first; the rest of a taken group is claimed only once nothing else is queued."""
    body = "[grid]\nbatch_size = [16, 8]\nseed = [0, 1, 2]\n"
    spec_path = write_spec(tmp_path / "s.toml", idx_dir, body)
    url = prepare(spec_path, tmp_path / "sweep")
    storage = open_storage(url)
    study, spec = studies.load(load_spec(spec_path).name, storage)
    ctx = WorkerContext(spec=spec, study=study, storage=study._storage,
                        study_id=study_id(storage, spec.name), sweep_dir=tmp_path / "sweep",
                        reuse_epochs=check_trials(spec), log=lambda line: None)  # fmt: skip
    batch = {t.number: t.system_attrs["fixed_params"]["batch_size"] for t in study.trials}
    first = pop_waiting(ctx.storage, ctx.study_id)  # the other worker, before its siblings
    assert [batch[n] for n in sorted(batch)][:3] == [16] * 3  # the queue's next: its siblings
    assert first is not None
    taken = ctx.storage.get_trial(first).number
    claimed = _claim(ctx)
    assert claimed is not None
    group = [claimed[0].number] + [t.number for t, _ in claim_siblings(ctx, claimed[1])]
    assert len(group) == 3 and {batch[n] for n in group} == {16, 8} - {batch[taken]}
    rest = _claim(ctx)  # only the first group's two are left
    assert rest is not None and batch[rest[0].number] == batch[taken]


def test_a_continued_search_draws_new_points(tmp_path: Path, idx_dir: Path):
    """A search extended from 3 to 6 trials drew its first 3 points again (each launch seeded
    its worker alike), read them back from their run directories in no time, and spent half
    its budget on nothing new. A fresh search by one worker still repeats itself."""
    body = (
        '[search]\nn_trials = 3\npruner = "none"\n'
        '[search.space]\n"optim.lr" = { low = 1e-4, high = 0.1, log = true }\n'
    )
    spec_path = write_spec(tmp_path / "s.toml", idx_dir, body, name="continued")
    spec_path.write_text(spec_path.read_text().replace("batch_size = 32", "batch_size = 256"))

    def drawn(out: Path) -> list[float]:
        url = prepare(spec_path, out)
        run_worker("continued", url, sweep_dir=out, index=0, log=lambda s: None)
        return [t.params["optim.lr"] for t in trials_of(spec_path, url)]

    first = drawn(tmp_path / "a")
    assert drawn(tmp_path / "b") == first  # the same search, again from scratch
    spec_path.write_text(spec_path.read_text().replace("n_trials = 3", "n_trials = 6"))
    extended = drawn(tmp_path / "a")
    assert extended[:3] == first and len(set(extended)) == 6, extended


def test_search_with_median_pruner_prunes(tmp_path: Path, idx_dir: Path):
    body = (
        "[search]\nn_trials = 8\nsampler_seed = 3\nstartup_trials = 2\nwarmup_epochs = 0\n"
        '[search.space]\n"optim.lr" = { low = 1e-5, high = 0.1, log = true }\n'
    )
    spec_path = write_spec(tmp_path / "s.toml", idx_dir, body)
    spec_path.write_text(
        spec_path.read_text().replace("batch_size = 32", "batch_size = 32\nepochs = 3")
    )
    out = tmp_path / "sweep"
    url = prepare(spec_path, out)
    outcomes = run_worker(
        load_spec(spec_path).name, url, sweep_dir=out, index=0, log=lambda s: None
    )
    states = Counter(o.state for o in outcomes)
    assert (
        len(outcomes) == 8 and states[TrialState.PRUNED] >= 1 and states[TrialState.COMPLETE] >= 2
    )
    pruned = next(t for t in trials_of(spec_path, url) if t.state == TrialState.PRUNED)
    assert pruned.user_attrs["reason"].startswith("pruned at epoch ")
    assert read_status(Path(pruned.user_attrs["run_dir"]))["status"] == "pruned"
    # A rerun finds the budget spent and runs nothing.
    assert (
        run_worker(load_spec(spec_path).name, url, sweep_dir=out, index=0, log=lambda s: None) == []
    )


def test_rerun_with_a_changed_spec_is_refused(tmp_path: Path, idx_dir: Path):
    spec_path = write_spec(
        tmp_path / "s.toml", idx_dir, '[grid]\n"optim.lr" = [0.01, 0.1]\n', name="same"
    )
    out = tmp_path / "sweep"
    prepare(spec_path, out)
    write_spec(tmp_path / "s.toml", idx_dir, '[grid]\n"optim.lr" = [0.01, 0.2]\n', name="same")
    with pytest.raises(Exception, match=r"'grid.optim.lr' was \[0.01, 0.1\], now \[0.01, 0.2\]"):
        prepare(spec_path, out)


# ---------------------------------------------------------------------------------------------
# Real worker processes


# Four points that differ in more than their seed, learning rate and weight decay: each trains
# as a trial alone. SEEDS_2X2's two points of two seeds each train as two groups (a worker
# claims a point's seeds together).
GRID_2X2 = '[grid]\n"model_args.hidden" = [[16], [32]]\n"model_args.dropout" = [0.0, 0.1]\n'
SEEDS_2X2 = '[grid]\n"model_args.hidden" = [[16], [32]]\nseed = [0, 1]\n'


def slow_enough(spec_path: Path, epochs: int) -> None:
    # Trials of a few hundred milliseconds per epoch, so two workers overlap and a kill
    # lands mid-trial.
    spec_path.write_text(
        spec_path.read_text().replace("batch_size = 32", f"batch_size = 8\nepochs = {epochs}")
    )


@pytest.mark.slow
def test_grid_with_two_workers_on_sqlite_runs_each_point_once(
    tmp_path: Path, idx_dir: Path, capsys
):
    spec_path = write_spec(tmp_path / "s.toml", idx_dir, GRID_2X2)
    slow_enough(spec_path, 4)
    out = tmp_path / "sweep"
    command = [*CLI, "sweep", str(spec_path), "--workers", "2", "--threads", "1", "--out", str(out)]
    cli.build_parser()  # import every command module now, so the status below is quick
    # Every trial holds still for 3 s at its second epoch's checkpoint, so the second round of
    # trials is surely running when the status below looks: a fast machine can't race past it.
    env = {**os.environ, "DFL_FAULT_PAUSE_BEFORE_RENAME": "2:3"}
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    # While it runs: `dfl sweep status` from another process's point of view.
    url = storage_url(None, out)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        with contextlib.suppress(KeyError):  # the study is not created yet
            exists = (out / "study.db").exists()
            states = {t.state for t in trials_of(spec_path, url)} if exists else set()
            if {TrialState.COMPLETE, TrialState.RUNNING} <= states:
                break
        time.sleep(0.05)
    assert cli.main(["sweep", "status", str(spec_path), "--out", str(out)]) == 0
    shown = capsys.readouterr().out
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr

    assert_each_point_once(trials_of(spec_path, url), 4)
    workers = {t.user_attrs["worker"] for t in trials_of(spec_path, url)}
    assert len(workers) == 2  # both workers took trials: the claims really were concurrent
    assert "running " in shown and "ETA " in shown and "best: trial " in shown, shown
    assert "2 worker(s) x " in stderr and stderr.count(" complete: val_accuracy ") == 4
    assert "complete 4  running 0  waiting 0  pruned 0  failed 0" in stdout
    assert "finished" in stdout


@pytest.mark.slow
@pytest.mark.postgres
def test_grid_with_two_workers_on_postgres_runs_each_point_once(
    tmp_path: Path, idx_dir: Path, postgres_url: str
):
    spec_path = write_spec(tmp_path / "s.toml", idx_dir, GRID_2X2)
    slow_enough(spec_path, 4)
    status = run_sweep(
        spec_path, workers=2, threads=1, storage=postgres_url, out=tmp_path / "sweep"
    )
    assert status.finished and status.counts["complete"] == 4
    assert status.storage.startswith("postgresql")
    trials = trials_of(spec_path, storage_url(postgres_url, tmp_path))
    assert_each_point_once(trials, 4)
    assert len({t.user_attrs["worker"] for t in trials}) == 2


@pytest.mark.slow
@pytest.mark.parametrize("grid", [GRID_2X2, SEEDS_2X2], ids=["alone", "grouped"])
def test_sigkill_mid_trial_then_rerun_resumes_from_the_checkpoint(
    tmp_path: Path, idx_dir: Path, grid: str, capsys
):
    spec_path = write_spec(tmp_path / "s.toml", idx_dir, grid)
    slow_enough(spec_path, 6)
    out = tmp_path / "sweep"
    command = [*CLI, "sweep", str(spec_path), "--workers", "2", "--threads", "1", "--out", str(out)]
    victim = kill_mid_trial(command, out / "trials")
    assert read_status(victim)["status"] == "running"  # as a kill leaves it
    # Past the grace period (2 s), `dfl sweep status` tells the dead trials from live ones.
    status = ["sweep", "status", str(spec_path), "--out", str(out), "--trials"]
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        assert cli.main(status) == 0
        shown = capsys.readouterr().out
        if "no worker is alive" in shown:
            break
        time.sleep(0.5)
    assert "no worker is alive: run the sweep again" in shown, shown
    assert "stalled: trial " in shown and "its worker is gone" in shown and "ETA" not in shown
    assert re.search(r"running (\d) \(\1 stalled\)", shown), shown
    assert re.search(r"^  \d+ +stalled ", shown, re.MULTILINE), shown  # in the --trials table
    saved = max(
        int(p.name.removeprefix("epoch-")) for p in (victim / "checkpoints").glob("epoch-*")
    )
    before = read_history(victim)[:saved]

    again = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "complete 4  running 0  waiting 0  pruned 0  failed 0" in again.stdout
    trials = trials_of(spec_path, storage_url(None, out))
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(done) == 4 and len({json.dumps(t.params, sort_keys=True) for t in done}) == 4
    resumed = [t for t in done if t.user_attrs["run_dir"] == str(victim)]
    assert len(resumed) == 1 and resumed[0].system_attrs["retry_history"]  # requeued, once
    assert resumed[0].user_attrs["resumed_from_epoch"] == saved
    history = read_history(victim)
    assert [r["epoch"] for r in history] == list(range(1, 7))  # continuous, nothing lost
    # The epochs trained before the kill are the very records written then (their timings
    # included): the run continued from its checkpoint instead of starting over.
    assert history[: len(before)] == before
    logs = "".join(p.read_text() for p in (out / "workers").glob("*.log"))
    assert f"resumed {victim} from epoch" in logs


@pytest.mark.slow
def test_a_killed_cnn_trial_resumes_to_the_value_of_an_uninterrupted_run(
    tmp_path: Path, idx_dir: Path
):
    """The trial resume is exact for a channels-last CNN with batch norm in the precision
    `auto` picks (bf16 on a CPU with native bf16), not only for the dense models."""
    spec_path = write_spec(tmp_path / "s.toml", idx_dir, "[grid]\nseed = [0]\n")
    spec_path.write_text(
        spec_path.read_text()
        .replace('model = "mlp"\nmodel_args = { hidden = [32] }', 'model = "cnn_lab"')
        .replace("batch_size = 32", "batch_size = 32\nepochs = 4")
    )
    out = tmp_path / "sweep"
    command = [*CLI, "sweep", str(spec_path), "--workers", "1", "--threads", "1", "--out", str(out)]
    victim = kill_mid_trial(command, out / "trials")
    again = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert again.returncode == 0, again.stdout + again.stderr
    trials = trials_of(spec_path, storage_url(None, out))
    (trial,) = [t for t in trials if t.state == TrialState.COMPLETE]  # the requeued one
    assert trial.user_attrs["resumed_from_epoch"] == 2
    # The same config trained without a stop, in this process, on the worker's one thread.
    cfg = build_config(victim / "config.toml").model_copy(update={"threads": 1})
    whole = fit(cfg, tmp_path / "whole", epoch_bar=False)
    timing = ("seconds", "samples_per_s")
    strip = lambda h: [{k: v for k, v in r.items() if k not in timing} for r in h]  # noqa: E731
    assert strip(read_history(victim)) == strip(whole.history)
    assert trial.value == whole.final["val_accuracy"]


def kill_mid_trial(command: list[str], trials: Path) -> Path:
    """Run the sweep `command` until a trial is mid-checkpoint, then SIGKILL its whole process
    group (the parent and every worker, no goodbye); returns that trial's run directory.
    Every trial holds still while writing its third epoch's checkpoint: the kill surely lands
    mid-trial, however fast the machine."""
    env = {**os.environ, "DFL_FAULT_PAUSE_BEFORE_RENAME": "3:60"}
    first = subprocess.Popen(
        command, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env
    )
    try:
        return wait_for_mid_trial(trials, first)
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()


def wait_for_mid_trial(trials: Path, proc: subprocess.Popen, epoch: int = 3) -> Path:
    """A run directory paused mid-checkpoint (epoch 3 of 6), while its worker runs."""
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[0]
        for run_dir in trials.glob("*") if trials.exists() else []:
            if any((run_dir / "checkpoints").glob(f".epoch-{epoch:04d}.tmp-*/state.json")):
                return run_dir
        time.sleep(0.02)
    raise AssertionError("no trial reached its checkpoint in time")


@pytest.mark.slow
def test_two_sweep_commands_at_once_on_a_new_sqlite_study(tmp_path: Path, idx_dir: Path):
    """Both create, queue and work the same study: no "database is locked", no point queued
    or run twice, both commands end well."""
    spec_path = write_spec(tmp_path / "s.toml", idx_dir, GRID_2X2)
    out = tmp_path / "sweep"
    command = [*CLI, "sweep", str(spec_path), "--workers", "1", "--threads", "1", "--out", str(out)]
    procs = [
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    results = [p.communicate(timeout=120) for p in procs]
    for proc, (_, stderr) in zip(procs, results, strict=True):
        assert proc.returncode == 0, stderr
        assert "database is locked" not in stderr
    trials = trials_of(spec_path, storage_url(None, out))
    assert len(trials) == 4  # queued once, not twice
    assert_each_point_once(trials, 4)


@pytest.mark.slow
@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_sigkill_of_one_worker_among_two_the_study_still_completes(
    tmp_path: Path, idx_dir: Path, backend: str, request
):
    """Kill one worker mid-trial; the other notices the silent heartbeat, its trial is
    requeued and resumed, and the same command ends with every point done exactly once."""
    spec_path = write_spec(tmp_path / "s.toml", idx_dir, GRID_2X2)
    slow_enough(spec_path, 6)
    out = tmp_path / "sweep"
    storage = (
        ["--storage", request.getfixturevalue("postgres_url")] if backend == "postgres" else []
    )
    command = [
        *CLI,
        "sweep",
        str(spec_path),
        "--workers",
        "2",
        "--threads",
        "1",
        "--out",
        str(out),
        *storage,
    ]
    # Each trial pauses 2 s while writing its third checkpoint: the kill lands mid-trial.
    env = {**os.environ, "DFL_FAULT_PAUSE_BEFORE_RENAME": "3:2"}
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    victim = wait_for_mid_trial(out / "trials", proc)
    os.kill(read_status(victim)["pid"], signal.SIGKILL)  # that trial's worker, and only it
    stdout, _ = proc.communicate(timeout=180)
    assert proc.returncode == 0, stdout
    assert "exited with code -9" in stdout  # the launcher saw the death and went on
    trials = trials_of(spec_path, storage_url(storage[1] if storage else None, out))
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len({json.dumps(t.params, sort_keys=True) for t in done}) == len(done) == 4
    assert [t.state for t in trials].count(TrialState.FAIL) == 1  # the killed one, requeued
    resumed = [
        t
        for t in trials
        if t.state == TrialState.COMPLETE and t.user_attrs["run_dir"] == str(victim)
    ]
    assert len(resumed) == 1 and resumed[0].system_attrs["retry_history"]
    assert [r["epoch"] for r in read_history(victim)] == list(range(1, 7))


# ---------------------------------------------------------------------------------------------
# A database server that goes away mid-sweep


def sweep_args(spec_path: Path, out: Path, server: Postgres) -> list[str]:
    return [
        "sweep", str(spec_path), "--workers", "2", "--threads", "1", "--out", str(out),
        "--storage", server.url,
    ]  # fmt: skip


def start_mid_trial(command: list[str], out: Path) -> subprocess.Popen:
    """Start the sweep `command`; return once a trial is mid-way (every trial holds still 2 s
    writing its epoch-2 checkpoint, so both workers are training then)."""
    env = {**os.environ, "DFL_FAULT_PAUSE_BEFORE_RENAME": "2:2"}
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        wait_for_mid_trial(out / "trials", proc, epoch=2)
    except BaseException:
        proc.kill()
        raise
    return proc


def worker_logs(out: Path) -> list[str]:
    return [p.read_text() for p in sorted((out / "workers").glob("*.log"))]


def test_every_storage_call_that_opens_a_transaction_waits_out_an_outage():
    """ReconnectingStorage retries RDBStorage's methods by name: one that Optuna adds or
    renames would go unretried, and a server restart would kill the sweep again there."""
    opens = {
        name
        for name, method in inspect.getmembers(RDBStorage, inspect.isfunction)
        if "_create_scoped_session(" in inspect.getsource(method)
    }
    assert len(opens) > 20
    assert [n for n in opens if getattr(ReconnectingStorage, n) is getattr(RDBStorage, n)] == []


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_stalled_trials_are_the_running_ones_silent_past_the_grace_period(
    tmp_path: Path, backend: str, request
):
    """`dfl sweep status`'s judgement, by the database's clock (SQLite's has whole seconds):
    a trial that beat 3 s ago is stalled at a grace period of 2 s, one that beat just now is
    not, nor one that never beat (a claim being made), nor a finished one; nothing changes."""
    given = request.getfixturevalue("postgres_url") if backend == "postgres" else None
    url = storage_url(given, tmp_path)
    storage = open_storage(url)
    study = optuna.create_study(storage=storage, study_name=f"stall-{backend}-{os.getpid()}")
    sid = storage.get_study_id_from_name(study.study_name)
    dead, live, silent, done = (storage.create_new_trial(sid) for _ in range(4))
    storage.record_heartbeat(dead)
    storage.record_heartbeat(done)
    storage.set_trial_state_values(done, TrialState.COMPLETE, [1.0])
    time.sleep(3.2)
    storage.record_heartbeat(live)
    stalled = stalled_trials(url, study.study_name, heartbeat_interval=1, grace_period=2)
    assert stalled == {storage.get_trial_number_from_id(dead)}
    states = [storage.get_trial(t).state for t in (dead, live, silent, done)]
    assert states == [TrialState.RUNNING] * 3 + [TrialState.COMPLETE]


@pytest.mark.slow
@pytest.mark.postgres
def test_right_after_an_outage_no_trial_is_taken_for_dead(restartable_postgres: Postgres):
    """Nobody could beat while the server was away, so as it returns every running trial
    looks stale: a verdict then would fail the live workers' trials. It waits a grace period
    and a beat from the reconnection, in which live workers beat, then fails a trial whose
    worker is really gone."""
    server = restartable_postgres
    said: list[str] = []
    url = storage_url(server.url, Path("."))
    storage = open_storage(url, heartbeat_interval=1, grace_period=2, log=said.append)
    study = optuna.create_study(storage=storage)
    trial_id = storage.create_new_trial(storage.get_study_id_from_name(study.study_name))
    storage.record_heartbeat(trial_id)  # and never again, as a worker that died
    assert server.stop().returncode == 0
    time.sleep(3)  # past the grace period
    restart = threading.Timer(1, server.start)
    restart.start()
    try:
        _fail_stale_trials(study)  # waits for the server
    finally:
        restart.join()
    assert storage.get_trial(trial_id).state == TrialState.RUNNING
    assert len(said) == 1 and " unreachable (" in said[0], said
    time.sleep(3)
    _fail_stale_trials(study)
    assert storage.get_trial(trial_id).state == TrialState.FAIL


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.parametrize(("mode", "away_s"), [("fast", 7), ("immediate", 0)])
def test_a_database_restart_mid_sweep_is_waited_out(
    tmp_path: Path, idx_dir: Path, restartable_postgres: Postgres, mode: str, away_s: float
):
    """The server stops while both workers train (`fast`: their sessions are ended; or
    `immediate`: cut) and starts again `away_s` seconds later. The workers and the launcher
    wait for it, each saying so in one line: exit 0, every point completed once, no trial
    failed (the heartbeats missed during the outage are not taken for dead workers), no
    traceback. It was exit 1 with a StorageInternalError and both workers dead, their trials
    left RUNNING; the immediate stop and start killed a worker."""
    server = restartable_postgres
    spec_path = write_spec(tmp_path / "s.toml", idx_dir, GRID_2X2)
    slow_enough(spec_path, 4)
    out = tmp_path / "sweep"
    proc = start_mid_trial([*CLI, *sweep_args(spec_path, out, server)], out)
    try:
        assert server.stop(mode).returncode == 0
        time.sleep(away_s)
        assert server.start().returncode == 0
        stdout, stderr = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr
    assert_each_point_once(trials_of(spec_path, storage_url(server.url, out)), 4)
    outputs = [stdout + stderr, *worker_logs(out)]
    assert not any("Traceback" in text for text in outputs), outputs
    said = [text.count(" unreachable (") for text in outputs]  # launcher, worker, worker
    if away_s:
        assert said == [1, 1, 1], outputs
    else:  # a restart without downtime may pass unnoticed: the pool's pre-ping reconnects
        assert max(said) <= 1, outputs


@pytest.mark.slow
@pytest.mark.postgres
def test_a_database_away_past_the_limit_is_one_line_and_the_rerun_completes(
    tmp_path: Path, idx_dir: Path, restartable_postgres: Postgres
):
    """The server stays away past the launcher's limit (lowered to 3 s here; its workers,
    which it then stops, keep theirs): one line `dfl: error: database ... unreachable for 3 s
    ...`, exit 1, no traceback, the trials that were training left RUNNING. With the server
    back, the same command fails those by their silent heartbeats, requeues each once and
    completes the sweep."""
    server = restartable_postgres
    spec_path = write_spec(tmp_path / "s.toml", idx_dir, GRID_2X2)
    slow_enough(spec_path, 4)
    out = tmp_path / "sweep"
    args = sweep_args(spec_path, out, server)
    impatient = "import dfl.sweep.storage as s; s.OUTAGE_LIMIT_S = 3; " + CLI[-1]
    proc = start_mid_trial([sys.executable, "-c", impatient, *args], out)
    try:
        assert server.stop("fast").returncode == 0
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, stderr
    assert not any("Traceback" in text for text in [stdout, stderr, *worker_logs(out)])
    url = storage_url(server.url, out)
    error = stderr.strip().splitlines()[-1]
    said = f"dfl: error: database {describe_url(url)} unreachable for 3 s ("
    assert error.startswith(said), error
    assert error.endswith(
        "; rerun the same command once it is back: finished trials are kept, and the ones "
        "left running are requeued"
    )

    assert server.start().returncode == 0
    left = {t.number for t in trials_of(spec_path, url) if t.state == TrialState.RUNNING}
    assert left  # the trials in training when it gave up
    again = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=180)
    assert again.returncode == 0, again.stderr
    trials = trials_of(spec_path, url)
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len({json.dumps(t.params, sort_keys=True) for t in done}) == len(done) == 4
    assert {t.number for t in trials if t.state == TrialState.FAIL} == left
    requeued = [n for t in done for n in t.system_attrs.get("retry_history", [])]
    assert sorted(requeued) == sorted(left)  # each once
    assert "Traceback" not in again.stdout + again.stderr


def sgd_rates_spec(tmp_path: Path, idx_dir: Path, rates: str) -> Path:
    """A grid over SGD learning rates (a TOML list's items), one epoch each: 1e20 diverges."""
    spec = write_spec(tmp_path / "s.toml", idx_dir, f'[grid]\n"optim.lr" = [{rates}]\n')
    spec.write_text(
        spec.read_text().replace(
            "batch_size = 32", 'batch_size = 32\noptim = { name = "sgd" }\nepochs = 1'
        )
    )
    return spec


@pytest.mark.slow
def test_a_sweep_whose_every_trial_failed_exits_4_naming_the_failures(
    tmp_path: Path, idx_dir: Path, capsys
):
    """Every trial diverges: the status is printed, then one line with the count and the
    first failure's reason, and exit 4 (it was exit 0, as if the sweep had worked)."""
    spec = sgd_rates_spec(tmp_path, idx_dir, "1e20, 1e30")
    out = tmp_path / "sweep"
    argv = ["sweep", str(spec), "--workers", "1", "--threads", "1", "--out", str(out)]
    assert cli.main(argv) == 4
    shown = capsys.readouterr()
    assert "complete 0  running 0  waiting 0  pruned 0  failed 2" in shown.out
    error = shown.err.strip().splitlines()[-1]
    assert error.startswith(
        f"dfl: error: sweep {load_spec(spec).name}: no trial completed (2 failed, the first: "
        "trial 0 (optim.lr=1e+20): non-finite loss at epoch 1, step "
    )
    assert error.endswith(
        "); if the cause lies outside the spec (disk, memory), fix it and rerun with "
        "--retry-failed; a changed spec is a new sweep (rename it)"
    )


@pytest.mark.slow
def test_a_sweep_with_a_failed_trial_exits_4_and_keeps_the_completed_ones(
    tmp_path: Path, idx_dir: Path, capsys
):
    """One point diverges, one completes: the status, then one line naming the failure, and
    exit 4 (as `dfl reproduce` with a failed experiment), where it exited 0; a rerun keeps the
    completed trial and says the same."""
    spec = sgd_rates_spec(tmp_path, idx_dir, "0.05, 1e30")
    argv = ["sweep", str(spec), "--workers", "1", "--threads", "1", "--out", str(tmp_path / "o")]
    for _ in range(2):
        assert cli.main(argv) == 4
        shown = capsys.readouterr()
        assert "complete 1  running 0  waiting 0  pruned 0  failed 1" in shown.out
        error = shown.err.strip().splitlines()[-1]
        assert error.startswith(
            f"dfl: error: sweep {load_spec(spec).name}: 1 failed, trial 1 "
            "(optim.lr=1e+30): non-finite loss at epoch 1, step "
        )
        assert "(1 completed); if the cause lies outside the spec" in error


@pytest.mark.slow
@pytest.mark.parametrize("limit", [200_000, 450_000])
def test_a_full_disk_under_the_sweep_database_is_one_line_and_a_rerun_completes(
    tmp_path: Path, idx_dir: Path, limit: int
):
    """Writes past `limit` bytes fail (EFBIG, as on a full disk) in a real `dfl sweep` with two
    workers: at 200 kB the launcher's first writes to study.db fail, at 450 kB the workers'
    (SQLite's "disk I/O error"). Each process ends with one line naming the database, no
    traceback anywhere; run again with room, every point completes once (a trial the disk
    stopped goes back in the queue, or is requeued by its silent heartbeat when even that
    write failed; none is recorded failed for the disk's sake)."""
    spec = write_spec(
        tmp_path / "s.toml",
        idx_dir,
        '[grid]\n"optim.lr" = [1e-3, 2e-3, 3e-3, 4e-3]\nseed = [1, 2]\n',
    )
    out = tmp_path / "sweep"
    argv = [*CLI, "sweep", str(spec), "--workers", "2", "--threads", "1", "--out", str(out)]

    def small_files_only() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    full = subprocess.run(argv, preexec_fn=small_files_only, capture_output=True, text=True)
    logs = "".join(p.read_text() for p in (out / "workers").glob("*.log"))
    assert full.returncode != 0
    assert "Traceback" not in full.stderr + logs
    assert f"cannot write the sweep database {out / 'study.db'} (disk I/O error" in full.stderr
    again = subprocess.run(argv, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    done = [
        t
        for t in trials_of(spec, f"sqlite:///{out / 'study.db'}")
        if t.state == TrialState.COMPLETE
    ]
    assert len({json.dumps(t.params, sort_keys=True) for t in done}) == len(done) == 8


def stop_outside_a_write(pid: int, database: Path) -> None:
    """SIGSTOP `pid` at a moment it holds no write lock on the SQLite study (its heartbeat
    thread writes every second): stopped inside a write, it would hold up every worker's
    writes, not only its own trial's, until it continues."""
    while True:
        os.kill(pid, signal.SIGSTOP)
        while Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "T":
            time.sleep(0.001)  # the signal is delivered, not yet acted on
        with contextlib.closing(sqlite3.connect(database, timeout=0.5)) as conn:
            try:
                conn.execute("BEGIN IMMEDIATE")
                conn.rollback()
                return
            except sqlite3.OperationalError:  # "database is locked": let it finish its write
                pass
        os.kill(pid, signal.SIGCONT)
        time.sleep(0.05)


@pytest.mark.slow
def test_a_worker_stopped_past_the_grace_period_drops_its_trial_and_goes_on(
    tmp_path: Path, idx_dir: Path
):
    """SIGSTOP a worker mid-trial past the grace period: the other worker fails its trial and
    queues it again. After SIGCONT the stopped worker finds the trial taken over at its next
    report (it crashed there with UpdateFinishedTrialError), says so in one line, lets go of
    the run directory and claims the next trial; the requeued trial resumes the run from its
    checkpoint, and every point completes exactly once."""
    spec_path = write_spec(tmp_path / "s.toml", idx_dir, GRID_2X2)  # grace period 2 s
    slow_enough(spec_path, 4)
    out = tmp_path / "sweep"
    command = [*CLI, "sweep", str(spec_path), "--workers", "2", "--threads", "1", "--out", str(out)]
    # Every trial holds still 2 s writing its epoch-2 checkpoint: stopped there, mid-trial.
    env = {**os.environ, "DFL_FAULT_PAUSE_BEFORE_RENAME": "2:2"}
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    url = storage_url(None, out)
    try:
        victim = wait_for_mid_trial(out / "trials", proc, epoch=2)
        pid = read_status(victim)["pid"]
        stop_outside_a_write(pid, out / "study.db")
        try:
            taken = wait_until_failed(spec_path, url, victim)
        finally:
            os.kill(pid, signal.SIGCONT)
        stdout, _ = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stdout
    assert "exited with code" not in stdout  # the stopped worker did not crash
    trials = trials_of(spec_path, url)
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len({json.dumps(t.params, sort_keys=True) for t in done}) == len(done) == 4
    assert [t.number for t in trials if t.state == TrialState.FAIL] == [taken.number]
    (retry,) = [t for t in done if t.system_attrs.get("retry_history") == [taken.number]]
    assert retry.user_attrs["run_dir"] == str(victim)
    assert retry.user_attrs["resumed_from_epoch"] == 2
    assert [r["epoch"] for r in read_history(victim)] == [1, 2, 3, 4]

    stopped = taken.user_attrs["worker"]
    logs = {p.name: p.read_text() for p in (out / "workers").glob("*.log")}
    (log,) = [text for text in logs.values() if f"worker {stopped} on study" in text]
    assert log.count(f"trial {taken.number} was taken over by another worker") == 1
    assert f"worker {stopped} done: " in log
    # It went on: a later trial completed in its hands.
    assert any(t.user_attrs["worker"] == stopped and t.number > taken.number for t in done)
    assert not any("Traceback" in text or "UpdateFinished" in text for text in logs.values())


def wait_until_failed(spec_path: Path, url: str, run_dir: Path) -> optuna.trial.FrozenTrial:
    """The trial of `run_dir` once another worker has failed it (and queued it again)."""
    study = optuna.load_study(study_name=load_spec(spec_path).name, storage=open_storage(url))
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        for t in study.get_trials(deepcopy=False):
            if t.state == TrialState.FAIL and t.user_attrs.get("run_dir") == str(run_dir):
                return t
        time.sleep(0.1)
    raise AssertionError(f"no worker took over the trial of {run_dir} in time")


@contextlib.contextmanager
def unwritable(path: Path) -> Iterator[None]:
    """`path` a directory no process can create anything in: immutable (chattr +i, which
    binds root too), or read-only where we are not root."""
    chattr = shutil.which("chattr")
    if chattr and subprocess.run([chattr, "+i", str(path)], capture_output=True).returncode == 0:
        try:
            yield
        finally:
            subprocess.run([chattr, "-i", str(path)], check=True)
        return
    if os.geteuid() == 0:
        pytest.skip("cannot make a directory unwritable here (root without chattr)")
    path.chmod(0o555)
    try:
        yield
    finally:
        path.chmod(0o755)


@pytest.mark.slow
def test_a_failed_grid_point_fails_the_experiment_and_the_next_run_retries_it(tmp_path: Path):
    """`dfl reproduce` of the autoencoder experiment with one grid run's directory unwritable:
    its points fail, so the experiment fails naming them and why, rather than select from the
    rest of the grid (it crashed: "min() arg is an empty sequence", and again on every rerun,
    the failed trials never retried). Once the directory is writable, the rerun retries them
    and completes."""
    from dfl.experiments import ae  # here: the experiments import matplotlib

    data = write_idx_dataset(tmp_path / "digits", n_train=3000, n_test=600)
    out = tmp_path / "repro"
    argv = ["reproduce", "--profile", "smoke", "--dataset", str(data), "--device", "cpu"]
    argv += ["--seeds", "1", "--out", str(out), "--only", "ae", "--experiments-at-once", "1"]
    smoke = ae.PROFILES["smoke"]  # the longest epochs: the run the shorter point is read off
    point = {"batch_size": smoke.batches[0], "model_args.enc": smoke.encs[0]}
    point.update({"epochs": max(smoke.epochs), "seed": smoke.grid_seeds[0]})
    trial_dir = out / "ae" / "sweeps" / "grid" / "trials" / run_dir_name(point)
    trial_dir.mkdir(parents=True)
    with unwritable(trial_dir):
        assert cli.main(argv) == 4
    failed = json.loads((out / "ae" / "result.json").read_text())
    assert failed["status"] == "failed"
    reason = failed["reason"]
    assert reason.startswith("grid ae-grid: 2 of 4 points failed, so none is selected (")
    assert reason.count(f"cannot write to run directory {trial_dir}: ") == 2
    assert reason.endswith("; the next run of this command retries them")

    assert cli.main(argv) == 0
    result = json.loads((out / "ae" / "result.json").read_text())
    assert result["status"] == "completed" and len(result["result"]["grid"]) == 4
    study = optuna.load_study(
        study_name="ae-grid", storage=open_storage(storage_url(None, trial_dir.parents[1]))
    )
    retried = [t for t in study.get_trials() if t.system_attrs.get("retry_history")]
    assert len(retried) == 2 and {t.state for t in retried} == {TrialState.COMPLETE}
    assert (trial_dir / "status.json").exists()
