"""Sweep specs: every mistake is caught before a trial starts, with the key named; the grid,
the epoch-reuse decision and the run directory names are what the spec says."""

from __future__ import annotations

import re
from pathlib import Path

import optuna
import pytest

from dfl import cli
from dfl.errors import ConfigError
from dfl.sweep import study as studies
from dfl.sweep.spec import (
    SweepSpec,
    check_trials,
    decode,
    encode,
    load_spec,
    run_plan,
    spec_from_dict,
)
from dfl.sweep.storage import open_storage, storage_url
from dfl.sweep.trial import run_dir_name

BASE = """
[base]
model = "mlp"
model_args = { hidden = [16] }
device = "cpu"
"""


def write_spec(tmp_path: Path, text: str, name: str = "spec.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def spec_from(tmp_path: Path, head: str, tail: str):
    return load_spec(write_spec(tmp_path, head + BASE + tail))


GRID = '[grid]\n"optim.lr" = [0.001, 0.01]\n'


@pytest.mark.parametrize(
    ("head", "tail", "message"),
    [
        ('name = "s"\nmetrics = "val_loss"\n', GRID,
         "spec key 'metrics': unknown key (did you mean 'metric'?)"),
        ('name = "s"\nepochs = 3\n', GRID,
         "spec key 'epochs': unknown key (a training key: put it under [base])"),
        ('name = "s"\n', "[search]\nn_trial = 3\n[search.space]\nepochs = { choices = [1] }\n",
         "spec key 'search.n_trial': unknown key (did you mean 'search.n_trials'?)"),
        ('name = "s"\n', "[search]\nn_trials = 3\nspaces = 1\n[search.space]\n"
         "epochs = { choices = [1] }\n", "spec key 'search.spaces': unknown key (did you mean "
         "'search.space'?)"),
        ('name = "s"\n', "[search]\nn_trials = 3\nzzz = 1\n[search.space]\n"
         "epochs = { choices = [1] }\n", "spec key 'search.zzz': unknown key ([search] keys: "
         "n_trials, sampler_seed, pruner, startup_trials, warmup_epochs, space)"),
        ('name = "s"\n', '[search]\nn_trials = 3\n[search.space]\n"optim.lr" = { low = 0.001, '
         "high = 0.1, logg = true }\n", "spec key 'search.space.optim.lr.logg': unknown key "
         "(did you mean 'search.space.optim.lr.log'?)"),
        ('name = "s"\nmetric = "test_accuracy"\n', GRID, "not a validation metric"),
        ('name = "s"\nmetric = "val_accuracy"\ndirection = "minimize"\n', GRID,
         "direction 'minimize' would select the worst val_accuracy (it is best high): leave "
         "direction out, or set 'maximize'"),
        ('name = "s"\n', "", "give exactly one of [grid]"),
        ('name = "s"\n', GRID + "[search]\nn_trials = 2\n[search.space]\n"
         '"optim.lr" = { low = 0.001, high = 0.1 }\n', "give exactly one of [grid]"),
        ('name = "s"\n', "[grid]\nepochs = []\n", "grid axis 'epochs' has no values"),
        ('name = "s"\n', "[grid]\nepochs = [2, 2]\n", "repeats a value"),
        ('name = "s"\n', '[grid]\n"optim.lr" = [1, 1.0]\n', "repeats a value"),  # ran twice
        ('name = "s"\n', '[search]\nn_trials = 2\n[search.space]\n"optim.lr" = { low = 0.001, '
         "high = 0.01, step = 1.0 }\n", "step (1.0) exceeds high - low (0.009): every trial would "
         "draw low (0.001)"),
        ('name = "s"\n', "[search]\nn_trials = 2\n[search.space]\nbatch_size = { low = 16, "
         "high = 70, step = 16 }\n", "high - low (54) is not a multiple of step (16): the search "
         "would stop at 64; set high to 64"),
        ('name = "a b"\n', GRID, "spec key 'name': 'a b' is no sweep name: start with a letter"),
        ('name = "s"\nmetric = "val_f1"\n', GRID, "set direction"),
        ('name = "s"\n', "[grid]\nevaluate_test = [true]\n", "set by the sweep"),
        ('name = "s"\nheartbeat_interval = 5\ngrace_period = 5\n', GRID, "must exceed"),
        ('name = "s"\n', '[search]\nn_trials = 3\n[search.space]\n"optim.lr" = { low = 0.1, '
         "high = 0.01 }\n", "spec key 'search.space.optim.lr': low (0.1) must be below high"),
        ('name = "s"\n', '[search]\nn_trials = 3\n[search.space]\n"optim.lr" = { low = 0.0, '
         "high = 0.1, log = true }\n", "log needs low > 0"),
        ('name = "s"\n', '[search]\nn_trials = 3\n[search.space]\n"optim.lr" = { low = 0.001, '
         "high = 0.1, step = 0 }\n", "step must be above 0 (got 0)"),
        ('name = "s"\n', "[search]\nn_trials = 0\n[search.space]\nepochs = { choices = [1] }\n",
         "spec key 'search.n_trials'"),
        ('name = "s"\n', "[grid]\n" + "".join(
            f'"model_args.{k}" = {list(range(1, 11))}\n' for k in "abcdef"),
         "the grid has 1,000,000 points (10 x 10 x 10 x 10 x 10 x 10)"),
    ],
)  # fmt: skip
def test_spec_errors_name_the_key(tmp_path: Path, head: str, tail: str, message: str):
    with pytest.raises(ConfigError, match=re.escape(message)):
        spec_from(tmp_path, head, tail).model_dump()


@pytest.mark.parametrize(
    ("tail", "message"),
    [
        ('[grid]\n"optim.lrr" = [0.1, 0.2]\n', "config key 'optim.lrr': unknown key"),
        ("[grid]\nepochs = [2, 0]\n", r"trial epochs=0: config key 'epochs'"),
        ('[grid]\n"model_args.hidden" = [[16], "wide"]\n', "model_args.hidden"),
        ('[grid]\n"model_args.depth" = [1, 2]\n', "model_args.depth: unknown argument"),
        ('[grid]\nmodel = ["mlp", "nosuchmodel"]\n', "unknown model 'nosuchmodel'"),
        ('[grid]\n"data.val_fraction" = [0.2, 0.0]\n', "needs a validation split"),
        ('[grid]\nmodel = ["mlp", "autoencoder"]\n', "val_accuracy is not measured by a "
         "reconstruction run"),
        ('[search]\nn_trials = 4\n[search.space]\n"optim.momentum" = { low = 0.5, high = 1.5 }\n',
         "trial optim.momentum=1.5: config key 'optim.momentum'"),
        # a float step draws floats, which an integer key refuses in every trial
        ('[search]\nn_trials = 4\n[search.space]\nepochs = { low = 1, high = 3, step = 0.5 }\n',
         r"trial epochs=1.0: .*\(a float step draws floats; give an integer key integer low, "
         r"high and step\)"),
    ],
)  # fmt: skip
def test_every_trial_config_is_checked_before_the_sweep(tmp_path: Path, tail: str, message: str):
    spec = spec_from(tmp_path, 'name = "s"\nmetric = "val_accuracy"\n', tail)
    with pytest.raises(ConfigError, match=message):
        check_trials(spec)


def test_nested_and_dotted_keys_are_the_same_spec(tmp_path: Path):
    dotted = spec_from(tmp_path, 'name = "s"\n', '[grid]\n"optim.lr" = [0.1, 0.2]\nepochs = [1]\n')
    nested = spec_from(tmp_path, 'name = "s"\n', "[grid]\noptim.lr = [0.1, 0.2]\nepochs = [1]\n")
    assert dotted == nested and dotted.keys == ["optim.lr", "epochs"]
    searched = spec_from(
        tmp_path,
        'name = "s"\n',
        "[search]\nn_trials = 2\n[search.space.optim]\nlr = { low = 0.001, high = 0.1 }\n",
    )
    assert searched.keys == ["optim.lr"]
    assert searched.direction == "minimize" and searched.search.pruner == "median"


def test_grid_points_longest_epochs_first_and_reuse_only_where_exact(tmp_path: Path):
    grid = '[grid]\n"model_args.hidden" = [[16], [32, 16]]\nepochs = [2, 5]\n'
    spec = spec_from(tmp_path, 'name = "s"\n', grid)
    points = spec.grid_points()
    assert len(points) == spec.n_trials == 4
    assert [p["epochs"] for p in points] == [5, 5, 2, 2]
    assert check_trials(spec) == 5  # no schedule, no early stopping: exact
    plan = run_plan(spec, points[2], 5)
    assert plan.until_epoch == 2 and plan.config.epochs == 5
    assert run_dir_name(plan.params) == run_dir_name(points[0])  # one run for the row

    cosine = spec_from(
        tmp_path, 'name = "s"\n', grid.replace("[grid]", '[base.schedule]\nname = "cosine"\n[grid]')
    )
    assert check_trials(cosine) is None  # the default only reuses where exact
    forced = 'name = "s"\nreuse_epochs = true\n'
    with pytest.raises(ConfigError, match="schedule 'cosine' depends on the number of epochs"):
        check_trials(
            spec_from(
                tmp_path, forced, grid.replace("[grid]", '[base.schedule]\nname = "cosine"\n[grid]')
            )
        )
    early = grid.replace("[grid]", "[base.early_stop]\npatience = 2\n[grid]")
    assert check_trials(spec_from(tmp_path, 'name = "s"\n', early)) is None
    # A restore_best run's value is its best epoch's: a shorter point read off the longer
    # run's curve at its last epoch gave another number than the point trained alone.
    best = "restore_best = true\n" + grid  # in [base]
    assert check_trials(spec_from(tmp_path, 'name = "s"\n', best)) is None
    with pytest.raises(ConfigError, match="restore_best selects each run's best epoch"):
        check_trials(spec_from(tmp_path, forced, best))
    off = spec_from(tmp_path, 'name = "s"\nreuse_epochs = false\n', grid)
    assert check_trials(off) is None
    step = grid.replace("[grid]", '[base.schedule]\nname = "step"\nstep_size = 1\n[grid]')
    assert check_trials(spec_from(tmp_path, 'name = "s"\n', step)) == 5


def test_values_optuna_cannot_store_roundtrip_through_their_axis():
    values = [[64], [128, 64], {"enc": 3}, None, "relu", 0.5]
    for value in values:
        assert decode(encode(value), values) == value
    assert encode([128, 64]) == "[128, 64]"
    with pytest.raises(ConfigError, match="not one of"):
        decode("[1, 2]", values)


def test_run_dir_names_are_readable_and_distinct():
    a = run_dir_name({"model_args.hidden": [128, 64], "optim.lr": 0.001, "epochs": 60})
    b = run_dir_name({"model_args.hidden": [128, 64], "optim.lr": 0.001, "epochs": 40})
    assert a.startswith("hidden=128x64_lr=0.001_epochs=60-")
    assert a != b and a == run_dir_name(
        {"model_args.hidden": [128, 64], "optim.lr": 0.001, "epochs": 60}
    )
    # Keys that share a leaf name still get distinct directories (the hash is of full keys).
    assert run_dir_name({"optim.gamma": 0.9}) != run_dir_name({"schedule.gamma": 0.9})


def test_example_specs_are_valid():
    specs = sorted(Path(__file__).parents[1].glob("configs/sweeps/*.toml"))
    assert specs, "configs/sweeps/ holds example specs"
    for path in specs:
        check_trials(load_spec(path))


def test_dry_run_lists_the_lab_grid_with_epoch_reuse(capsys):
    spec = Path(__file__).parents[1] / "configs/sweeps/autoencoder-grid.toml"
    assert cli.main(["sweep", str(spec), "--dry-run"]) == 0
    shown = capsys.readouterr().out
    assert "grid of 18 trials, minimize val_loss" in shown
    assert shown.count("(epoch 40 of its curve)") == 9
    assert "epoch reuse: 9 runs for 18 trials, each to 60 epochs" in shown


def test_a_bad_spec_is_one_line_and_exit_2(tmp_path: Path, capsys):
    path = write_spec(tmp_path, 'name = "s"\nmetric = "test_loss"\n' + BASE + GRID)
    assert cli.main(["sweep", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "spec key 'metric'" in err
    assert cli.main(["sweep", "status"]) == 2
    assert cli.main(["sweep", "status", "nosuchsweep", "--out", str(tmp_path / "none")]) == 2
    assert "no sweep 'nosuchsweep'" in capsys.readouterr().err
    # The database given where the spec goes: said so, not "not UTF-8 text".
    import sqlite3

    sqlite3.connect(tmp_path / "study.db").execute("CREATE TABLE t (x)").connection.close()
    assert cli.main(["sweep", "status", str(tmp_path / "study.db")]) == 2
    assert "is a sweep's database: give the sweep's spec or name, with --storage" in (
        capsys.readouterr().err
    )


@pytest.mark.parametrize(
    ("tail", "places"),
    [
        ('[grid]\n"optim.lr" = [0.1]\n[grid.optim]\nlr = [0.2, 0.3]\n',
         "spec key 'grid.optim.lr' is given twice (grid.\"optim.lr\" and grid.optim.lr)"),
        ('[grid]\n"optim.lr" = [0.1]\noptim.lr = [0.2, 0.3]\n',
         "spec key 'grid.optim.lr' is given twice (grid.\"optim.lr\" and grid.optim.lr)"),
        ('[grid]\ndata = [{ val_fraction = 0.1 }]\n"data.val_fraction" = [0.3]\n',
         "spec key 'grid.data.val_fraction' is given twice (grid.data and "
         "grid.\"data.val_fraction\")"),
        ('[search]\nn_trials = 2\n[search.space]\n"optim.lr" = { low = 0.1, high = 0.2 }\n'
         "[search.space.optim]\nlr = { low = 0.1, high = 0.3 }\n",
         "spec key 'search.space.optim.lr' is given twice (search.space.\"optim.lr\" and "
         "search.space.optim.lr)"),
    ],
    ids=["quoted and table", "quoted and dotted", "section and key in it", "search space"],
)  # fmt: skip
def test_a_key_given_twice_is_refused_naming_both_places(
    tmp_path: Path, tail: str, places: str, capsys
):
    """TOML holds `"optim.lr"` and `optim.lr` as two keys; the flat spec kept the last one and
    silently dropped the other axis. Refused as `dfl train` refuses a key given twice."""
    path = write_spec(tmp_path, 'name = "s"\n' + BASE + tail)
    with pytest.raises(ConfigError, match=re.escape(f"{path}: {places}; give it once")):
        load_spec(path)
    assert cli.main(["sweep", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and places in err


def test_a_section_valued_axis_merges_over_the_base_section(tmp_path: Path):
    """`data = [{...}]` varies keys of a section together; the base's other keys in it (the
    dataset) stay, as `--set data={...}` merges over `dfl train --config`'s file."""
    base = BASE + '[base.data]\ndataset = "fashion-mnist"\nval_fraction = 0.3\n'
    grid = "[grid]\ndata = [{ train_subset = 100 }, { val_fraction = 0.1, split_seed = 7 }]\n"
    spec = load_spec(write_spec(tmp_path, 'name = "s"\n' + base + grid))
    configs = [spec.trial_config(p).data for p in spec.grid_points()]
    assert [(c.dataset, c.val_fraction, c.train_subset, c.split_seed) for c in configs] == [
        ("fashion-mnist", 0.3, 100, 42),
        ("fashion-mnist", 0.1, None, 7),
    ]
    assert spec.base["data"] == {"dataset": "fashion-mnist", "val_fraction": 0.3}  # untouched


@pytest.mark.parametrize("grid", ['"optim.lr" = [0.001]', 'model = ["mlp", "cnn_lab"]'])
def test_a_spec_names_its_model(tmp_path: Path, grid: str, capsys):
    """In [base] or as an axis; without one every trial trained the default model on the
    whole of MNIST (as `dfl.train({})` refuses to). A study made from such a spec before the
    check is still read back: its status shows."""
    path = write_spec(tmp_path, f'name = "s"\n[grid]\n{grid}\n')
    if grid.startswith("model"):
        assert load_spec(path).keys == ["model"]
        return
    with pytest.raises(ConfigError, match=r"spec.toml: the spec names no model: add model = "):
        load_spec(path)
    with pytest.raises(ConfigError, match=r"^sweep spec: the spec names no model"):
        spec_from_dict({"name": "s", "grid": {"optim.lr": [0.001]}})
    # The checks of new specs only: a study made before them is read back as it was made.
    stored = {"name": "s", "base": {"model": "mlp"}, "metric": "val_accuracy"}
    spec_from_dict({**stored, "grid": {"optim.lr": [1, 1.0]}, "direction": "minimize"}, True)
    step = {"n_trials": 2, "space": {"optim.lr": {"low": 0.0, "high": 0.25, "step": 0.1}}}
    spec_from_dict({**stored, "search": step}, stored=True)
    with pytest.raises(ConfigError, match=r"is not a multiple of step \(0.1\).*set high to 0.2"):
        spec_from_dict({**stored, "search": step})
    old = SweepSpec.model_validate({"name": "s", "grid": {"optim.lr": [0.001]}})
    studies.create_or_load(old, open_storage(storage_url(None, tmp_path)), tmp_path)
    assert cli.main(["sweep", "status", "s", "--out", str(tmp_path)]) == 0
    assert "grid of 1 trials" in capsys.readouterr().out


def test_status_counts_workers_not_trials(tmp_path: Path):
    """A worker training a fused group of three was shown as "3 worker(s)"; a sweep stopped
    by Ctrl-C (its trials requeued, none running) showed an ETA at 1 worker, with none. (With
    nothing running and nothing stalled, a worker may also be starting: it is said so.)"""
    from dfl.sweep.status import format_status, sweep_status

    spec = spec_from_dict(
        {"name": "w", "base": {"model": "mlp"}, "grid": {"seed": [0, 1, 2, 3, 4]}}
    )
    study = studies.create_or_load(spec, open_storage(storage_url(None, tmp_path)), tmp_path)
    for _ in range(4):
        trial = study.ask()
        trial.set_user_attr("worker", "host:1")
    study.tell(trial, 0.5)  # one finished, for an ETA; three running in one worker's group
    shown = format_status(sweep_status(study, spec, "here"))
    assert sweep_status(study, spec, "here").workers == 1 and " at 1 worker(s)" in shown, shown
    for t in study.get_trials(states=[optuna.trial.TrialState.RUNNING]):
        study.tell(t.number, state=optuna.trial.TrialState.FAIL)
    shown = format_status(sweep_status(study, spec, "here"))
    assert "no trial running now: if no `dfl sweep` or `dfl worker` runs on this study" in shown
    assert "ETA" not in shown, shown


def test_a_directory_given_as_the_sweep_database_says_so(tmp_path: Path, capsys):
    assert cli.main(["sweep", "status", "s", "--storage", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith(f"({tmp_path} is a directory: give the sweep's study.db, or --out its "
                        "directory)"), err  # fmt: skip
    assert "\n" not in err
