"""dfl from Python: the same validation, run directories and one-line errors as the CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from matplotlib.figure import Figure

import dfl


@pytest.fixture
def digits(digits: Path) -> dict[str, str]:
    """conftest's digits, as the keyword `dfl.train` takes."""
    return {"data.dataset": str(digits)}


# Where a refused call would have written (a relative path: it must not appear).
NOWHERE = Path("runs/test-api-refused")


def test_import_dfl_loads_no_torch():
    code = "import sys, dfl; dfl.ConfigError; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_train_load_and_resume(tmp_path: Path, digits):
    out = tmp_path / "run"
    run = dfl.train("mlp", epochs=2, lr=1e-2, out=out, **{"model_args.hidden": [16], **digits})
    assert run.status == "completed" and run.run_dir == out and len(run.history) == 2
    assert run.config.optim.lr == 1e-2 and run.config.model_args == {"hidden": [16]}
    # It learned: chance is 0.1; seeds 0-2 reach 0.66-0.89 on the 64 test digits.
    assert run.final["test_accuracy"] > 0.5
    assert isinstance(run.plot(), Figure) and isinstance(run.plot(["train_loss"]), Figure)
    with pytest.raises(
        dfl.ConfigError, match=r"^Run.plot: metrics= takes Sequence\[str\] \| None, not str"
    ):
        run.plot("train_loss")  # said "recorded no _, a, i, l, n, o, r, s, t"
    loaded = dfl.load(out)
    with pytest.raises(dfl.UnloadableRun, match="is a run's config: give its directory"):
        dfl.load(out / "config.toml")
    with pytest.raises(dfl.UnloadableRun, match="got an empty path"):
        dfl.load("")  # it loaded the current directory
    assert (loaded.history, loaded.final) == (run.history, run.final)
    assert loaded.model.training is False  # rebuilt from the directory, in eval mode
    again = dfl.train(
        "mlp", epochs=2, lr=1e-2, out=out, resume=True, **{"model_args.hidden": [16], **digits}
    )
    assert again.history == run.history  # a finished run is returned as it is
    # a config.toml edited to name no model: an error, not TrainConfig's default model
    config = out / "config.toml"
    config.write_text("".join(line for line in config.read_text().splitlines(keepends=True)
                              if not line.startswith("model = ")))  # fmt: skip
    with pytest.raises(dfl.DflError, match=r"config\.toml names no model"):
        dfl.load(out)


def test_status_is_the_same_plain_str_after_train_and_after_load(tmp_path: Path, digits):
    run = dfl.train("mlp", epochs=1, out=tmp_path / "run", **{"model_args.hidden": [8], **digits})
    loaded = dfl.load(tmp_path / "run")
    assert (type(run.status), run.status) == (str, "completed")
    assert (type(loaded.status), loaded.status) == (type(run.status), run.status)
    assert repr(loaded.status) == repr(run.status) == "'completed'"  # not <RunStatus...>


def test_a_run_reads_as_one_short_line(tmp_path: Path, digits):
    run = dfl.train("mlp", epochs=2, out=tmp_path / "run", **{"model_args.hidden": [8], **digits})
    accuracy = run.final["test_accuracy"]
    expected = (
        f"Run({str(tmp_path / 'run')!r}, model='mlp', status='completed', epochs=2, "
        f"test_accuracy={accuracy:.4g})"
    )
    assert repr(run) == repr(dfl.load(run.run_dir)) == expected
    assert "\n" not in repr(run) and "history" not in repr(run)


def _shown_by_ipython(obj: object) -> set[str]:
    """The MIME types a fresh IPython display (no `%matplotlib inline`) shows `obj` as."""
    from IPython.core.formatters import DisplayFormatter

    data, _ = DisplayFormatter().format(obj)
    return set(data)


def test_figures_show_in_jupyter_without_matplotlib_inline(tmp_path: Path, digits):
    run = dfl.train("mlp", epochs=1, out=tmp_path / "run", **{"model_args.hidden": [8], **digits})
    fig = run.plot()
    assert "image/png" not in _shown_by_ipython(Figure())  # a bare figure: only its text
    assert "image/png" in _shown_by_ipython(fig)
    assert fig._repr_png_().startswith(b"\x89PNG")
    # One epoch: each curve is one point, drawn as a marker (a line of one point is nothing).
    lines = [line for ax in fig.axes for line in ax.get_lines()]
    assert lines and all(len(line.get_xdata()) == 1 for line in lines)
    assert all(line.get_marker() not in (None, "", "None") for line in lines)
    assert [t for t in fig.axes[0].get_xticks() if 0.5 <= t <= 1.5] == [1]  # whole epochs


def test_runs_given_no_directory_within_one_second_get_their_own(
    tmp_path: Path, digits, monkeypatch
):
    """The default directory is named to the second: the second and third runs started in
    that second were refused (or, with resume=True, handed the first run back)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("time.strftime", lambda _: "20261207-120000")  # one second, frozen
    runs = [dfl.train("mlp", epochs=1, **{"model_args.hidden": [4], **digits}) for _ in range(3)]
    assert [r.run_dir.name for r in runs] == [
        "mlp-20261207-120000", "mlp-20261207-120000-2", "mlp-20261207-120000-3"
    ]  # fmt: skip
    assert all(r.status == "completed" and r.run_dir.parent == Path("runs/train") for r in runs)


def test_plot_reconstructions_draws_an_autoencoders_digits(tmp_path: Path, digits):
    ae = dfl.train("autoencoder", epochs=1, out=tmp_path / "ae", **{"model_args.enc": 8, **digits})
    images = dfl.data.load(digits["data.dataset"]).test_images[:5]
    fig = ae.plot_reconstructions(images)
    assert "image/png" in _shown_by_ipython(fig)
    assert len(fig.axes) == 10 and all(ax.get_images() for ax in fig.axes)  # 2 rows of 5
    mlp = dfl.train("mlp", epochs=1, out=tmp_path / "mlp", **{"model_args.hidden": [8], **digits})
    with pytest.raises(dfl.ConfigError, match="is not an autoencoder"):
        mlp.plot_reconstructions(images)


def test_an_early_stop_after_one_epoch_says_1_epoch(tmp_path: Path, digits):
    run = dfl.train(
        "mlp",
        epochs=3,
        out=tmp_path / "run",
        **{
            "model_args.hidden": [8],
            "data.val_fraction": 0.25,
            "early_stop.patience": 1,
            "early_stop.min_delta": 1e9,  # no epoch after the first counts as better
            **digits,
        },
    )
    said = str(run.reason) + str(run.final)
    assert "has not improved for 1 epoch (best" in said and "1 epochs" not in said


def test_a_config_dict_and_a_train_config_start_the_same_run(tmp_path: Path, digits):
    tree = {"model": "mlp", "epochs": 1, "model_args.hidden": [8], **digits}
    a = dfl.train(tree, out=tmp_path / "a")
    b = dfl.train(a.config, out=tmp_path / "b")
    assert a.config == b.config and a.final["test_loss"] == b.final["test_loss"]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: dfl.train("mlp", **{"optim.lrr": 1}), "config key 'optim.lrr': unknown key"),
        (lambda: dfl.train("mlp", lr=1e-3, **{"optim.lr": 1}), "'optim.lr' is given twice"),
        (  # it trained cnn_lab
            lambda: dfl.train("mlp", model="cnn_lab", out=NOWHERE),
            r"'model' is given twice \(the model name 'mlp' and model=\)",
        ),
        (  # the later one won
            lambda: dfl.train({"model": "mlp", "optim": {"lr": 1e-3}, "optim.lr": 1e-2}),
            r"'optim.lr' is given twice \(the dict's 'optim' and the dict's 'optim.lr'\)",
        ),
        (lambda: dfl.train("no_such_model"), "config key 'model'"),
        (lambda: dfl.train("mlp", epochs="3"), "config key 'epochs'"),
        (lambda: dfl.train(3), r"model_or_config= takes str \| Path \| TrainConfig \| dict"),
        (lambda: dfl.load("/"), "is not a dfl run directory"),
        (lambda: dfl.load(NOWHERE), "runs/test-api-refused does not exist: give a run's dir"),
        (  # a section's key at the top level
            lambda: dfl.train("mlp", train_subset=20, out=NOWHERE),
            r"config key 'train_subset': unknown key \(did you mean 'data.train_subset'\?\)",
        ),
        (lambda: dfl.train({}), "names no model"),  # not the default model, silently
        (lambda: dfl.train({1: 2}), r"takes .*dict\[str, Any\], not dict \(\{1: 2\}\)"),
        (lambda: dfl.lab.run("conv", out=NOWHERE, precision="int8"), "precision must be one of"),
        (lambda: dfl.lab.run("conv", out=NOWHERE, device="tpu"), "device must be auto, cpu"),
        (
            lambda: dfl.lab.run("conv", out=NOWHERE, seeds="2"),
            r"seeds= takes int \| None, not str \('2'\)",
        ),
        (
            lambda: dfl.sweep.run({}, workers="2", out=NOWHERE),
            r"workers= takes int \| None, not str",
        ),
        (  # "(top level)": the empty part was not named
            lambda: dfl.train({"model": "mlp", ".lr": 1}),
            r"config key '.lr' has an empty part: a key is like 'optim.lr'",
        ),
        (  # a tuple, as Python writes one
            lambda: dfl.train("mlp", out=NOWHERE, **{"model_args.hidden": (8,)}),
            r"model_args.hidden: Input should be a valid list: give a list, \[8\]$",
        ),
        (lambda: dfl.data.load("mnist", data_dir=__file__), r"data directory .* is a file \("),
        # Arguments of the wrong type: a TypeError from deep inside, or a "no" taken as true.
        (lambda: dfl.train("mlp", out=5), r"^dfl.train: out= takes str \| Path \| None, not int"),
        (lambda: dfl.train("mlp", out=NOWHERE, resume="no"), r"resume= takes bool, not str"),
        (lambda: dfl.load(None), r"^dfl.load: run_dir= takes str \| Path, not NoneType"),
        (lambda: dfl.data.load("mnist", 5), r"^dfl.data.load: data_dir= takes .*, not int \(5\)"),
        (lambda: dfl.lab.run(["ae"], out=NOWHERE), r"^dfl.lab.run: name= takes str, not list"),
        (lambda: dfl.lab.run("conv", out=NOWHERE, jobs=True), r"jobs= takes int, not bool"),
        (lambda: dfl.lab.run("conv", bogus=1), "got an unexpected keyword argument 'bogus'"),
        (
            lambda: dfl.sweep.run({}, out=NOWHERE, retry_failed="no"),
            r"^dfl.sweep.run: retry_failed= takes bool, not str \('no'\)",
        ),
    ],
)
def test_errors_are_the_clis_one_line_errors(call, message):
    with pytest.raises(dfl.DflError, match=message) as info:
        call()
    assert "\n" not in str(info.value)
    assert not NOWHERE.exists()  # refused before anything is written


def test_models_and_data(tmp_path: Path, digits):
    assert "vit" in dfl.models.list() and dfl.models.create("mlp", hidden=[4]) is not None
    data = dfl.data.load(digits["data.dataset"])
    assert data.train_images.shape[1:] == (28, 28)


def test_lab_run_returns_the_typed_result(tmp_path: Path, capsys):
    lab = dfl.lab.run("conv", profile="smoke", out=tmp_path / "r")
    assert lab.result.lab["output"] == [[3, 4], [6, 11]]
    assert {c["key"]: c["verdict"] for c in lab.comparisons} == {
        "output": "reproduced",
        "size": "reproduced",
    }
    assert "| lab number |" in lab._repr_markdown_() and lab.section.paragraphs
    assert "not results" in lab._repr_markdown_()  # smoke's numbers say they are not results
    assert repr(lab) == (
        f"LabRun('conv', profile='smoke', out={str(tmp_path / 'r')!r}, lab_numbers=2, figures=0)"
    )
    err = capsys.readouterr().err  # the progress lines, named as the Python call
    assert "dfl.lab: conv: started" in err and "dfl reproduce" not in err
    # No profile: the one `dfl lab` runs on this device (the lab profile on a CPU).
    assert dfl.lab.run("conv", out=tmp_path / "default", device="cpu").profile == "lab"
    with pytest.raises(dfl.ConfigError, match="unknown lab question 'nope'"):
        dfl.lab.run("nope", out=tmp_path / "r")


@pytest.mark.slow
def test_sweep_run_takes_a_spec_as_data(tmp_path: Path, digits):
    spec = {
        "name": "api",
        "metric": "val_loss",
        "base": {"model": "mlp", "epochs": 1, "model_args": {"hidden": [8]}, "data": {
            "dataset": digits["data.dataset"], "val_fraction": 0.2}},
        "grid": {"optim.lr": [1e-3, 1e-2]},
    }  # fmt: skip
    status = dfl.sweep.run(spec, out=tmp_path / "sweep", workers=1)
    assert sorted(t.state.name for t in status.trials) == ["COMPLETE", "COMPLETE"]
    again = dfl.sweep.run(spec, out=tmp_path / "sweep", storage=tmp_path / "sweep" / "study.db")
    assert [t.number for t in again.trials] == [t.number for t in status.trials]  # a Path too
    with pytest.raises(dfl.ConfigError, match=r"'grid.optim.lr': .*: give a list, \[0.1, 0.2\]"):
        dfl.sweep.run({**spec, "grid": {"optim.lr": (0.1, 0.2)}}, out=NOWHERE)
    # Not into another sweep's directory: the trials of both met in one trials/ folder.
    with pytest.raises(
        dfl.ConfigError, match=r"holds sweep 'api': give sweep 'other' its own out=$"
    ):
        dfl.sweep.run({**spec, "name": "other"}, out=tmp_path / "sweep", workers=1)
    # Not into a training run's directory: its study.db, trials and logs went in beside it.
    run = dfl.train("mlp", out=tmp_path / "run", epochs=1, **{"model_args.hidden": [4], **digits})
    before = sorted(p.name for p in run.run_dir.iterdir())
    with pytest.raises(dfl.ConfigError, match=r"is a training run's directory \(it holds config"):
        dfl.sweep.run(spec, out=run.run_dir, workers=1)
    assert sorted(p.name for p in run.run_dir.iterdir()) == before


def test_every_checked_function_s_annotations_resolve():
    """They are read on first use; a name that only a type checker imports would fail inside
    a user's call. Importing the public modules decorates every checked function."""
    import dfl.api
    import dfl.data
    import dfl.lab
    import dfl.sweep
    import dfl.training.run  # noqa: F401  (Run.plot)
    from dfl.arguments import CHECKED

    names = {fn.__qualname__ for fn in CHECKED}
    assert {"train", "load", "run", "load_dataset", "Run.plot"} <= names, names
    for fn in CHECKED:
        fn.resolve()


def test_arguments_of_the_kinds_a_notebook_holds_are_taken(tmp_path: Path, digits, monkeypatch):
    """NumPy scalars, a tuple of metrics, a Path where a str would do."""
    import numpy as np

    run = dfl.train(
        "mlp", epochs=1, out=tmp_path / "r", resume=np.True_, **{"model_args.hidden": [4], **digits}
    )
    assert isinstance(run.plot(("train_loss",)), Figure)
    assert len(dfl.data.load(Path(digits["data.dataset"])).test_images) == 64
    with pytest.raises(dfl.ConfigError, match=r"seeds= takes int \| None, not float \(2.5\)"):
        dfl.lab.run("conv", out=NOWHERE, seeds=np.float64(2.5))
    monkeypatch.chdir(tmp_path)
    lab = dfl.lab.run("conv", profile="smoke", seeds=np.int64(1), data_dir=None)
    assert lab.comparisons


def test_messages_name_options_as_the_caller_gives_them(tmp_path: Path, digits, capsys):
    """From Python an error says `resume=True` and `out=`, where the CLI says `--resume` and
    `--out`; the resume it suggests for a damaged history is a call that works."""
    from dfl.cli import main
    from dfl.errors import CALLER, resume_command

    args = {"model_args.hidden": [4], "epochs": 1, **digits}
    run = dfl.train("mlp", out=tmp_path / "run", **args)
    said = r"pass resume=True to continue or reuse it, or choose another out=$"
    with pytest.raises(dfl.DflError, match=said):
        dfl.train("mlp", out=run.run_dir, **args)
    flags = ["--set", "model_args.hidden=[4]", "--set", f"data.dataset={digits['data.dataset']}"]
    assert main(["train", "mlp", "--epochs", "1", "--out", str(run.run_dir), *flags]) == 2
    assert "pass --resume to continue or reuse it, or choose another --out" in (
        capsys.readouterr().err
    )
    assert CALLER.get() == "python"  # the command's wording ended with it
    call = resume_command(run.run_dir).strip("`")
    again = eval(call, {"dfl": dfl})  # the suggestion, as a user would paste it
    assert again.run_dir == run.run_dir and again.history == run.history
    # What continues the work is the same call, where a command is the same command.
    assert "make the same call again to retry" in str(
        dfl.errors.ExperimentsFailed({"ae": "x"}, "r")
    )
