"""Inputs a user can get wrong, each through the real command line: one stderr line
`dfl: error: ...` that names the problem and the fix, the documented exit code (2 bad input,
1 an unwritable directory or a full disk), no traceback, and nothing left behind: no run
directory, no config.toml or status.json, no half-written checkpoint."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import dfl
from conftest import DFL, run, synthetic_digits, wait_for, write_idx_dataset
from dfl import cli
from dfl.config import build_config, parse_overrides
from dfl.data.idx import write_idx
from dfl.runtime.interrupts import say
from dfl.training.run import fit
from dfl.training.run_dir import read_status

TINY = ["--set", "model_args.hidden=[16]", "--device", "cpu", "--threads", "1"]


def tiny_options(argv: list[str]) -> list[str]:
    """TINY, less what the case sets itself (a second value would be its own error, and
    another model's arguments do not mix with an mlp's)."""
    extra = ["--device", "cpu"]
    if "--threads" not in argv:
        extra += ["--threads", "1"]
    if not any(a.startswith("model_args.") for a in argv):  # an mlp's, and the case's own
        extra += ["--set", "model_args.hidden=[16]"]
    return extra


def assert_one_error(err: str, message: str) -> None:
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("dfl: error:"), err
    assert message in lines[0], err
    assert "Traceback" not in err


@pytest.fixture(scope="module")
def five_classes(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("five") / "digits"
    root.mkdir()
    for prefix, (x, y) in {
        "train": synthetic_digits(200, 0, 5),
        "t10k": synthetic_digits(50, 1, 5),
    }.items():
        write_idx(root / f"{prefix}-images-idx3-ubyte", x.numpy())
        write_idx(root / f"{prefix}-labels-idx1-ubyte", y.numpy().astype("uint8"))
    return root


def write_spec(path: Path, digits: Path) -> Path:
    path.write_text(
        'name = "tiny"\nmetric = "val_accuracy"\n[base]\nmodel = "mlp"\n'
        f'model_args = {{ hidden = [16] }}\ndevice = "cpu"\nepochs = 1\n'
        f'data = {{ dataset = "{digits}" }}\n[grid]\n"optim.lr" = [0.001]\n'
    )
    return path


# Each case: the arguments after `dfl` (DATA, FIVE, SPEC and TMP stand for paths), the exit
# code, and a part of the message.
CASES = {
    "no full batch with drop_last": (
        ["train", "mlp", "--dataset", "DATA", "--epochs", "1", "--set", "data.train_subset=200",
         "--batch-size", "5000", "--set", "drop_last=true"],
        2, "leaves no full training batch",
    ),
    "an empty validation split": (
        ["train", "mlp", "--dataset", "DATA", "--epochs", "1", "--set", "data.train_subset=1"],
        2, "leaves no validation image",
    ),
    "labels beyond the model's classes": (
        ["train", "mlp", "--dataset", "FIVE", "--epochs", "1", "--set",
         "model_args.num_classes=3"],
        2, "labels up to 4 (5 classes) but model 'mlp' has 3 outputs; model_args.num_classes "
        "is 3: set it to at least 5",
    ),
    "labels beyond a layer list's last linear": (
        ["train", "cnn", "--dataset", "FIVE", "--epochs", "1", "--set",
         'model_args.layers=[{type="flatten"},{type="linear",out=3}]', "--set",
         "model_args.num_classes=5"],
        2, "has 3 outputs; give the model at least 5 outputs (a `layers` list's final linear",
    ),
    "a config file that is not UTF-8": (
        ["train", "--config", "TMP/latin.toml"], 2, "is not UTF-8 text",
    ),
    "a sweep spec that is not UTF-8": (["sweep", "TMP/latin.toml"], 2, "is not UTF-8 text"),
    "a config naming another model than the command": (
        ["train", "cnn_lab", "--config", "TMP/mlp.toml"], 2,
        "names model 'mlp' and the command 'cnn_lab': give one",
    ),
    "a reconstruction objective for a classifier": (
        ["train", "mlp", "--dataset", "DATA", "--set", 'objective="reconstruction"'], 2,
        "config key 'objective': 'mlp' is trained for classification, not reconstruction",
    ),
    "layer-wise pretraining of a model without layers to pretrain": (
        ["train", "vit_lab", "--set", 'objective="layerwise"', "--set", "model_args.depth=1"], 2,
        "'layerwise' pretrains a stacked_autoencoder's layers, and 'vit_lab' has none",
    ),
    "a pretraining layer past the last": (
        ["train", "stacked_autoencoder", "--set", 'objective="layerwise"', "--set", "layer=5",
         "--set", "model_args.sizes=[784,32,16]"],
        2, "config key 'layer': 5 is past the last of the model's 2 layers",
    ),
    "an autoencoder whose input is not the image's size": (
        ["train", "autoencoder", "--dataset", "DATA", "--epochs", "1", "--set",
         "model_args.in_features=100"],
        2, "model 'autoencoder' (in_features=100) does not fit the data's 28x28 images",
    ),
    "a code of width 0": (
        ["train", "autoencoder", "--set", "model_args.enc=0"], 2,
        "model 'autoencoder': model_args.enc: Input should be greater than 0",
    ),
    "a stacked autoencoder layer of width 0": (
        ["train", "stacked_autoencoder", "--set", "model_args.sizes=[784,0]"], 2,
        "model 'stacked_autoencoder': model_args.sizes.1: Input should be greater than 0",
    ),
    "a width of 0 in a list of widths": (
        ["train", "mlp", "--set", "model_args.hidden=[0]"], 2, "model 'mlp' (hidden=[0], ",
    ),
    "a train subset past the data": (
        ["train", "mlp", "--dataset", "DATA", "--set", "data.train_subset=999999"], 2,
        "config key 'data.train_subset': 999,999 images, but the dataset has",
    ),
    "an empty dataset key": (["train", "mlp", "--set", "data.dataset=''"], 2, "'data.dataset'"),
    "a file as --dataset": (
        ["train", "mlp", "--dataset", "TMP/notes.txt"], 2, "(a file, not a directory)",
    ),
    "a sweep spec as a run's config": (
        ["train", "--config", "SPEC"], 2, "is a sweep spec, not a run's config: run it with",
    ),
    "a directory as --config": (["train", "--config", "TMP"], 2, "is a directory"),
    "a storage file that is not SQLite": (
        ["sweep", "SPEC", "--storage", "TMP/notes.txt"], 2, "is not an SQLite database",
    ),
    "a seed numpy cannot take": (
        ["train", "mlp", "--seed", "99999999999999999999999"], 2, "config key 'seed'",
    ),
    "a negative seed": (["train", "mlp", "--set", "data.split_seed=-1"], 2, "data.split_seed"),
    "more threads than cores": (
        ["train", "mlp", "--threads", "100000"], 2, "more than this machine's",
    ),
    "a bool for a float": (["train", "mlp", "--set", "optim.lr=true"], 2, "'optim.lr'"),
    "a bool for an int": (["train", "mlp", "--set", "epochs=true"], 2, "'epochs'"),
    "a string for an int": (["train", "mlp", "--set", 'epochs="1"'], 2, "'epochs'"),
    "a bool in model_args": (
        ["train", "mlp", "--set", "model_args.hidden=[true]"], 2, "model_args.hidden",
    ),
    "a flag and --set for one key": (
        ["train", "mlp", "--epochs", "1", "--set", "epochs=-3"], 2,
        "'epochs' is given twice (--epochs 1 and --set epochs=-3)",
    ),
    "--set twice for one key": (
        ["train", "mlp", "--set", "epochs=1", "--set", "epochs=2"], 2,
        "'epochs' is given twice (--set epochs=1 and --set epochs=2)",
    ),
    "--set of a section and a key in it": (
        ["train", "mlp", "--set", "data={val_fraction=0.1}", "--set", "data.val_fraction=0.3"],
        2, "is given twice",
    ),
    "an early-stop metric nobody records": (
        ["train", "mlp", "--dataset", "DATA", "--set", 'early_stop.metric="foo"', "--set",
         "early_stop.patience=2"],
        2, "'foo' is not a metric this run records",
    ),
    "a freeze prefix of a later phase": (  # refused after two phases had trained
        ["train", "stacked_autoencoder", "--dataset", "DATA", "--set", "model_args.sizes=[784, 8]",
         "--set", "pretrain.epochs=1",
         "--set", "pretrain.classifier_epochs=1", "--set", 'pretrain.classifier_freeze=["no"]'],
        2, "pretrain.classifier_freeze: no parameter starts with 'no'",
    ),
    "an accuracy watched for a fall": (
        ["train", "mlp", "--dataset", "DATA", "--set", 'early_stop.metric="val_accuracy"', "--set",
         'early_stop.mode="min"', "--set", "early_stop.patience=2"],
        2, "'min' would count val_accuracy getting worse as progress",
    ),
    "an accuracy for an autoencoder": (
        ["train", "autoencoder", "--set", 'early_stop.metric="val_accuracy"'],
        2, "the reconstruction objective records train_loss, val_loss, test_loss",
    ),
    "sweep --threads 0": (["sweep", "SPEC", "--threads", "0"], 2, "--threads must be"),
    "sweep --workers 0": (["sweep", "SPEC", "--workers", "0"], 2, "--workers must be"),
    "sweep --workers past 4 a core": (
        ["sweep", "SPEC", "--workers", "100000"], 2, "more than 4 a core on this machine's",
    ),
    "sweep --dry-run --workers past 4 a core": (
        ["sweep", "SPEC", "--dry-run", "--workers", "100000"], 2, "more than 4 a core",
    ),
    "reproduce --seeds of 20 digits": (
        ["reproduce", "--profile", "smoke", "--seeds", "9" * 20, "--out", "TMP/r"], 2,
        "seeds must be a whole number from 1 to 100",
    ),
    "sweep --out under a file": (
        ["sweep", "SPEC", "--out", "TMP/notes.txt/sweep"], 2, "cannot be made (Not a directory)",
    ),
    "sweep --threads past the cores": (
        ["sweep", "SPEC", "--threads", "100000"], 2, "more than this machine's",
    ),
    "train --out ''": (["train", "mlp", "--out", ""], 2, "--out is empty"),
    "sweep --out ''": (["sweep", "SPEC", "--out", ""], 2, "--out is empty"),
    "report ''": (["report", ""], 2, "RUN_DIR is empty"),  # not the current directory
    "sweep ''": (["sweep", ""], 2, "SPEC is empty"),
    "a file as --out": (["train", "mlp", "--dataset", "DATA", "--out", "TMP/notes.txt"],
                        2, "is a file, not a directory"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_and_leaves_nothing(case, tmp_path, capsys, digits, five_classes):
    argv, code, message = CASES[case]
    (tmp_path / "latin.toml").write_bytes(b"\xff\xfe")
    (tmp_path / "mlp.toml").write_text('model = "mlp"\n')
    (tmp_path / "notes.txt").write_text("not a database, just notes\n")
    spec = write_spec(tmp_path / "spec.toml", digits)
    paths = {"DATA": digits, "FIVE": five_classes, "SPEC": spec, "TMP": tmp_path}
    argv = [str(paths[a]) if a in paths else a.replace("TMP", str(tmp_path)) for a in argv]
    if argv[0] == "train" and "--out" not in argv:
        argv += [*tiny_options(argv), "--out", str(tmp_path / "o")]
    if argv[0] == "sweep" and "--out" not in argv:
        argv += ["--out", str(tmp_path / "sweep")]
    before = sorted(tmp_path.rglob("*"))
    got, _, err = run(capsys, *argv)
    assert got == code, err
    assert_one_error(err, message)
    assert sorted(tmp_path.rglob("*")) == before  # no run directory, lock or config left
    assert (tmp_path / "notes.txt").read_text() == "not a database, just notes\n"


def test_a_run_that_cannot_start_leaves_an_existing_directory_as_it_was(tmp_path, capsys, digits):
    out = tmp_path / "mine"
    out.mkdir()
    code, _, err = run(
        capsys, "train", "mlp", "--dataset", str(digits), "--set", "data.train_subset=1",
        *TINY, "--out", str(out),
    )  # fmt: skip
    assert code == 2
    assert_one_error(err, "no validation image")
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("where", ["folder", "cwd"])
def test_a_directory_of_other_files_is_refused(where, tmp_path, capsys, digits, monkeypatch):
    """`--out .`, `--out /` or a folder of one's own files: a run would mix its files with
    theirs. Refused before anything is written; `dfl.train(out="")` too."""
    import dfl

    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    monkeypatch.chdir(out)
    given = str(out) if where == "folder" else "."
    code, _, err = run(capsys, "train", "mlp", "--dataset", str(digits), *TINY, "--out", given)
    assert code == 2
    assert_one_error(err, "is not empty (notes.txt) and holds no dfl run")
    with pytest.raises(dfl.DflError, match="run directory is empty"):
        dfl.train("mlp", out="", data={"dataset": str(digits)}, epochs=1)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert (out / "notes.txt").read_text() == "keep me"


PRETRAINED = ["stacked_autoencoder", "--set", "pretrain.epochs=1", "--set",
              "model_args.sizes=[784,16]", "--epochs", "1",
              "--device", "cpu", "--threads", "1"]  # fmt: skip


@pytest.mark.parametrize("model", ["mlp", "pretrained"])
def test_what_a_killed_start_half_wrote_is_not_foreign(model, tmp_path, capsys, digits):
    """A kill between a run's first temporary file and its rename (a sweep worker killed as it
    starts a trial) leaves `.config.toml.<random>.part`: the rerun takes the directory and
    removes it. Anyone else's hidden file is still refused."""
    args = ["mlp", *TINY] if model == "mlp" else PRETRAINED
    out = tmp_path / "trial"
    out.mkdir()
    (out / ".config.toml.4lokmo8n.part").write_text("half")
    code, _, err = run(capsys, "train", *args, "--dataset", str(digits), "--out", str(out))
    assert code == 0, err
    assert (out / "config.toml").exists()
    if model == "mlp":  # removed under the run's lock (a pretrained folder has none: kept)
        assert not list(out.glob(".*.part"))

    other = tmp_path / "other"
    other.mkdir()
    (other / ".notes.txt.4lokmo8n.part").write_text("theirs")
    code, _, err = run(capsys, "train", *args, "--dataset", str(digits), "--out", str(other))
    assert code == 2
    assert_one_error(err, ".notes.txt.4lokmo8n.part")
    assert (other / ".notes.txt.4lokmo8n.part").read_text() == "theirs"


# --- unwritable and full -------------------------------------------------------------------


@pytest.fixture
def unwritable_dir(tmp_path: Path):
    """A directory nobody can create anything in: immutable (chattr +i, which binds root
    too), or read-only where chattr is not allowed and we are not root."""
    path = tmp_path / "locked"
    path.mkdir()
    chattr = shutil.which("chattr")
    if chattr and subprocess.run([chattr, "+i", str(path)], capture_output=True).returncode == 0:
        yield path
        subprocess.run([chattr, "-i", str(path)], check=True)
        return
    path.chmod(0o555)
    if os.access(path, os.W_OK):
        path.chmod(0o755)
        pytest.skip("cannot make a directory unwritable here (root without chattr)")
    yield path
    path.chmod(0o755)


def test_unwritable_out_exits_1_and_leaves_nothing(unwritable_dir, capsys, digits):
    out = unwritable_dir / "run"
    code, _, err = run(capsys, "train", "mlp", "--dataset", str(digits), *TINY, "--out", str(out))
    assert code == 1
    assert_one_error(err, f"cannot write to run directory {out}")
    assert list(unwritable_dir.iterdir()) == []


@pytest.mark.mnist
def test_an_unwritable_data_cache_exits_1(unwritable_dir, capsys, monkeypatch, tmp_path):
    """The data cache is a directory dfl writes, like --out: exit 1, as the README says (it
    was 2, the code for bad input)."""
    monkeypatch.setenv("DFL_DATA_DIR", str(unwritable_dir / "cache"))
    out = tmp_path / "run"
    code, _, err = run(capsys, "train", "mlp", *TINY, "--epochs", "1", "--out", str(out))
    assert code == 1
    assert_one_error(err, "set DFL_DATA_DIR to a writable directory")
    assert not out.exists()


def test_disk_full_when_the_run_directory_is_made(tmp_path, capsys, digits, monkeypatch):
    real_mkdir = os.mkdir

    def full(path, *args, **kwargs):  # what ENOSPC looks like to mkdir
        if str(path).startswith(str(tmp_path)):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", full)
    out = tmp_path / "a" / "run"
    code, _, err = run(capsys, "train", "mlp", "--dataset", str(digits), *TINY, "--out", str(out))
    assert code == 1
    assert_one_error(err, "No space left on device (free some space")
    assert not (tmp_path / "a").exists()


@pytest.mark.slow
def test_disk_full_before_anything_is_written_exits_1_and_leaves_nothing(tmp_path, digits):
    def nothing_fits() -> None:  # every write of a byte fails with EFBIG, as on a full disk
        resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    out = tmp_path / "run"
    done = subprocess.run(
        [*DFL, "train", "mlp", "--dataset", str(digits), *TINY, "--out", str(out)],
        preexec_fn=nothing_fits,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1, done.stderr
    assert_one_error(done.stderr, "File too large")
    assert not out.exists()


# --- damaged run directories ---------------------------------------------------------------


def paused_run(out: Path, digits: Path, epochs: int = 3, until: int = 2) -> Path:
    """A run of `epochs` paused after `until`, as a killed one would be: checkpoints 1..until."""
    cfg = build_config(
        overrides=parse_overrides(
            ['model="mlp"', "model_args.hidden=[16]", f"epochs={epochs}", 'device="cpu"',
             "threads=1", f'data.dataset="{digits}"']
        )
    )  # fmt: skip
    fit(cfg, out, until_epoch=until, epoch_bar=False)
    return out


WRONG_STATES = {
    "epoch is a string": lambda s: {**s, "epoch": "four"},
    "a list": lambda s: [s],
    "no history": lambda s: {k: v for k, v in s.items() if k != "history"},
    "another epoch": lambda s: {**s, "epoch": 7},
}


@pytest.mark.parametrize("shape", list(WRONG_STATES))
def test_a_wrongly_shaped_checkpoint_state_falls_back_to_the_previous_one(
    shape, tmp_path, capsys, digits
):
    out = paused_run(tmp_path / "run", digits)
    state_file = out / "checkpoints" / "epoch-0002" / "state.json"
    state_file.write_text(json.dumps(WRONG_STATES[shape](json.loads(state_file.read_text()))))
    code, _, err = run(capsys, "train", "--resume", "--out", str(out))
    assert code == 0, err
    assert "dfl: warning: checkpoint" in err and "epoch-0002 is damaged" in err
    assert f"resumed {out} from epoch 1" in err
    assert "Traceback" not in err and "dfl: error" not in err
    assert read_status(out)["status"] == "completed"


def test_a_truncated_metrics_file_is_restored_from_the_checkpoint(tmp_path, capsys, digits):
    out = paused_run(tmp_path / "run", digits)
    metrics = out / "metrics.jsonl"
    metrics.write_text(metrics.read_text()[:100])  # cut mid-record, as a full disk might
    code, _, err = run(capsys, "train", "--resume", "--out", str(out))
    assert code == 0, err
    assert [json.loads(line)["epoch"] for line in metrics.read_text().splitlines()] == [1, 2, 3]


def test_a_finished_run_with_a_truncated_metrics_file(tmp_path, capsys, digits):
    out = paused_run(tmp_path / "run", digits, epochs=2, until=None)
    metrics = out / "metrics.jsonl"
    whole = metrics.read_text()
    metrics.write_text(whole[:100])
    code, _, err = run(capsys, "train", "--resume", "--out", str(out))
    assert code == 0, err  # the last checkpoint holds the history: written back
    assert metrics.read_text() == whole
    metrics.write_text(whole[:100])
    shutil.rmtree(out / "checkpoints")
    code, _, err = run(capsys, "train", "--resume", "--out", str(out))
    assert code == 2
    assert_one_error(err, f"{metrics} is damaged at line 1")


@pytest.mark.parametrize(
    ("status", "problem"),
    [
        ("[1, 2]", 'no "status" field'),
        ('{"status": "completed", "final": [1, 2]}', '"final" is a list'),
        ('{"status": "completed", "final": {"test_accuracy": "high"}}',
         "final \"test_accuracy\" is 'high', not a number"),
        ('{"status": "completed", "final": {"epochs_run": "x"}}', "not a count"),
        ('{"status": "completed"}', "a completed run without final metrics"),
    ],
)  # fmt: skip
def test_a_status_file_of_the_wrong_shape(status, problem, tmp_path, capsys, digits):
    """Final metrics of the wrong shape were tracebacks where the CLI formats them."""
    out = paused_run(tmp_path / "run", digits)
    (out / "status.json").write_text(status)
    code, _, err = run(capsys, "train", "--resume", "--out", str(out))
    assert code == 2
    assert_one_error(err, "is not a run status")
    assert problem in err
    # The advice works: without the file, the resume goes on from the checkpoints.
    assert "delete that file and resume (--resume) to go on from the run's checkpoints" in err
    (out / "status.json").unlink()
    code, said, progress = run(capsys, "train", "--resume", "--out", str(out))
    assert code == 0 and "resumed" in progress and said.startswith("completed")


def test_saved_threads_beyond_this_machine_do_not_block_a_resume(tmp_path, capsys, digits):
    out = paused_run(tmp_path / "run", digits)
    config = out / "config.toml"
    config.write_text(config.read_text().replace("threads = 1", "threads = 100000"))
    code, _, err = run(capsys, "train", "--resume", "--out", str(out))
    assert code == 2
    assert_one_error(err, "config key 'threads': 100000 is more than")
    code, _, err = run(capsys, "train", "--resume", "--out", str(out), "--threads", "1")
    assert code == 0, err


# --- Ctrl-C --------------------------------------------------------------------------------


def test_ctrl_c_while_the_parser_is_built(monkeypatch, capsys):
    def interrupted():
        raise KeyboardInterrupt  # where a Ctrl-C lands in the first half second: imports

    monkeypatch.setattr(cli, "build_parser", interrupted)
    code, _, err = run(capsys, "train", "mlp")
    assert code == 130
    assert err.splitlines() == ["dfl: interrupted; run the same command again to continue"]


def default_sigint() -> None:
    """A child that handles Ctrl-C as from a terminal, even when this test runs with SIGINT
    ignored (a background job of a script), which dfl rightly keeps ignoring."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.slow
def test_ctrl_c_to_the_process_group_under_timeout(tmp_path, digits):
    """`timeout` passes the group's SIGINT on to dfl, which so gets it twice: one line, then
    a quiet exit (no KeyboardInterrupt traceback from torch's atexit handlers)."""
    out = tmp_path / "run"
    proc = subprocess.Popen(
        ["timeout", "60", *DFL, "train", "mlp", "--dataset", str(digits), *TINY,
         "--epochs", "10000", "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        preexec_fn=default_sigint,
    )  # fmt: skip
    try:
        wait_for(lambda: (out / "metrics.jsonl").exists())
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("dfl:")]
    assert errors == ["dfl: interrupted; run the same command again with --resume to continue"]
    assert proc.returncode == 130


@pytest.mark.slow
@pytest.mark.parametrize("after_s", [0.1, 0.3, 0.6, 1.0])
def test_ctrl_c_in_the_first_second_is_one_line(after_s, tmp_path, digits):
    """Imports (building the parser; torch._dynamo for the first optimiser) hold a Ctrl-C
    until they are done: an import cut in half was swallowed (the run went on) or broke
    numpy ("cannot load module more than once per process"). The clock starts as `main`
    is called: before it, Python itself is starting (30-40 ms idle, more on a busy machine),
    and a Ctrl-C there is Python's KeyboardInterrupt, whatever dfl does."""
    out = tmp_path / "r"
    announced = "import sys; from dfl.cli import main; print('main', flush=True); sys.exit(main())"
    proc = subprocess.Popen(
        [sys.executable, "-c", announced, "train", "mlp", "--dataset", str(digits), *TINY,
         "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint,
    )  # fmt: skip
    assert proc.stdout.readline() == "main\n"
    time.sleep(after_s)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if not line.startswith("epoch")]
    assert len(lines) == 1 and lines[0].startswith("dfl: interrupted; run the same command"), err
    assert proc.returncode == 130
    if not out.exists():
        return  # interrupted before the run started: nothing left behind
    # or during it: --resume continues (paused once training began; running if the Ctrl-C
    # came between the status's first write and the training)
    assert read_status(out)["status"] in ("paused", "running")


@pytest.mark.slow
def test_sigterm_winds_down_like_ctrl_c_and_exits_143(tmp_path, digits):
    """SIGTERM (a scheduler, `timeout`) ended `dfl train` on the spot (the default action) and
    `dfl reproduce` with 130; now every command winds down as after Ctrl-C and says which it
    was as a shell would: 143. The run stays resumable."""
    out = tmp_path / "run"
    args = [*DFL, "train", "mlp", "--dataset", str(digits), *TINY, "--epochs", "10000"]
    proc = subprocess.Popen([*args, "--out", str(out)], stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: (out / "metrics.jsonl").exists())
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 143, err
    lines = [line for line in err.splitlines() if line.startswith("dfl:")]
    assert lines == ["dfl: interrupted; run the same command again with --resume to continue"]
    assert "Traceback" not in err
    status = read_status(out)  # --resume continues it; it says so, not "running" with no process
    assert status["status"] == "paused" and status["reason"] == "interrupted; resume to go on"
    assert dfl.load(out).status == "paused"


@pytest.mark.slow
def test_a_reader_that_goes_away_ends_the_run_resumable(tmp_path, digits):
    """`dfl train 2>&1 | head -1`: the next progress line met a closed pipe, and the run was
    recorded failed (BrokenPipeError). Now it ends as a Ctrl-C does, resumable, with a
    shell's SIGPIPE code."""
    out = tmp_path / "run"
    args = [*DFL, "train", "mlp", "--dataset", str(digits), *TINY, "--epochs", "10000"]
    proc = subprocess.Popen([*args, "--out", str(out)], stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stderr.readline()
        while line and not line.startswith("epoch"):  # a warning first, on some machine
            line = proc.stderr.readline()
        assert line.startswith("epoch   1"), line
        proc.stderr.close()  # as `head -1` exits
        assert proc.wait(timeout=60) == 141
    finally:
        proc.kill()
    assert read_status(out)["status"] == "paused"  # --resume continues it


def test_a_progress_line_goes_out_with_its_newline_in_one_write(monkeypatch):
    """`print` wrote an epoch line and its newline apart; a SIGTERM between the two put
    "dfl: interrupted" at the end of the epoch line, where nothing looking for it found it."""
    writes: list[str] = []

    class Stderr:
        def write(self, text: str) -> None:
            writes.append(text)

        def flush(self) -> None:
            pass

    monkeypatch.setattr(sys, "stderr", Stderr())
    say("epoch  21  train_loss 0.25875")
    assert writes == ["epoch  21  train_loss 0.25875\n"]


# --- models whose arguments do not fit, and memory ------------------------------------------

MISFITS = {
    "5 filters, 4 kernels": (
        "cnn_explore", ["model_args.filters=[8, 8, 8, 8, 8]", "model_args.kernels=[3, 3, 3, 3]"],
        "5 filters but 4 kernels",
    ),
    "no filters": ("cnn_explore", ["model_args.filters=[]"], "0 filters but 4 kernels"),
    "one size": ("stacked_autoencoder", ["model_args.sizes=[784]"], "at least an input"),
}  # fmt: skip


@pytest.mark.parametrize("case", MISFITS)
def test_model_arguments_that_do_not_fit_are_one_line(case, tmp_path, capsys, digits):
    import dfl

    model, sets, message = MISFITS[case]
    flags = [arg for s in sets for arg in ("--set", s)]
    for argv in (
        ["train", model, *flags, "--dataset", str(digits), "--out", str(tmp_path / "run")],
        ["shapes", model, *flags],
    ):
        code, _, err = run(capsys, *argv)
        assert code == 2
        assert_one_error(err, message)
    assert not (tmp_path / "run").exists()
    args = dict(s.split("=", 1) for s in sets)
    with pytest.raises(dfl.ConfigError, match=message):
        dfl.models.create(model, **{k.split(".")[1]: json.loads(v) for k, v in args.items()})


# Import torch and dfl first, then cap the address space a few hundred MB above what that took:
# the cap bites the model or its step, not the imports.
UNDER_A_CAP = """
import resource, sys
import torch
from dfl.cli import main
size = int(next(l for l in open("/proc/self/status") if l.startswith("VmSize")).split()[1])
cap = (size + 600_000) * 1024
resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
@pytest.mark.parametrize(
    ("where", "args"),
    [
        ("build", ["vit", "--set", "model_args.dim=1000000", "--set", "model_args.dim_head=8"]),
        ("step", ["cnn_explore", "--batch-size", "3000", "--set", "data.val_fraction=0.1"]),
    ],
)
def test_out_of_memory_is_one_line_and_the_run_failed(where, args, tmp_path):
    data = write_idx_dataset(tmp_path / "digits", 3400, 64)
    out = tmp_path / "run"
    argv = [*args, "--dataset", str(data), "--epochs", "1", "--device", "cpu", "--out", str(out)]
    done = subprocess.run(
        [sys.executable, "-c", UNDER_A_CAP, "train", *argv], capture_output=True, text=True
    )
    assert done.returncode == 1, done.stderr
    assert_one_error(done.stderr, "memory")
    if where == "build":
        assert not out.exists()  # nothing was written
    else:
        status = read_status(out)
        assert status["status"] == "failed" and "out of memory in epoch 1" in status["reason"]


# --- input that is not a config key -----------------------------------------------------------


def test_a_gzip_bomb_is_refused_before_it_takes_the_memory(tmp_path, capsys, monkeypatch):
    """A few kilobytes that inflate past the ceiling (lowered here to 1 MiB, so the test is
    quick; the real one is 1 GiB) as a custom dataset's training images."""
    import gzip

    from dfl.data import idx

    monkeypatch.setattr(idx, "MAX_IDX_BYTES", 1 << 20)
    data = write_idx_dataset(tmp_path / "digits", 64, 16)
    bomb = gzip.compress(bytes(4 << 20))  # 4 MiB of zeros in about 4 kB
    (data / "train-images-idx3-ubyte").write_bytes(bomb)
    code, _, err = run(capsys, "train", "mlp", "--dataset", str(data), *TINY)
    assert code == 2
    assert_one_error(err, "inflates to more than 1 MiB")


@pytest.mark.parametrize("kind", ["device", "fifo", "huge"])
def test_a_config_that_is_not_a_small_regular_file_is_refused(kind, tmp_path, capsys):
    path = {"device": Path("/dev/zero"), "fifo": tmp_path / "pipe", "huge": tmp_path / "big"}[kind]
    if kind == "fifo":
        os.mkfifo(path)  # opening it would wait for a writer forever
    if kind == "huge":
        path.write_text("# a log, not a config\n" * 100_000)
    code, _, err = run(capsys, "train", "--config", str(path), "--print-config")
    assert code == 2
    message = "bytes; a config is a few hundred" if kind == "huge" else "not a regular file"
    assert_one_error(err, message)


def test_a_value_nested_thousands_deep_is_one_line(capsys):
    deep = "[" * 5000 + "]" * 5000
    code, _, err = run(capsys, "train", "mlp", "--set", f"model_args.hidden={deep}")
    assert code == 2
    assert_one_error(err, "nested too deeply")


def test_damaged_final_weights_are_named_not_loaded(tmp_path, digits):
    """A flipped byte in model.safetensors' tensor data still parses; the sha256 the run
    recorded when it finished tells."""
    from dfl.errors import UnloadableRun
    from dfl.training.trained import load_trained

    cfg = build_config(overrides={"model": "mlp", "epochs": 1, "device": "cpu", "threads": 1,
                                  "data": {"dataset": str(digits)}})  # fmt: skip
    fit(cfg, tmp_path / "run", epoch_bar=False)
    load_trained(tmp_path / "run")  # intact: loads
    weights = tmp_path / "run" / "model.safetensors"
    weights.write_bytes(with_a_flipped_byte(weights.read_bytes()))
    with pytest.raises(UnloadableRun, match="is not the file the run wrote"):
        load_trained(tmp_path / "run")


def with_a_flipped_byte(raw: bytes) -> bytes:
    """A weights file with one bit changed inside its last tensor's data: it still parses."""
    return raw[:-100] + bytes([raw[-100] ^ 0x40]) + raw[-99:]


def test_a_folder_of_seeds_is_named_with_the_seeds_to_give(tmp_path, capsys, digits):
    """`dfl train --seeds 0,1` leaves seed0/ and seed1/; the folder taken for one run said it
    held no run, or was not empty."""
    out = tmp_path / "seeds"
    code, _, err = run(capsys, "train", "mlp", "--dataset", str(digits), *TINY, "--epochs", "1",
                       "--seeds", "0,1", "--out", str(out))  # fmt: skip
    assert code == 0, err
    code, _, err = run(capsys, "train", "--resume", "--out", str(out))
    assert code == 2
    assert_one_error(err, "holds the runs of --seeds: give --seeds 0,1 to resume them")
    code, _, err = run(capsys, "train", "mlp", "--dataset", str(digits), *TINY, "--out", str(out))
    assert code == 2
    assert_one_error(err, "holds the runs of --seeds (seed0, seed1), not one run: give "
                          "--seeds 0,1 to train or resume them")  # fmt: skip


def test_resuming_a_finished_run_whose_weights_are_gone_or_changed(tmp_path, capsys, digits):
    """`--resume` of a completed run hands on its weights (a sweep's or a reproduction's
    reuse too): missing or changed, it said `completed` and exit 0; now one line, exit 2."""
    out = tmp_path / "run"
    run(capsys, "train", "mlp", "--dataset", str(digits), *TINY, "--epochs", "1",
        "--out", str(out))  # fmt: skip
    weights = out / "model.safetensors"
    raw = weights.read_bytes()
    for damage, said in [
        (with_a_flipped_byte(raw), "is not the file the run wrote"),
        (None, "it has no model.safetensors"),
    ]:
        weights.unlink(missing_ok=True)
        if damage is not None:
            weights.write_bytes(damage)
        code, _, err = run(capsys, "train", "--resume", "--out", str(out))
        assert code == 2
        assert_one_error(err, said)
        # a sweep trial that reads the run's curve (until_epoch) needs no weights
        cfg = build_config(out / "config.toml", {"device": "cpu", "threads": 1})
        assert len(fit(cfg, out, resume=True, until_epoch=1, epoch_bar=False).history) >= 1


def test_init_from_damaged_weights_is_one_line_and_trains_nothing(tmp_path, capsys, digits):
    """A run started from another's weights checks them as loading does: a flipped byte
    (it trained on them silently) and a cut file (a SafetensorError traceback) are refused."""
    run(capsys, "train", "mlp", "--dataset", str(digits), *TINY, "--epochs", "1",
        "--out", str(tmp_path / "first"))  # fmt: skip
    weights = tmp_path / "first" / "model.safetensors"
    raw = weights.read_bytes()
    for damage, said in [
        (with_a_flipped_byte(raw), "is not the file the run wrote"),
        (raw[:6], "model.safetensors is damaged (SafetensorError"),
    ]:
        weights.write_bytes(damage)
        out, start = tmp_path / "second", f'init_from="{tmp_path / "first"}"'
        code, _, err = run(capsys, "train", "mlp", "--dataset", str(digits), *TINY,
                           "--set", start, "--out", str(out))  # fmt: skip
        assert code == 2
        assert_one_error(err, f"init_from: cannot load run {tmp_path / 'first'}: ")
        assert said in err and not out.exists()


def test_train_from_python_gives_back_the_callers_thread_count(tmp_path, digits):
    import torch

    import dfl

    before = torch.get_num_threads()
    dfl.train("mlp", out=tmp_path / "run", threads=1, epochs=1, data={"dataset": str(digits)})
    assert torch.get_num_threads() == before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--seeds", "-1"], "must be at least 1, not -1"),
        (["--seeds", "0"], "must be at least 1, not 0"),
        (["--only", ""], "--only names no experiment"),
    ],
)
def test_reproduce_refuses_counts_and_lists_that_mean_nothing(args, message, tmp_path, capsys):
    """They once meant the default silently (0, "") or failed deep inside (-1)."""
    code, _, err = run(
        capsys, "reproduce", "--profile", "smoke", *args, "--out", str(tmp_path / "r")
    )
    assert code == 2
    assert message in err and "Traceback" not in err and len(err.splitlines()) == 1
    assert not (tmp_path / "r").exists()
