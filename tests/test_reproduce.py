"""`dfl reproduce` end to end on synthetic data (smoke profile), resuming without retraining,
and the report rebuilt from saved results alone."""

import dataclasses
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import check_page, write_idx_dataset
from dfl.cli import main
from dfl.config import build_config
from dfl.errors import ConfigError, ExperimentsFailed
from dfl.experiments import EXPERIMENTS, engine
from dfl.experiments.context import Context
from dfl.experiments.registry import REGISTRY
from dfl.report.build import build_report
from dfl.reproduce import reproduce
from dfl.runtime.local_workers import run_in_workers


@pytest.fixture
def shared_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    """Experiments side by side (two at once on 2 cores) share the cores as they do for a user
    (dfl/runtime/core_share.py), where conftest pins each training to the threads it starts
    with: two experiments' trainings at a thread per core each spin against each other (this
    test took 457 s so, on busy cores). For tests that compare no number across runs."""
    monkeypatch.setenv("DFL_SHARE_CORES", "1")


@pytest.mark.slow
@pytest.mark.longest
def test_smoke_reproduction_resumes_and_rebuilds(tmp_path: Path, request, shared_cores):
    data = write_idx_dataset(tmp_path / "digits", n_train=3000, n_test=600)
    out = tmp_path / "repro"
    report = reproduce(out, "smoke", str(data), device="cpu", seeds=1)

    html = report.read_text()
    assert "Missing:" not in html, "every experiment must have produced its section"
    assert html.count("data:image/png;base64,") >= 10  # figures are embedded, not linked
    results = json.loads((out / "results.json").read_text())
    assert set(results["numbers"]) == set(EXPERIMENTS)
    for experiment in results["numbers"].values():
        for entry in experiment.values():
            assert "value" in entry and "label" in entry

    # Selection never looks at the test set: the grid's trials are not tested, and the chosen
    # autoencoder config is the one with the lowest validation MSE.
    ae = json.loads((out / "ae" / "result.json").read_text())["result"]
    assert ae["best"]["val_mse"] == min(r["val_mse"] for r in ae["grid"])
    for status in (out / "ae" / "sweeps").rglob("status.json"):
        assert not any(
            k.startswith("test_") for k in json.loads(status.read_text()).get("final", {})
        )
    # The CNN's final stage trains each front architecture at both widths, with and without
    # head dropout, and picks the candidate with the highest mean validation accuracy; the long
    # stage trains it again at the long recipe, kept only where it validates better; the
    # reported test accuracies are those of the runs kept.
    cnn = json.loads((out / "cnn" / "result.json").read_text())["result"]
    finals = cnn["finals"]
    variants = {(c["arch"]["width"], c["arch"].get("dropout", 0.0)) for c in finals}
    assert variants == {(16, 0.0), (16, 0.5), (32, 0.0), (32, 0.5)}
    mean_val = [sum(c["val"]) / len(c["val"]) for c in finals]
    assert mean_val[cnn["chosen"]] == max(mean_val)
    long = cnn["long"]
    assert long["kept"] == (sum(long["val"]) / len(long["val"]) > max(mean_val))
    assert cnn["selected"] == (long["test"] if long["kept"] else finals[cnn["chosen"]]["test"])
    assert long["epochs"] == cnn["final_epochs"] == 1  # the smoke profile shortens both alike

    # A real browser shows every figure and logs no error (skipped without Chromium), and the
    # page never scrolls sideways, on a desktop or a phone: wide tables scroll in their box.
    if shutil.which("chromium"):
        driver = request.getfixturevalue("browser")
        for width in (1400, 420):
            driver.set_window_size(width, 900)
            page = check_page(driver, report, tmp_path / f"report-{width}.png")
            assert len(page["images"]) >= 10 and not page["broken"] and page["errors"] == []
            wide = driver.execute_script(
                "return document.documentElement.scrollWidth - document.documentElement.clientWidth"
            )
            assert wide <= 0, f"the page overflows {width} px by {wide} px"
        assert (
            driver.find_element("css selector", "nav a").text
            == "3.1 Q1 — Autoencoder reconstruction"
        )

    # No figure has tick labels drawn over each other (matplotlib's own text extents).
    from dfl.data import load_dataset
    from dfl.experiments.context import Canvas
    from dfl.experiments.experiment import load_record
    from dfl.experiments.figures import overlapping_ticks

    canvas = Canvas(out, lambda: load_dataset(str(data)))
    for name in EXPERIMENTS:
        experiment = REGISTRY[name]
        for figure in experiment.figures(load_record(out, name).typed(experiment), canvas):
            assert overlapping_ticks(figure.image) == [], (name, figure.path)

    # The lab profile runs neither the CNN's final stage nor the modern ViT: its report shows
    # no corrected CNN or ViT and no figure of a model that did not earn it, and says once
    # which command trains them.
    cnn, vit = REGISTRY["cnn"], REGISTRY["vit"]
    lean_cnn = load_record(out, "cnn").typed(cnn).model_copy(
        update={"points": [], "best": None, "finals": [], "chosen": None, "selected": [],
                "ensemble": None, "confusion": None, "wrong": [], "numbers": {}}
    )  # fmt: skip
    drawn = cnn.figures(lean_cnn, canvas)
    assert [f.path for f in drawn] == ["figures/cnn_lab_curves.png", "figures/cnn_study.png"]
    assert "--profile full --only cnn" in " ".join(cnn.section(lean_cnn, drawn).paragraphs)
    lean_vit = (
        load_record(out, "vit").typed(vit).model_copy(update={"beyond": [], "rollout_from": None})
    )
    drawn = vit.figures(lean_vit, canvas)
    assert "figures/vit_rollout.png" not in [f.path for f in drawn]
    assert "--profile full --only vit" in " ".join(vit.section(lean_vit, drawn).paragraphs)

    # Re-running the same command trains nothing again.
    metrics = {p: p.stat().st_mtime_ns for p in out.rglob("metrics.jsonl")}
    assert len(metrics) > 20
    reproduce(out, "smoke", str(data), device="cpu", seeds=1)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("metrics.jsonl")} == metrics

    # The report and every figure come back from saved results alone.
    (out / "report.html").unlink()
    shutil.rmtree(out / "figures")
    assert main(["report", str(out)]) == 0
    assert (out / "report.html").read_text() == html

    # A flipped byte in the weights behind a figure: the figure is named missing, with the
    # reason, where a SafetensorError traceback ended `dfl report`.
    run = Path(results["numbers"]["cnn"]["selected.test_accuracy"]["run_dir"])
    weights = run / "model.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[-64] ^= 0x10
    weights.write_bytes(bytes(raw))
    assert main(["report", str(out)]) == 0
    assert "is not the file the run wrote" in (out / "report.md").read_text()


def test_unrun_experiments_show_as_missing_with_a_reason(tmp_path: Path):
    out = tmp_path / "empty"
    out.mkdir()
    (out / "reproduce.json").write_text(
        json.dumps(
            {"profile": "quick", "dataset": "mnist", "selected": ["conv"], "environment": {}}
        )
    )
    markdown = build_report(out).with_suffix(".md").read_text()
    assert "not selected in this reproduction (--only)" in markdown
    assert "not run yet" in markdown  # conv was selected but has no result
    assert "| 0 |" not in markdown  # missing is never shown as zero


def test_a_training_runs_directory_is_refused_untouched(tmp_path: Path, capsys):
    """A reproduction's files would mix with a run's; other files may stay beside it."""
    assert main(["train", "mlp", "--epochs", "1", "--set", "data.train_subset=200",
                 "--out", str(tmp_path / "run")]) == 0  # fmt: skip
    before = sorted(p.name for p in (tmp_path / "run").iterdir())
    argv = ["reproduce", "--profile", "smoke", "--only", "conv", "--out", str(tmp_path / "run")]
    assert main(argv) == 2
    assert "is a training run's directory (it holds config.toml)" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == before
    (tmp_path / "notes.txt").write_text("mine")  # someone's own files: no reason to refuse
    assert main([*argv[:-1], str(tmp_path)]) == 0


@pytest.mark.parametrize("theirs", ["report.md", "results.json", "study.db", "figures/a.png"])
def test_a_directory_with_files_a_reproduction_writes_is_refused_untouched(
    tmp_path: Path, capsys, theirs
):
    """A report, results or a sweep's database that no reproduction wrote would be overwritten
    (or the sweep made impossible to continue): refused, before anything is written."""
    mine = tmp_path / "d" / theirs
    mine.parent.mkdir(parents=True)
    mine.write_text("mine")
    argv = ["reproduce", "--profile", "smoke", "--only", "conv", "--out", str(tmp_path / "d")]
    assert main(argv) == 2
    said = capsys.readouterr().err
    assert said.count("\n") == 1 and f"holds {theirs.split('/')[0]} but no reproduce.json" in said
    assert said.rstrip().endswith("would overwrite or mix with it; name another --out")
    assert mine.read_text() == "mine"
    assert sorted(p.name for p in (tmp_path / "d").rglob("*")) == sorted(
        {theirs.split("/")[0], mine.name}
    )


def test_report_needs_a_reproduction(tmp_path: Path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "holds no reproduction" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "typo")]) == 2
    assert "typo is not a directory" in capsys.readouterr().err


def test_profile_mismatch_is_refused(tmp_path: Path, capsys):
    out = tmp_path / "r"
    out.mkdir()
    (out / "reproduce.json").write_text(json.dumps({"profile": "full", "dataset": "mnist"}))
    assert main(["reproduce", "--profile", "quick", "--out", str(out), "--only", "conv"]) == 2
    assert "profile full" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("jobs", "message"),
    [
        ("0", "--jobs must be a whole number, at least 1"),
        ("100000", "--jobs 100000 is more than 4"),
    ],
)
def test_jobs_out_of_range_are_refused(tmp_path: Path, capsys, jobs: str, message: str):
    out = tmp_path / "r"
    assert main(["reproduce", "--profile", "smoke", "--jobs", jobs, "--out", str(out)]) == 2
    assert message in capsys.readouterr().err  # named as given, not as the sweep's --workers
    assert not out.exists()  # refused before anything was written


@pytest.mark.slow
def test_runs_side_by_side_are_the_runs_made_one_after_another(
    tmp_path: Path, tiny_data, monkeypatch: pytest.MonkeyPatch
):
    """--jobs 2 trains in worker processes, the longest runs first; each run is seeded by its
    own config, so what they write is what the same runs write one at a time, returned in
    the order asked for."""
    runs = {
        f"seed{s}": {"model": "mlp", "model_args.hidden": [32], "epochs": 1 + s, "seed": s}
        for s in range(3)
    }
    handed_out: list[str] = []

    def in_order(fn, tasks, **kwargs):  # the workers' own, seen on the way in
        handed_out.extend(tasks)
        return run_in_workers(fn, tasks, **kwargs)

    monkeypatch.setattr(engine, "run_in_workers", in_order)
    results = {}
    for jobs in (1, 2):
        ctx = Context(tmp_path / f"jobs{jobs}", "smoke", tiny_data, "synthetic", "cpu", jobs=jobs)
        results[jobs] = ctx.train_many("exp", runs)
    assert list(results[2]) == list(runs)  # keyed by run name, in the order asked for
    for key in runs:
        one, two = results[1][key], results[2][key]
        assert two.status == "completed" and two.run_dir.name == key
        assert len(two.history) == runs[key]["epochs"]
        # One thread per worker against the test's own threads: sums may round differently.
        assert two.final["test_loss"] == pytest.approx(one.final["test_loss"], rel=1e-4)
    assert results[2]["seed0"].final["test_loss"] != results[2]["seed1"].final["test_loss"]
    assert handed_out == ["seed2", "seed1", "seed0"]  # to the workers, the longest first


def test_wall_time_counts_earlier_unfinished_invocations(tmp_path: Path):
    """An experiment that took several invocations reports all of their time, not the last's."""
    out = tmp_path / "r"
    (out / "conv").mkdir(parents=True)
    (out / "conv" / "spent.json").write_text(json.dumps({"seconds": 100.0}))
    reproduce(out, "smoke", only=["conv"])
    result = json.loads((out / "conv" / "result.json").read_text())
    assert result["status"] == "completed"
    assert 100.0 <= result["wall_s"] < 160.0
    assert not (out / "conv" / "spent.json").exists()  # counted once, not again on a rerun
    # Run here, as the manifest says: the report names no other machine for it.
    assert result["environment"] == json.loads((out / "reproduce.json").read_text())["environment"]
    assert "last run on" not in (out / "report.md").read_text()


def test_an_interrupted_experiment_records_its_time(tmp_path: Path, monkeypatch):
    import time

    def interrupted(ctx, settings):
        time.sleep(0.2)
        raise KeyboardInterrupt

    monkeypatch.setitem(REGISTRY, "conv", dataclasses.replace(REGISTRY["conv"], run=interrupted))
    out = tmp_path / "r"
    with pytest.raises(KeyboardInterrupt):
        reproduce(out, "smoke", only=["conv"])
    assert json.loads((out / "conv" / "spent.json").read_text())["seconds"] >= 0.2
    assert not (out / "conv" / "result.json").exists()  # nothing half-written


@pytest.fixture(scope="module")
def ae_and_sae(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One smoke reproduction of ae and sae (side by side, sharing the cores), which three
    checks read instead of training their own: made by `dfl reproduce --out was` run in a
    directory whose name has a quote, a backslash and a space, on a dataset there too. Returns
    that directory."""
    root = tmp_path_factory.mktemp("ae-sae") / 'q"uo\\te dir'
    data = write_idx_dataset(root / "digits", n_train=2500, n_test=500)
    with pytest.MonkeyPatch.context() as env:  # what conftest's fixtures set for a test
        env.setenv("DFL_DATA_DIR", str(tmp_path_factory.getbasetemp() / "dfl-cache"))
        env.setenv("DFL_SHARE_CORES", "1")  # as `shared_cores`
        env.chdir(root)
        argv = ["reproduce", "--profile", "smoke", "--dataset", str(data), "--device", "cpu",
                "--only", "ae,sae", "--out", "was"]  # fmt: skip
        assert main(argv) == 0
    return root


@pytest.mark.slow
def test_one_ae_and_sae_reproduction_read_three_ways(ae_and_sae: Path, tmp_path, monkeypatch):
    """The three checks below on one reproduction, in this order (the last moves it): one
    test, so that one test worker makes it (`make test` runs two)."""
    paths_travel_as_data(ae_and_sae)
    the_report_rebuilds_from_another_working_directory(ae_and_sae, tmp_path, monkeypatch)
    monkeypatch.setenv("DFL_SHARE_CORES", "1")  # as `shared_cores`
    a_moved_reproduction_reports_and_resumes_in_its_new_place(ae_and_sae)


def paths_travel_as_data(ae_and_sae: Path) -> None:
    """Values reach the configs as data: an --out and a dataset path with a quote, a backslash
    and a space give the runs exactly those paths (the autoencoder's probe starts from a grid
    run's directory by init_from, its sweep trials read the dataset path), and the commands
    that repeat a run name them quoted."""
    data, out = ae_and_sae / "digits", ae_and_sae / "was"

    record = json.loads((out / "ae" / "result.json").read_text())
    assert record["status"] == "completed", record.get("reason")
    ae = record["result"]
    for probe in ae["probe"].values():
        assert Path(probe["source"]).parent == out / "ae" / "sweeps" / "grid" / "trials"
    cfg = build_config(next((out / "ae" / "runs").glob("probe_enc*")) / "config.toml")
    assert cfg.init_from == ae["probe"]["16"]["source"] and cfg.data.dataset == str(data)
    # The reproducing command is quoted for a shell.
    deep = ae["numbers"]["deep.test_mse"]
    argv = shlex.split(deep["command"])
    assert argv[:3] == ["dfl", "train", "--config"] and argv[4] == "--out"
    assert argv[3] == str(Path(deep["run_dir"]) / "config.toml") and Path(argv[3]).exists()
    scarce_labels_study(out)
    linear_code_yardstick(out)


def linear_code_yardstick(out: Path) -> None:
    """The autoencoder section sets each code size beside principal components as wide."""
    ae = json.loads((out / "ae" / "result.json").read_text())["result"]
    assert sorted(ae["pca"]) == ["16", "32"]
    assert ae["pca"]["16"]["val"] > ae["pca"]["32"]["val"] > 0
    report = (out / "report.md").read_text()
    assert "| linear code (PCA), val MSE |" in report and "Against the best linear code" in report


def scarce_labels_study(out: Path) -> None:
    """The stacked autoencoder's scarce-label study: per label count, the pretrained network
    starts from the unlabelled pretraining's weights and the random one from none, on the same
    labelled images; the report shows its table and figure."""
    sae = json.loads((out / "sae" / "result.json").read_text())["result"]
    rows = sae["scarce"]["rows"]
    assert [(r["labels"], r["all"]) for r in rows] == [(50, False), (2000, True)]
    assert all(len(r["pretrained"]) == len(r["random"]) == 1 for r in rows)
    runs = out / "sae" / "runs"
    pretrained = build_config(runs / "scarce_labels50_seed0_pretrained" / "config.toml")
    random = build_config(runs / "scarce_labels50_seed0_random_init" / "config.toml")
    assert Path(pretrained.init_from) == runs / "scarce_seed0_pretrain1"
    assert random.init_from is None and random.data == pretrained.data
    assert pretrained.data.train_subset == 50 and pretrained.restore_best
    unlabelled = build_config(runs / "scarce_seed0_pretrain0" / "config.toml")
    assert unlabelled.data.val_fraction == 0 and unlabelled.objective == "layerwise"
    assert sae["numbers"]["scarce.50.pretrained"]["value"] == rows[0]["pretrained"]
    report = (out / "report.md").read_text()
    assert "| labelled images | pretrained, fine-tuned |" in report
    assert (out / "figures" / "sae_scarce_labels.png").stat().st_size > 5000


def test_a_failed_experiment_fails_the_command_after_the_others_ran(
    tmp_path: Path, monkeypatch, capsys
):
    """One experiment failing lets the others run; then the command exits 4 with one line
    naming the failed experiment, and the report marks it failed with its reason."""
    from dfl.errors import ConfigError

    def broken(ctx, settings):
        raise ConfigError("config key 'epochs': forced failure")

    monkeypatch.setitem(REGISTRY, "conv", dataclasses.replace(REGISTRY["conv"], run=broken))
    data = write_idx_dataset(tmp_path / "digits", n_train=64, n_test=16)
    out = tmp_path / "r"
    args = ["--profile", "smoke", "--dataset", str(data), "--out", str(out)]
    # One after the other in this process: the patched registry does not reach a spawned one.
    only = ["--only", "conv,attention", "--experiments-at-once", "1"]
    assert main(["reproduce", *args, *only]) == 4
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("dfl: error: 1 experiment failed: conv (the report marks it: ")

    assert json.loads((out / "attention" / "result.json").read_text())["status"] == "completed"
    failed = json.loads((out / "conv" / "result.json").read_text())
    assert failed["status"] == "failed" and "forced failure" in failed["reason"]
    markdown = (out / "report.md").read_text()
    assert "**Failed:** conv (config key 'epochs': forced failure)" in markdown
    assert "**Missing:** the experiment failed: config key 'epochs': forced failure" in markdown
    html = (out / "report.html").read_text()
    assert "<strong>Failed:</strong> conv (config key 'epochs': forced failure)" in html
    assert '<p class="missing">Missing: the experiment failed: config key' in html

    # `dfl lab` says the same; once the experiment works again, the rerun exits 0.
    assert main(["lab", "conv", *args]) == 4
    monkeypatch.undo()
    assert main(["lab", "conv", *args]) == 0
    assert "Failed:" not in (out / "report.md").read_text()


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (RuntimeError("CUDA error: out of memory\nCompile with TORCH_USE_CUDA_DSA"),
         "RuntimeError: CUDA error: out of memory"),
        (MemoryError(), "MemoryError"),
    ],
)  # fmt: skip
def test_an_unexpected_exception_is_that_experiments_failure(
    tmp_path: Path, monkeypatch, error: Exception, reason: str
):
    """Not only a DflError: a bug or a failed allocation in one experiment fails that one,
    with a one-line reason, and the others still run."""

    def broken(ctx, settings):
        raise error

    monkeypatch.setitem(REGISTRY, "conv", dataclasses.replace(REGISTRY["conv"], run=broken))
    data = write_idx_dataset(tmp_path / "digits", n_train=64, n_test=16)
    out = tmp_path / "r"
    with pytest.raises(ExperimentsFailed) as raised:
        reproduce(out, "smoke", str(data), only=["conv", "attention"], at_once=1)
    assert raised.value.failed == {"conv": reason}
    assert json.loads((out / "attention" / "result.json").read_text())["status"] == "completed"
    assert f"**Failed:** conv ({reason})" in (out / "report.md").read_text()


def start_paused(tmp_path: Path, *args: str) -> subprocess.Popen:
    """`dfl reproduce --profile smoke` on synthetic data, two experiments at once, each
    training held still while it writes its epoch-1 checkpoint (to be killed in)."""
    data = write_idx_dataset(tmp_path / "digits", n_train=2500, n_test=500)
    command = [sys.executable, "-m", "dfl", "reproduce", "--profile", "smoke",
               "--dataset", str(data), "--out", str(tmp_path / "r"),
               "--experiments-at-once", "2", *args]  # fmt: skip
    # Side by side, the trainings share the cores (as `shared_cores`): nothing here compares
    # numbers, and each at a thread per core they would spin against each other.
    env = {**os.environ, "DFL_FAULT_PAUSE_BEFORE_RENAME": "1:60", "DFL_SHARE_CORES": "1"}
    return subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)


def paused_in(proc: subprocess.Popen, run_dirs: Path) -> int:
    """The pid of the process held still in an epoch-1 checkpoint under `run_dirs` (its
    temporary folder is named after it), once there is one."""
    deadline = time.monotonic() + 120
    while (tmp := next(run_dirs.rglob(".epoch-0001.tmp-*"), None)) is None:
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline
        time.sleep(0.1)
    return int(tmp.name.rpartition("-")[2])


@pytest.mark.slow
def test_an_experiment_whose_process_is_killed_fails_and_the_others_go_on(tmp_path: Path):
    """SIGKILL of the process running one experiment side by side (as the kernel kills one
    out of memory): the other finishes, the command exits 4 and the report gives the reason."""
    psutil = pytest.importorskip("psutil")  # not a dependency of its own (constraints.txt)
    proc = start_paused(tmp_path, "--only", "conv,sae")
    try:
        pid = paused_in(proc, tmp_path / "r" / "sae")
        assert psutil.Process(pid).ppid() == proc.pid  # sae's own process, not a worker of it
        os.kill(pid, signal.SIGKILL)
        err = proc.communicate(timeout=60)[1]
    finally:
        proc.kill()
    assert proc.returncode == 4, err
    reason = "its process was killed (signal 9)"
    assert "dfl: sae failed: " + reason in err
    # dfl's last line (multiprocessing's resource tracker may warn after it, cleaning up a
    # semaphore the killed process held)
    assert "\ndfl: error: 1 experiment failed: sae (the report marks it: " in err
    out = tmp_path / "r"
    assert json.loads((out / "conv" / "result.json").read_text())["status"] == "completed"
    failed = json.loads((out / "sae" / "result.json").read_text())
    assert (failed["status"], failed["reason"]) == ("failed", reason)
    assert f"**Failed:** sae ({reason})" in (out / "report.md").read_text()


@pytest.mark.slow
def test_a_killed_reproduce_takes_its_processes_with_it(tmp_path: Path):
    """SIGKILL of `dfl reproduce` while its experiments' processes train, one in itself, one
    in workers of its own (--jobs 2): every one of them ends, without a traceback, instead of
    training on for nobody. (A sweep's worker commands: test_local_workers.py.)"""
    psutil = pytest.importorskip("psutil")
    proc = start_paused(tmp_path, "--only", "ae,vit", "--jobs", "2")
    try:
        assert psutil.Process(paused_in(proc, tmp_path / "r" / "ae")).ppid() == proc.pid
        run = psutil.Process(paused_in(proc, tmp_path / "r" / "vit"))
        assert run.parent().ppid() == proc.pid  # a worker of vit's process
        descendants = psutil.Process(proc.pid).children(recursive=True)
    finally:
        proc.kill()
    _, left = psutil.wait_procs(descendants, timeout=30)
    assert left == []
    assert "Traceback" not in proc.communicate(timeout=10)[1]
    for experiment in ("ae", "vit"):  # wound down as on SIGTERM: the next run counts their time
        assert (tmp_path / "r" / experiment / "spent.json").exists()


@pytest.mark.slow
def test_progress_lines_and_the_lab_table_off_a_terminal(tmp_path: Path, capsys):
    """Output to a log gets a line per experiment start and end with the time left; every lab
    number lands in results.json with one of the four verdicts and a reason, and the report's
    first paragraph counts the ones set beside the lab's."""
    data = write_idx_dataset(tmp_path / "digits")
    out = tmp_path / "repro"
    reproduce(out, "smoke", str(data), device="cpu", seeds=1, only=["conv", "attention"])
    err = capsys.readouterr().err
    assert "dfl reproduce: conv: started (elapsed" in err
    assert "dfl reproduce: attention: completed in" in err and "left)" in err

    saved = json.loads((out / "results.json").read_text())
    lab = saved["lab"]
    assert len(lab) == 38 and sum(saved["counts"].values()) == 38
    assert {e["verdict"] for e in lab} <= {"reproduced", "differs", "not comparable", "missing"}
    by_key = {(e["experiment"], e["key"]): e for e in lab}
    assert by_key["conv", "output"]["verdict"] == "reproduced"
    assert by_key["conv", "output"]["lab"] == "[[3, 4], [6, 11]]"
    ae = by_key["ae", "val_mse.b64.e128.ep60"]
    assert ae["verdict"] == "missing" and "--only" in ae["reason"]

    warning, first = (out / "report.md").read_text().split("\n\n")[1:3]
    assert warning.startswith("**Profile smoke: ") and "These numbers are not results" in warning
    assert "set **3 of the lab's 38 numbers** beside ours" in first
    assert "--profile every" in first  # the command that sets the rest

    # Its finished experiments are over one seed: another count is refused, none continues.
    with pytest.raises(ConfigError, match="holds a reproduction over 1 seed; leave out seeds="):
        reproduce(out, "smoke", str(data), device="cpu", seeds=2, only=["conv"])
    reproduce(out, "smoke", str(data), device="cpu", only=["conv"])
    assert json.loads((out / "reproduce.json").read_text())["seeds"] == 1

    assert main(["report", str(out), "--lab-table"]) == 0
    table = capsys.readouterr().out
    assert table.count("\n| ") == 38 + 1  # a header and one row per lab number


@pytest.mark.slow
def test_experiments_side_by_side_in_their_own_processes(tmp_path: Path, capsys):
    """Two at once (the default on 2+ cores): both finish in spawned processes, a line says
    when each starts and ends (their own bars are off), and the report's time is the clock's,
    counted over invocations, not the experiments' summed."""
    data = write_idx_dataset(tmp_path / "digits", n_train=64, n_test=16)
    out = tmp_path / "r"
    args = ["reproduce", "--profile", "smoke", "--dataset", str(data), "--out", str(out)]
    assert main([*args, "--only", "conv,attention", "--experiments-at-once", "2"]) == 0
    err = capsys.readouterr().err
    for name in ("conv", "attention"):
        assert f"dfl reproduce: {name}: started" in err
        assert f"dfl reproduce: {name}: completed in" in err
        assert json.loads((out / name / "result.json").read_text())["status"] == "completed"
    manifest = json.loads((out / "reproduce.json").read_text())
    assert manifest["environment"]["experiments_at_once"] == 2
    first = manifest["wall_s"]
    assert first > 0
    assert main([*args, "--only", "conv,attention"]) == 0  # both kept: a moment more
    assert json.loads((out / "reproduce.json").read_text())["wall_s"] > first
    assert "min on the clock for its experiments" in (out / "report.md").read_text()


def the_report_rebuilds_from_another_working_directory(
    ae_and_sae: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Results name their runs by absolute path, so `dfl report DIR` redraws the figures (the
    stacked autoencoder's read saved weights) wherever it runs from: the reproduction was made
    with a relative `--out was`, and is reported here from another directory."""
    monkeypatch.chdir(tmp_path)
    assert main(["report", str(ae_and_sae / "was")]) == 0
    assert "Figures missing" not in (ae_and_sae / "was" / "report.md").read_text()


def a_moved_reproduction_reports_and_resumes_in_its_new_place(ae_and_sae: Path) -> None:
    """Results and run configs name runs by absolute path. Moved, the directory still draws
    its figures from its own runs and gives commands naming them; a half-done experiment
    resumes there (a fine-tune's init_from names its pretraining run's new place)."""
    root = ae_and_sae
    args = ["reproduce", "--profile", "smoke", "--dataset", str(root / "digits"),
            "--device", "cpu", "--only", "ae,sae"]  # fmt: skip
    # The old place as each file spells it: JSON and TOML escape the quote and the backslash
    # in the directory's name, not what follows them.
    was = "te dir/was"
    assert was in (root / "was" / "results.json").read_text()  # as made, it names its place
    (root / "was").rename(root / "now")
    now = root / "now"
    assert main(["report", str(now)]) == 0
    for name in ("report.md", "results.json"):
        text = (now / name).read_text()
        assert "Figures missing" not in text and was not in text
    (now / "sae" / "result.json").unlink()  # as if killed before it ended
    finetune = json.loads((now / "sae" / "runs" / "full_corrected_seed0_finetune" /
                           "status.json").read_text())  # fmt: skip
    assert main([*args, "--out", str(now)]) == 0
    record = json.loads((now / "sae" / "result.json").read_text())
    assert record["status"] == "completed" and was not in json.dumps(record)
    assert finetune == json.loads(
        (now / "sae" / "runs" / "full_corrected_seed0_finetune" / "status.json").read_text()
    )  # kept, not retrained
    configs = list(now.rglob("config.toml"))
    assert configs and not [c for c in configs if was in c.read_text()]


def test_quick_is_preview_and_every_continues_a_lab_directory(tmp_path: Path):
    from dfl.reproduce import _manifest

    def made_by(profile: str) -> Path:
        out = tmp_path / profile
        out.mkdir()
        manifest = {"profile": profile, "dataset": "mnist", "environment": {"precision": "auto"}}
        (out / "reproduce.json").write_text(json.dumps(manifest))
        return out

    args = ("mnist", ["conv"], "cpu", "auto", None, 1, 1)  # seeds: the directory's
    assert _manifest(made_by("quick"), "preview", *args)["profile"] == "preview"
    assert _manifest(made_by("lab"), "every", *args)["profile"] == "every"
    with pytest.raises(ConfigError, match="profile every"):
        _manifest(made_by("every"), "lab", *args)  # lab would drop what every trained
    # A reproduce.json that records no seeds takes the count given (it may have been made so).
    (tmp_path / "lab").rename(tmp_path / "made")
    assert (
        _manifest(tmp_path / "made", "lab", "mnist", ["conv"], "cpu", "auto", 3, 1, 1)["seeds"] == 3
    )


def test_lab_verdicts_and_their_reasons():
    from dfl.experiments.comparison import Comparison, compare
    from dfl.experiments.vit import _writeup_compare
    from dfl.report.build import lab_entry

    manifest = {"dataset": "mnist", "profile": "lab"}
    # The lab's value comes from its one table, by key: 0.005408 for this grid point.
    row = compare("ae", "val_mse.b16.e64.ep60", 0.0040, tolerance=0.2, relative=True, why="w")
    entry = lab_entry("ae", "val_mse.b16.e64.ep60", row, "", manifest)
    assert (entry["verdict"], entry["detail"], entry["reason"]) == (
        "differs",
        "differs (0.74x)",
        "w",
    )
    row = compare("ae", "val_mse.b16.e64.ep60", 0.0055, tolerance=0.2, relative=True, why="w",
                  explain_match=False)  # fmt: skip
    assert (row.verdict, row.detail, row.reason) == ("reproduced", "reproduced (within 20%)", "")
    row = Comparison.not_comparable("this profile trains 5 epochs, the lab 60")
    entry = lab_entry("ae", "k", row, "", manifest)
    assert entry["verdict"] == "not comparable" and entry["reason"].startswith("this profile")
    assert lab_entry("vit", "k", None, "not run", manifest)["verdict"] == "missing"
    other = lab_entry("ae", "k", row, "", {"dataset": "fashion-mnist"})
    assert other["reason"] == "the lab measured MNIST, this is fashion-mnist"

    # The write-up's ViT numbers compare with the base configuration on the lab's protocol only.
    base = {"epochs": 20, "subset": None, "test_accuracy": 0.9841, "test_loss": 0.0764}
    rows = _writeup_compare(base, [0.99])
    assert [rows[k].verdict for k in ("writeup.acc", "writeup.loss")] == ["reproduced"] * 2
    short = _writeup_compare({**base, "epochs": 2}, [0.99])
    assert short["writeup.acc"].verdict == "not comparable"


def test_verdicts_that_are_not_measurements_are_computed_too(monkeypatch):
    """The convolution's output and size, the attention bug and the AE test MSEs are compared
    with the lab's table like every other number: change the lab's value and the verdict
    changes (they were constants: "reproduced", "differs ~10x" whatever was measured)."""
    from dfl.experiments import attention, conv, lab_numbers
    from dfl.experiments.ae import test_mse_comparison

    def verdicts() -> list[str]:
        rows = {**conv.run(None, None).compare, **attention.run(None, None).compare}
        return [rows[k].verdict for k in ("output", "size", "identical_rows")]

    assert verdicts() == ["reproduced"] * 3
    lab = {name: list(rows) for name, rows in lab_numbers.LAB.items()}
    lab["conv"] = [("output", "", "[[3, 4], [6, 12]]"), ("size", "", 3)]
    lab["attention"] = [("identical_rows", "", "no")]
    monkeypatch.setattr(lab_numbers, "LAB", lab)
    assert verdicts() == ["differs"] * 3
    assert (
        conv.run(None, None).compare["output"].detail == "differs at [1][1]: ours 11, the lab's 12"
    )

    # The lab's 0.000227 is a tenth of the true value (its /10,000 slip): ours near 10x that
    # is explained by it; near the lab's own value it is reproduced; any other ratio is not.
    ten = test_mse_comparison("test_mse.best", 0.00231)
    assert (ten.verdict, ten.detail) == ("differs", "differs (10.18x)") and "10,000" in ten.reason
    assert test_mse_comparison("test_mse.best", 0.00024).verdict == "reproduced"
    odd = test_mse_comparison("test_mse.best", 0.0010)
    assert odd.detail == "differs (4.41x)" and "not the lab's known slip" in odd.reason


def test_ae_test_mses_of_shortened_runs_are_not_compared():
    """The smoke profile's 1-epoch baseline on 500 images was "differs (128.83x)" beside the
    lab's 20 epochs on 10,000 (a verdict on a run that measures nothing); the lab's own
    protocol is compared."""
    from dfl.experiments.ae import _shorter

    assert _shorter(20, 20, 10_000, 10_000) == "" and _shorter(60, 60, None, None) == ""
    assert _shorter(1, 20, 500, 10_000) == (
        "this profile trains 1 epoch, the lab 20; on 500 training images, the lab on 10,000"
    )
    assert _shorter(60, 60, 2000, None) == "on 2,000 training images, the lab on all"


def test_what_the_ae_grid_says_matters_is_measured():
    """The sentence was fixed ("the encoding size dominates ... batch size and the last
    epochs matter little") whatever the grid measured."""
    from dfl.experiments.ae import _what_matters

    def grid(mse) -> list[dict]:
        return [
            {"enc": e, "batch": b, "epochs": ep, "val_mse": mse(e, b, ep)}
            for e in (32, 64) for b in (16, 64) for ep in (40, 60)
        ]  # fmt: skip

    said = _what_matters(grid(lambda e, b, ep: 1 / e))
    assert said.startswith("Worst over best level's mean validation MSE") and said.endswith(
        "the encoding size matters most here."
    )
    assert "the encoding size 2.00x, " in said and "the batch size 1.00x" in said
    by_batch = _what_matters(grid(lambda e, b, ep: b * (1 + 0.1 * (e == 32))))
    assert by_batch.endswith("the batch size matters most here.") and "4.00x" in by_batch
    one_batch = [r for r in grid(lambda e, b, ep: 1 / e) if r["batch"] == 64]
    assert "(the batch size not varied in this profile)" in _what_matters(one_batch)


def test_a_result_saved_by_another_dfl_is_rerun_not_misread(tmp_path: Path):
    """A result.json in another layout (an older dfl's) is reported as such, and the next
    reproduce runs that experiment again instead of reading it."""
    out = tmp_path / "r"
    reproduce(out, "smoke", only=["conv"])
    (out / "conv" / "result.json").write_text(json.dumps({"status": "completed", "lab": {}}))
    markdown = build_report(out).with_suffix(".md").read_text()
    assert "saved by another version of dfl; rerun the reproduce command" in markdown
    (out / "conv" / "result.json").write_text('{"status": "compl')  # a damaged one is not older
    markdown = build_report(out).with_suffix(".md").read_text()
    assert "its result.json is damaged (not valid JSON); rerun the reproduce command" in markdown
    reproduce(out, "smoke", only=["conv"])
    record = json.loads((out / "conv" / "result.json").read_text())
    assert record["status"] == "completed" and record["result"]["lab"]["output"] == [
        [3, 4],
        [6, 11],
    ]


@pytest.mark.slow
def test_a_second_reproduce_or_report_in_a_busy_directory_is_refused(tmp_path: Path):
    """Two reproductions in one --out would train the same runs and each write its own
    reproduce.json; a report written meanwhile could be overwritten by an older one. While a
    reproduction holds the directory, a second one and `dfl report` are one line, exit 2, and
    change nothing there."""
    proc = start_paused(tmp_path, "--only", "sae")
    out = tmp_path / "r"
    try:
        paused_in(proc, out / "sae")
        # the running reproduction's clock rewrites its wall_s every 10 s; nothing else
        manifest = json.loads((out / "reproduce.json").read_text()) | {"wall_s": None}
        for argv in (
            ["reproduce", "--profile", "smoke", "--only", "conv", "--out", str(out)],
            ["report", str(out)],
        ):
            done = subprocess.run(
                [sys.executable, "-m", "dfl", *argv], capture_output=True, text=True
            )
            assert done.returncode == 2, done.stderr
            assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
            assert f"is in use by process {proc.pid}" in done.stderr
        assert json.loads((out / "reproduce.json").read_text()) | {"wall_s": None} == manifest
        assert not (out / "conv").exists()
    finally:
        proc.kill()
        proc.communicate()


@pytest.mark.slow
def test_a_killed_invocations_time_still_counts(tmp_path: Path):
    """SIGKILL runs no `finally`: reproduce.json's time on the clock is kept current while the
    reproduction runs, so the report's time counts the killed invocation too (it counted only
    the last one)."""
    from dfl.reproduce import CLOCK_EVERY_S

    proc = start_paused(tmp_path, "--only", "sae")
    try:
        paused_in(proc, tmp_path / "r" / "sae")
        time.sleep(CLOCK_EVERY_S + 2)
    finally:
        proc.kill()
        proc.communicate()
    wall = json.loads((tmp_path / "r" / "reproduce.json").read_text())["wall_s"]
    assert wall >= CLOCK_EVERY_S


@pytest.mark.parametrize(("asked", "faithful"), [("auto", "fp32"), ("bf16", "bf16")])
def test_the_lab_protocol_trains_in_the_labs_precision(tmp_path: Path, tiny_data, asked, faithful):
    """The notebook CNNs on the lab's protocol run in fp32, as the lab trained them, where
    `auto` would pick bf16 on a CPU that has it; a precision the user asks for is kept."""
    from dfl.experiments import cnn

    ctx = Context(tmp_path, "smoke", tiny_data, "synthetic", "cpu", precision=asked)
    asked_runs: dict = {}

    def capture(experiment, runs):
        asked_runs.update(runs)
        raise StopIteration  # the configs are all this test needs

    ctx.train_many = capture
    with pytest.raises(StopIteration):
        cnn._notebook_stage(ctx, cnn.PROFILES["smoke"])
    assert {ctx.config(o).precision for o in asked_runs.values()} == {faithful}


def test_progress_says_no_estimate_once_a_running_experiment_is_past_its_measured_time(
    capsys, monkeypatch
):
    """An experiment running longer than its measured time is named, with no estimate (not
    "about 0m00s left" for minutes); one measured at 0 s is not late as it starts."""
    from types import SimpleNamespace

    from dfl.reproduce import Progress

    clock = [100.0]
    monkeypatch.setattr("dfl.reproduce.time.perf_counter", lambda: clock[0])
    profile = SimpleNamespace(estimate_s={"cnn": 200.0, "conv": 0.0})
    progress = Progress(profile, ["cnn", "conv"], enabled=True, at_once=2)
    progress.start("cnn")
    clock[0] += 150
    progress.start("conv")
    clock[0] += 0.1
    assert progress.overdue() == []
    clock[0] += 20
    assert progress.overdue() == ["conv"]  # 20 s into a 0 s experiment: late after all
    clock[0] -= 20.1
    clock[0] += 100  # cnn at 250 s of its 200
    progress.end("conv", SimpleNamespace(status="completed"))
    err = capsys.readouterr().err.splitlines()
    assert err[0].endswith("cnn: started (elapsed 0m00s, about 3m20s left)")
    assert err[1].endswith("conv: started (elapsed 2m30s, about 0m50s left)")
    assert err[2].endswith(
        "(elapsed 4m10s, cnn past its measured time: no estimate of what is left)"
    )
