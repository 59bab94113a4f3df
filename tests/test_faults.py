"""Faults injected into real processes: SIGKILL mid-training and mid-checkpoint, a full disk,
and fuzzed configs and command lines. Nothing may be lost, half-written or shown as a
traceback."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import DFL, wait_for
from dfl.cli import main
from dfl.config import build_config, set_dotted
from dfl.errors import ConfigError
from dfl.training import checkpoint

TIMING = ("seconds", "samples_per_s")

# The families whose resume restores something the others do not. The in-process test
# (test_trainer.py::test_every_model_resumes_identically) resumes every one of the 11 models in
# fp32 and bf16; these cases add a real process killed by SIGKILL and a fresh one resuming, so
# they keep one case per kind of state a checkpoint must bring back:
FAMILIES = {
    # A dense classifier, the simplest state (Adam moments of plain matrices): when only this
    # case fails, the fault is in checkpointing itself, not in one family's state.
    "mlp": ["--set", "model_args.hidden=[128, 128]"],
    # The stacked autoencoder trained as a classifier: its decoders get no gradient, so Adam
    # holds state for some parameters only, and the saved state must map back onto the right
    # ones.
    "stacked_autoencoder": [],
    # The lab's CNN: BatchNorm running statistics (int64 batch counts among them) and SGD
    # momentum buffers on channels-last weights, the layout a resume once got wrong (the fused
    # optimisers paired channels-last weights with standard-layout moments).
    "cnn_lab": ["--set", 'optim.name="sgd"', "--set", "optim.momentum=0.9", "--lr", "0.01"],
    # The modern ViT (two of its six blocks: the same layers, less to train): dropout draws
    # from the torch generator the checkpoint restores, its 50 tokens go through the fused
    # attention kernel, and it has parameters that are no layer's weight (class token,
    # positions).
    "vit": ["--set", "model_args.depth=2"],
}
# bf16 where it is a family's own path: the CNN's, which `precision = "auto"` picks on a CPU
# with native bf16 (this one), through oneDNN's bf16 convolutions that the resuming process
# chooses afresh; and the ViT's fused attention, which has a bf16 kernel of its own. bf16
# changes nothing a checkpoint holds (weights and moments stay fp32), so for the dense model
# and the stacked autoencoder, whose auto is fp32, the in-process test's bf16 cases suffice.
CASES = [
    ("mlp", "fp32"),
    ("stacked_autoencoder", "fp32"),
    ("cnn_lab", "fp32"),
    ("cnn_lab", "bf16"),
    ("vit", "fp32"),
    ("vit", "bf16"),
]
CASE_IDS = [f"{m}-{p}" for m, p in CASES]
EPOCHS = 4  # killed in epoch 3 (or in epoch 3's checkpoint); the resume trains 3 and 4


def train_args(
    data: Path, out: Path, epochs: int = EPOCHS, model: str = "mlp", precision: str = "fp32"
) -> list[str]:
    return [
        *DFL,
        "train",
        model,
        *FAMILIES.get(model, []),  # test_gpu.py kills other families too, at their defaults
        "--dataset",
        str(data),
        "--epochs",
        str(epochs),
        "--batch-size",
        "32",
        "--device",
        "cpu",
        "--precision",
        precision,
        "--deterministic",
        "--threads",
        "1",
        "--seed",
        "7",
        "--out",
        str(out),
    ]


def history(run: Path) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in lines]


@pytest.fixture(scope="module")
def uninterrupted(digits: Path, tmp_path_factory):
    """The uninterrupted run of each case, trained once for the module."""
    runs: dict[tuple[str, str], Path] = {}

    def get(model: str, precision: str) -> Path:
        if (model, precision) not in runs:
            out = tmp_path_factory.mktemp("whole") / f"{model}-{precision}"
            args = train_args(digits, out, model=model, precision=precision)
            subprocess.run(args, check=True, capture_output=True)
            runs[model, precision] = out
        return runs[model, precision]

    return get


def final_status(run: Path) -> dict:
    return json.loads((run / "status.json").read_text())


def kill_when(args: list[str], pause_at_epoch: int, condition) -> None:
    """Start `dfl train`, holding still while it writes checkpoint `pause_at_epoch` (it
    cannot finish before the kill), and SIGKILL it once `condition` holds."""
    env = {**os.environ, "DFL_FAULT_PAUSE_BEFORE_RENAME": f"{pause_at_epoch}:60"}
    proc = subprocess.Popen(args, env=env, stderr=subprocess.DEVNULL)
    try:
        wait_for(condition)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


def resume_and_compare(args: list[str], out: Path, whole: Path) -> None:
    done = subprocess.run([*args, "--resume"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "resumed" in done.stderr
    assert history(out) == history(whole)  # every epoch's losses and accuracies, bit for bit
    assert final_status(out)["final"]["test_loss"] == final_status(whole)["final"]["test_loss"]


@pytest.mark.slow
@pytest.mark.parametrize(("model", "precision"), CASES, ids=CASE_IDS)
def test_sigkill_during_training_then_resume_matches(
    digits, uninterrupted, tmp_path, model, precision
):
    out, whole = tmp_path / "run", uninterrupted(model, precision)
    args = train_args(digits, out, model=model, precision=precision)
    # Killed as soon as epoch 2's checkpoint is in place, so mostly in the middle of epoch 3;
    # a pause in epoch 4's checkpoint only keeps a slow poll from finding the run finished.
    kill_when(args, 4, lambda: (out / "checkpoints" / "epoch-0002").exists())
    assert final_status(out)["status"] == "running"  # killed: nothing claims it finished
    resume_and_compare(args, out, whole)


def checkpoint_dirs(run: Path) -> list[Path]:
    return sorted((run / "checkpoints").glob("epoch-*"))


@pytest.mark.slow
@pytest.mark.parametrize(("model", "precision"), CASES, ids=CASE_IDS)
def test_sigkill_between_checkpoint_write_and_rename(
    digits, uninterrupted, tmp_path, model, precision
):
    out, whole = tmp_path / "run", uninterrupted(model, precision)
    args = train_args(digits, out, model=model, precision=precision)
    kill_when(args, 3, lambda: any((out / "checkpoints").glob(".epoch-0003.tmp-*/state.json")))
    # Epoch 3's checkpoint was written but never renamed: epoch 2 is the newest intact one.
    assert [p.name for p in checkpoint_dirs(out)] == ["epoch-0001", "epoch-0002"]
    _, state = checkpoint.load_latest(out / "checkpoints")
    assert state["epoch"] == 2
    resume_and_compare(args, out, whole)
    assert not list((out / "checkpoints").glob(".epoch-*"))  # the half-made one is cleared


@pytest.mark.slow
@pytest.mark.parametrize("model", FAMILIES)  # one writer for all; checkpoints of each makeup
def test_full_disk_is_one_line_and_leaves_nothing_half_written(digits, tmp_path, model):
    out = tmp_path / "run"

    def small_files_only() -> None:  # like a full disk: writes past 20 kB fail with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    done = subprocess.run(
        train_args(digits, out, epochs=2, model=model),
        preexec_fn=small_files_only,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1
    errors = [line for line in done.stderr.splitlines() if not line.startswith("epoch")]
    assert len(errors) == 1 and errors[0].startswith("dfl: error:"), done.stderr
    assert "File too large" in errors[0]
    assert "free some space" in errors[0] and "resume" in errors[0]  # and how to go on
    assert checkpoint_dirs(out) == []  # no checkpoint under a final name
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]  # and no leftovers


# --- fuzzing -------------------------------------------------------------------------------

KEYS = [
    "epochs",
    "batch_size",
    "optim.lr",
    "optim.name",
    "data.val_fraction",
    "schedule.name",
    "model",
    "model_args.hidden",
    "early_stop.patience",
    "precision",
    "seed",
    "bogus",
    "optim.momentum",
    "data.augment_shift",
    "grad_clip",
    "device",
    "data.bogus",
]
VALUES = st.one_of(
    st.integers(-5, 5),
    st.floats(allow_nan=True),
    st.text(max_size=5),
    st.booleans(),
    st.lists(st.integers(-2, 64), max_size=3),
)


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=4))
def test_random_configs_validate_or_name_the_key(pairs):
    tree: dict = {}
    for key, value in pairs.items():
        set_dotted(tree, key, value)
    try:
        build_config(overrides=tree)
    except ConfigError as e:
        assert "config key '" in str(e) or "nesterov" in str(e)


ARGS = [
    "train",
    "mlp",
    "cnn_lab",
    "nosuch",
    "--epochs",
    "--lr",
    "--set",
    "epochs=x",
    "optim.lr=-1",
    "bogus=1",
    "--config",
    "missing.toml",
    "--batch-size",
    "0",
    "-3",
    "abc",
    "--precision",
    "fp8",
    "--device",
    "tpu",
    "--seed",
    "1.5",
    "model_args.hidden=[0]",
]


@settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)  # capsys is re-read
@given(argv=st.lists(st.sampled_from(ARGS), max_size=6))
def test_random_command_lines_never_show_a_traceback(argv, capsys):
    argv = ["train", *argv, "--print-config"]  # validate everything, train nothing
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own usage errors
        code = e.code
    err = capsys.readouterr().err
    assert code in (0, 2), (argv, err)
    assert "Traceback" not in err
    if code == 2:
        assert err.count("\n") == 1 and err.startswith(("dfl: error:", "dfl train: error:"))


@pytest.mark.slow
def test_full_disk_while_writing_the_report_keeps_the_old_one(digits, tmp_path):
    out = tmp_path / "repro"
    made = subprocess.run(
        [
            *DFL,
            "reproduce",
            "--profile",
            "smoke",
            "--only",
            "conv,attention",
            "--dataset",
            str(digits),
            "--device",
            "cpu",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
    )
    assert made.returncode == 0, made.stderr
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    (out / "figures" / "attention_weights.png").unlink()  # must be redrawn: a big write

    def small_files_only() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    done = subprocess.run(
        [*DFL, "report", str(out)], preexec_fn=small_files_only, capture_output=True, text=True
    )
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("dfl: error: File too large")
    assert done.stderr.rstrip().endswith("; free some space and run the same command again")
    after = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert not [p for p in after if ".tmp" in p.name or p.name.endswith(".part")]
    for path in ("report.html", "report.md", "results.json"):  # old and whole, never half new
        assert after[out / path] == before[out / path]


def test_no_config_value_can_reach_a_shell():
    """dfl starts processes only with argument lists; nothing in it goes through a shell."""
    src = Path(__file__).parents[1] / "src" / "dfl"
    risky = ("shell=True", "os.system(", "os.popen(", "pickle.load", "torch.load(")
    found = [
        f"{p.relative_to(src)}: {r}" for p in src.rglob("*.py") for r in risky if r in p.read_text()
    ]
    # The one pickle: the embedded MNIST, unpickled only after its sha256 matched.
    assert found == ["data/embedded.py: pickle.load"], found
