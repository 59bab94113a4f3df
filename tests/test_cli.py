"""The command line as a user meets it: help everywhere, one-line errors with exit code 2."""

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import dfl
from conftest import run, write_idx_dataset
from dfl.cli import build_parser
from dfl.training.run_dir import read_status


def _subparsers(parser):
    """(name, parser) for every command and sub-command, `sweep status` included."""
    for action in parser._actions:
        choices = action.choices if isinstance(action.choices, dict) else {}
        for name, sub in choices.items():
            if hasattr(sub, "_actions"):
                yield name, sub
                yield from ((f"{name} {n}", s) for n, s in _subparsers(sub))


def test_every_command_and_option_has_help(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")  # argparse wraps to the terminal: a standard one
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name in sub.choices:
        code, out, _ = run(capsys, name, "--help")
        assert code == 0 and "usage:" in out, name
        assert max(map(len, out.splitlines())) <= 80, name
    for name, sub in _subparsers(parser):
        for action in sub._actions:
            if isinstance(action, argparse._SubParsersAction):
                continue  # each of its commands has help: checked as a command
            assert action.help, f"dfl {name}: {action.option_strings or action.dest} has no help"
    code, out, _ = run(capsys, "--version")
    assert code == 0 and out.startswith("dfl ")


def test_help_and_a_mistyped_flag_do_not_wait_for_torch():
    """Every command's --help, and a flag the parser refuses, answer before torch, matplotlib
    or the experiments are imported (a second and a half of a 2-core machine's time each)."""
    argvs = [[*name.split(), "--help"] for name, _ in _subparsers(build_parser())]
    code = (
        "import sys\n"
        "from dfl.cli import main\n"
        f"for argv in {[*argvs, ['train', '--bogus']]!r}:\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print(sorted(m for m in ('torch', 'matplotlib', 'dfl.experiments.registry') "
        "if m in sys.modules), file=sys.stderr)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stderr.splitlines()[-1] == "[]"


def test_the_attention_commands_precisions_are_those_it_has_a_tolerance_for():
    from dfl.commands.attention import DTYPES
    from dfl.labtools.attention_check import TOLERANCE

    assert sorted(TOLERANCE) == DTYPES


@pytest.mark.parametrize(
    ("argv", "parser"),
    [
        (["train", "mlp", "--bogus"], "dfl train"),
        (["data", "info", "--bogus"], "dfl data info"),
        (["data", "--bogus", "info"], "dfl data"),
        (["--bogus", "models"], "dfl"),
    ],
)
def test_an_unknown_option_is_said_by_its_commands_parser(capsys, argv, parser):
    code, _, err = run(capsys, *argv)
    assert code == 2 and err.count("\n") == 1
    assert err.startswith(f"{parser}: error: unrecognized arguments: --bogus (see {parser} --help)")


def test_reproduce_help_fits_a_screen_and_quotes_the_measured_costs(capsys, monkeypatch):
    from dfl.experiments import profiles

    code, out, _ = run(capsys, "reproduce", "--help")
    assert code == 0 and len(out.splitlines()) <= 40
    assert all(f"  {name} " in out for name in profiles.PROFILES)
    # The costs come from profile_costs.json: another measurement, another help.
    measured = {"lab": {"wall_s": 600, "machine": "2 test cores", "how": "a test"}}
    monkeypatch.setattr(profiles, "measured_costs", lambda: measured)
    code, out, _ = run(capsys, "reproduce", "--help")
    assert "10.0 min on 2 test cores" in out and "25.7 min" not in out


def test_train_help_ends_with_examples_that_parse(capsys):
    from dfl.cli import TRAIN_EXAMPLES

    code, out, _ = run(capsys, "train", "--help")
    assert code == 0 and out.rstrip().endswith(TRAIN_EXAMPLES.splitlines()[-1])
    parser = build_parser()
    for line in TRAIN_EXAMPLES.splitlines()[1:-1]:
        argv = line.split("  ")[1].split()  # the command, before its comment
        assert argv[:2] == ["dfl", "train"], line
        parser.parse_args(argv[1:])  # every flag of every example exists


def test_train_on_an_idx_directory(tmp_path: Path, capsys):
    data = write_idx_dataset(tmp_path / "digits")
    out_dir = tmp_path / "run"
    code, out, _ = run(
        capsys,
        "train",
        "mlp",
        "--dataset",
        str(data),
        "--epochs",
        "2",
        "--device",
        "cpu",
        "--out",
        str(out_dir),
        "--set",
        "model_args.hidden=[16]",
    )
    assert code == 0, out
    assert out.startswith("completed: test_accuracy")
    status = json.loads((out_dir / "status.json").read_text())
    assert status["final"]["epochs_run"] == 2
    # Every file of the run readable like ordinary data (safetensors alone creates 0600).
    assert {p.name: p.stat().st_mode & 0o777 for p in out_dir.iterdir() if p.is_file()} == {
        p.name: 0o644 for p in out_dir.iterdir() if p.is_file()
    }
    # The saved config repeats the run; --resume reuses the finished one.
    code, out, _ = run(capsys, "train", "--resume", "--out", str(out_dir))
    assert code == 0 and "completed" in out
    # A mistyped run directory is named, not taken for a missing model.
    code, _, err = run(capsys, "train", "--resume", "--out", str(out_dir) + "x")
    assert code == 2 and "x holds no run" in err
    # Another model than the run's: named as the run's, not as a config file's.
    code, _, err = run(capsys, "train", "cnn_lab", "--resume", "--out", str(out_dir))
    assert code == 2 and f"{out_dir} holds a mlp run: leave out the model" in err
    # --resume with no run to continue starts nothing.
    code, _, err = run(capsys, "train", "mlp", "--resume")
    assert code == 2 and "--resume continues the run in --out" in err


def test_a_layerwise_pretrained_recipe_trains_its_phases_as_runs(tmp_path: Path, capsys):
    """configs/recipes/sae_deep.toml, shortened: each seed's layers, classifier and fine-tuning
    train as runs of their own, each from the weights of the one before it; the line printed is the
    fine-tuning's; the command again without --resume is refused, with --resume every phase
    is reused as it is."""
    data = write_idx_dataset(tmp_path / "digits")
    out_dir = tmp_path / "sae"
    argv = ["train", "--config", "configs/recipes/sae_deep.toml", "--dataset", str(data),
            "--seeds", "0,1", "--epochs", "1", "--set", "pretrain.epochs=1",
            "--set", "pretrain.classifier_epochs=1", "--set", "model_args.sizes=[784,16,8]",
            "--device", "cpu", "--out", str(out_dir)]  # fmt: skip
    code, out, _ = run(capsys, *argv)
    assert code == 0, out
    phases = ["classifier", "config.toml", "finetune", "pretrain0", "pretrain1"]
    for seed in (0, 1):
        assert sorted(p.name for p in (out_dir / f"seed{seed}").iterdir()) == phases
        assert f"-> {out_dir / f'seed{seed}' / 'finetune'}" in out
        saved = (out_dir / f"seed{seed}" / "finetune" / "config.toml").read_text()
        assert f'init_from = "{out_dir / f"seed{seed}" / "classifier"}"' in saved
        layer1 = (out_dir / f"seed{seed}" / "pretrain1" / "config.toml").read_text()
        assert 'objective = "layerwise"' in layer1 and "layer = 1" in layer1
    code, out, err = run(capsys, *argv)
    assert code != 0 and "pass --resume" in err
    before = (out_dir / "seed1" / "finetune" / "status.json").read_text()
    code, out, _ = run(capsys, *argv, "--resume")
    assert code == 0 and out.count("completed") == 2 and "2 seeds: test_accuracy" in out
    assert (out_dir / "seed1" / "finetune" / "status.json").read_text() == before
    # the folder keeps the whole config: resumed from it alone, and loaded as its fine-tuning
    code, out, _ = run(capsys, "train", "--out", str(out_dir / "seed0"), "--resume")
    assert code == 0 and f"-> {out_dir / 'seed0' / 'finetune'}" in out
    assert dfl.load(out_dir / "seed0").run_dir == out_dir / "seed0" / "finetune"
    # moved, and its fine-tuning to train again: the phases' init_from follow the folder (the
    # saved ones named the old place: refused as a changed config)
    moved = tmp_path / "moved"
    (out_dir / "seed1").rename(moved)
    shutil.rmtree(moved / "finetune")
    code, out, err = run(capsys, "train", "--out", str(moved), "--resume")
    assert code == 0 and f"-> {moved / 'finetune'}" in out, err
    for phase, start in (("pretrain1", "pretrain0"), ("finetune", "classifier")):
        assert f'init_from = "{moved / start}"' in (moved / phase / "config.toml").read_text()
    # fusing them is refused, and sizes that are no list are a one-line error
    code, _, err = run(capsys, *argv, "--resume", "--fuse", "on")
    assert code == 2 and "train one seed at a time" in err
    code, _, err = run(capsys, "train", "stacked_autoencoder", "--set", "pretrain.epochs=1",
                       "--set", "model_args.sizes=3", "--out", str(tmp_path / "bad"))  # fmt: skip
    assert code == 2 and "sizes" in err and "Traceback" not in err
    assert not (tmp_path / "bad").exists()
    # a seed that cannot train keeps no later seed from training, and its error is the exit's
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    (blocked / "seed0").write_text("not a run")
    code, _, err = run(capsys, *argv[:-1], str(blocked))
    assert code == 2 and err.strip().endswith(f"{blocked / 'seed0'} is a file; give --out a new "
                                              "or empty directory")  # fmt: skip
    assert read_status(blocked / "seed1" / "finetune")["status"] == "completed"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["train", "mlp", "--set", "optim.lrr=0.1"],
            "'optim.lrr': unknown key (did you mean 'optim.lr'?)",
        ),
        (  # an optional section's keys too
            ["train", "stacked_autoencoder", "--set", "pretrain.epoch=1"],
            "'pretrain.epoch': unknown key (did you mean 'pretrain.epochs'?)",
        ),
        (
            ["train", "mlp", "--set", "enc=64"],
            "under model_args, and `dfl models MODEL` lists them",
        ),
        (
            ["train", "cnn_lab", "--set", "pretrain.epochs=2"],
            "'pretrain': layer-wise pretraining starts a stacked_autoencoder",
        ),
        (
            ["train", "autoencoder", "--set", "model_args.encoding_dim=3"],
            "autoencoder takes enc, in_features",
        ),
        (["train", "autoencoder", "--set", "model_args.encc=3"], "did you mean 'enc'?"),
        (["train", "mlp", "--set", "model_args.enc=3", "--print-config"], "mlp takes hidden"),
        (["train", "autoencoder", "--set", "enc=64"], "did you mean 'model_args.enc'?"),
        (
            ["train", "cnn", "--set", 'model_args.layers=[{type="conv",out=4,kernal=3}]'],
            "conv has no key 'kernal' (did you mean 'kernel'?",
        ),
        (
            ["train", "cnn", "--set", 'model_args.layers=[{type="convv",out=4}]'],
            "unknown layer type 'convv' (did you mean 'conv'?",
        ),
        (
            ["train", "cnn", "--set", 'model_args.layers=[{type="conv",out=4},{type="relu"}]'],
            "(the final linear to num_classes, added because the list does not end in one)",
        ),
        (
            ["train", "cnn_explore", "--set", "model_args.pool_after=[7]"],
            "pool_after [7] names no conv",
        ),
        (["train", "mlp", "--set", "epochs=-1"], "config key 'epochs'"),
        (["train", "nosuchmodel"], "unknown model 'nosuchmodel'"),
        (["train", "mlp", "--set", "model_args.width=3"], "model_args.width"),
        (["train", "--config", "missing.toml"], "missing.toml does not exist"),
        (["train"], "name a model"),
        (["data", "info", "--dataset", "/nonexistent/dir"], "/nonexistent/dir"),
        (["trian"], "invalid choice: 'trian' (did you mean 'train'?) (see dfl --help)"),
        (["lab", "aee"], "argument EXPERIMENT: invalid choice: 'aee' (did you mean 'ae'?)"),
        (["train", "mlp", "--device", "gpu"], "invalid choice: 'gpu' (choose from "),  # no cpu
        (["train", "mlp", "--set", "train_subset=9"], "did you mean 'data.train_subset'?"),
        (
            ["sweep", "status", "s", "--workers", "3", "--dry-run"],
            "`dfl sweep status` only reports: --workers, --dry-run are for running a sweep",
        ),
        (  # read as the string "[256" before, and refused as no list
            ["train", "mlp", "--set", "model_args.hidden=[256"],
            "model_args.hidden=[256 is not valid TOML (Unclosed array",
        ),
        (
            ["train", "autoencoder", "--set", "model_args.enc=100000000000000000000000"],
            "model_args.enc is 1e+23: no size, stride or padding is above 2,147,483,647",
        ),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, capsys, argv, message):
    code, _, err = run(
        capsys, *argv, *(["--out", str(tmp_path / "o")] if argv[0] == "train" else [])
    )
    assert code == 2
    assert message in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_truncated_idx_file_is_named_and_nothing_trains(tmp_path: Path, capsys):
    data = write_idx_dataset(tmp_path / "digits")
    images = data / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:5000])
    code, _, err = run(capsys, "train", "mlp", "--dataset", str(data), "--out", str(tmp_path / "o"))
    assert code == 2 and "train-images-idx3-ubyte" in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_diverged_run_exits_3(tmp_path: Path, capsys):
    data = write_idx_dataset(tmp_path / "digits")
    code, _, err = run(
        capsys,
        "train",
        "mlp",
        "--dataset",
        str(data),
        "--lr",
        "1e10",
        "--set",
        'optim.name="sgd"',
        "--out",
        str(tmp_path / "o"),
    )
    assert code == 3 and "non-finite loss at epoch 1, step" in err


def test_print_config_and_models(capsys):
    code, out, _ = run(capsys, "train", "cnn_lab", "--print-config", "--epochs", "7")
    assert code == 0 and 'model = "cnn_lab"' in out and "epochs = 7" in out
    # The model's arguments resolved: the defaults, and what --set changed.
    code, out, _ = run(
        capsys, "train", "autoencoder", "--print-config", "--set", "model_args.enc=64"
    )
    assert "[model_args]\nenc = 64\nin_features = 784\n" in out
    assert "[data]\n# data_dir =  (not set)\n# train_subset =  (not set)\n" in out  # every key
    code, out, _ = run(capsys, "models")
    assert code == 0 and "cnn_lab" in out and "autoencoder" in out
    assert max(map(len, out.splitlines())) <= 100  # wrapped, never cut mid-sentence
    assert "a final linear to num_classes is added" in out  # the cnn entry's whole summary
    code, out, _ = run(capsys, "models", "vit")
    assert code == 0 and "heads=4" in out and "autoencoder" not in out
    assert "dfl train vit --set model_args." in out


@pytest.mark.parametrize(
    ("seeds", "message"),
    [
        ("0,-1", "a seed is 0 to 4294967295, not -1"),  # its config could never be read back
        ("99999999999", "a seed is 0 to 4294967295, not 99999999999"),
        ("1,1", "names a seed twice"),
        ("0,x", "is not a comma-separated list of seeds"),
    ],
)
def test_train_seeds_out_of_range_exit_2_in_one_line(capsys, tmp_path, seeds, message):
    code, _, err = run(capsys, "train", "mlp", "--seeds", seeds, "--out", str(tmp_path / "o"))
    assert code == 2 and message in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()
