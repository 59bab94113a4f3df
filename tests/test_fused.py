"""Runs trained as one fused model (dfl/training/fused.py) against the same runs trained alone:
every model family, fp32 and bf16, per-epoch metrics, exact resume, early stops, the CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest
import torch

from conftest import DFL, make_dataset, run, wait_for
from dfl.config import build_config
from dfl.errors import DflError
from dfl.objectives import Objective, objective_for
from dfl.training.fused import FusedGroup, fuse_blocker, fuse_pays, train_fused
from dfl.training.run_dir import RunStatus
from dfl.training.trainer import StopRun, Trainer, native_bf16

SEEDS = (0, 1, 2)

# family: (its config keys, relative tolerance on every epoch's losses in fp32, in bf16).
# Measured here, 3 epochs of the synthetic digits: the dense models (stacked layers) and the
# ViTs (vmap) agree with their lone runs to 2e-7 in fp32 (bf16: the ViT to 2e-4). The CNN's
# grouped convolutions sum in another order, and its training carries that rounding as it
# carries any: the same lone CNN at 1 and at 2 threads differs by up to 1.5e-3 in fp32 and
# 1.7e-2 in bf16 over 3 epochs, and fused against alone by 5e-3 and 5e-2, most of it in the
# third epoch's small losses: it is compared over 2 epochs (fused against alone, bf16: 3.1e-2),
# and every family's first epoch to 5e-3.
FAMILIES = {
    "mlp": ({"model_args": {"hidden": [64], "dropout": 0.3}}, 1e-4, 1e-4),
    "autoencoder": ({}, 1e-4, 1e-4),
    "stacked_autoencoder": ({}, 1e-4, 1e-4),
    # Layer-wise pretraining of the second layer, the first frozen: the stacked layers' other
    # output (a layer's input and its reconstruction), and parameters with no gradient.
    "layerwise": (
        {
            "model": "stacked_autoencoder",
            "objective": "layerwise",
            "layer": 1,
            "freeze": ["encoders.0", "decoders.0"],
        },
        1e-4,
        1e-4,
    ),
    # BatchNorm statistics, SGD momentum, channels-last convolutions, through vmap.
    "cnn_lab": ({"epochs": 2, "optim": {"name": "sgd", "momentum": 0.9, "lr": 0.01}}, 1e-2, 5e-2),
    # The ViTs at two blocks of their six, 2 epochs: the same layers, less to train. The
    # notebook ViT's 17 tokens take the explicit attention, the modern one's 50 the fused kernel.
    "vit_lab": ({"epochs": 2, "model_args": {"depth": 2}}, 1e-4, 1e-3),
    "vit": (
        {"epochs": 2, "model_args": {"depth": 2, "dropout": 0.1, "emb_dropout": 0.1}},
        1e-4,
        1e-3,
    ),
}
CASES = [(f, p) for f in FAMILIES for p in ("fp32", "bf16")]


@pytest.fixture(scope="module")
def data():
    return make_dataset(512, 128)


def config(family: str, precision: str, seed: int, **keys):
    extra, _, _ = FAMILIES[family]
    tree = {"model": family, "epochs": 3, "batch_size": 32, "device": "cpu", "threads": 1,
            "deterministic": True, "precision": precision, "seed": seed}  # fmt: skip
    tree.update({**extra, **keys})
    return build_config(None, tree)


def trainers(family, precision, data, root: Path, name: str, **keys) -> list[Trainer]:
    made = []
    for seed in SEEDS:
        (root / f"{name}{seed}").mkdir(parents=True)
        cfg = config(family, precision, seed, **keys)
        made.append(Trainer(cfg, root / f"{name}{seed}", data))
    return made


def losses(history: list[dict]) -> list[float]:
    return [v for h in history for k, v in h.items() if k.endswith("_loss")]


def assert_close(fused: list[float], alone: list[float], rel: float) -> None:
    assert len(fused) == len(alone)
    worst = max(abs(f - a) / abs(a) for f, a in zip(fused, alone, strict=True))
    assert worst <= rel, f"fused and alone differ by {worst:.2g} (relative), more than {rel:g}"


@pytest.mark.parametrize(("family", "precision"), CASES, ids=[f"{f}-{p}" for f, p in CASES])
def test_fused_runs_equal_the_runs_trained_alone(family, precision, data, tmp_path):
    if precision == "bf16" and not native_bf16(torch.device("cpu")) and family == "cnn_lab":
        pytest.skip("bf16 convolutions are emulated on this CPU")
    fused_against_alone(family, precision, data, tmp_path)


def fused_against_alone(family: str, precision: str, data, root: Path, **keys) -> None:
    """The family's seeds trained alone, then as one group: the same numbers to FAMILIES'
    tolerances (tests/test_gpu.py asks it on CUDA, `keys` naming the device)."""
    _, rel32, rel16 = FAMILIES[family]
    alone = trainers(family, precision, data, root, "alone", **keys)
    for t in alone:
        assert t.run(epoch_bar=False) == RunStatus.COMPLETED
    fused = trainers(family, precision, data, root, "fused", **keys)
    assert train_fused(fused, epoch_bar=False) == [RunStatus.COMPLETED] * len(SEEDS)
    for a, f in zip(alone, fused, strict=True):
        assert [h["epoch"] for h in f.history] == list(range(1, a.cfg.epochs + 1))
        assert_close(losses(f.history), losses(a.history), rel32 if precision == "fp32" else rel16)
        assert_close(losses(f.history[:1]), losses(a.history[:1]), 5e-3)
        if "test_accuracy" in a.final:  # what a report shows, to its digits
            # 2 images of 128 for the CNN (see FAMILIES); on CUDA the lone runs replay graphed
            # kernels and the group steps eagerly, so one image may tip either way
            on_cuda = keys.get("device") == "cuda"
            tolerance = 2 / 128 if family == "cnn_lab" else 1 / 128 if on_cuda else 0
            assert abs(f.final["test_accuracy"] - a.final["test_accuracy"]) <= tolerance
    # Each run trained from its own seed: fused, the runs still differ from one another.
    assert len({f.final["test_loss"] for f in fused}) == len(SEEDS)


@pytest.mark.parametrize("name", ["classification", "reconstruction", "layerwise"])
def test_each_objectives_batched_losses_equal_its_loss_mapped_over_the_runs(name):
    """The stacked models' losses are written as batched operations (Objective.run_losses);
    each run's must be its lone loss, the objective's `loss` mapped over the runs."""
    objective, g = objective_for(name), torch.Generator().manual_seed(0)
    x = torch.rand(3, 8, 1, 28, 28, generator=g)
    y = torch.randint(0, 10, (3, 8), generator=g)
    if name == "classification":
        out = torch.randn(3, 8, 10, generator=g)
    elif name == "reconstruction":
        out = torch.rand(3, 8, 1, 28, 28, generator=g)
    else:  # a layer's input and its reconstruction
        out = (torch.rand(3, 8, 64, generator=g), torch.rand(3, 8, 64, generator=g))
    loss, sums = objective.run_losses(out, x, y)
    mapped_loss, mapped_sums = Objective.run_losses(objective, out, x, y)  # vmap
    assert loss.shape == (3,) and len(set(loss.tolist())) == 3
    torch.testing.assert_close(loss, mapped_loss, rtol=1e-6, atol=0)
    assert sums.keys() == mapped_sums.keys()
    for k in sums:
        torch.testing.assert_close(sums[k], mapped_sums[k], rtol=1e-6, atol=0)


# (family, optimiser): coupled weight decay (Adam, SGD with momentum) and AdamW's decoupled one.
OWN_RATES = [("mlp", {"name": "adam", "lr": 1e-3}), ("autoencoder", {"name": "adamw", "lr": 1e-3}),
             ("cnn_lab", {"name": "sgd", "momentum": 0.9, "lr": 0.01})]  # fmt: skip


@pytest.mark.parametrize(("family", "optim"), OWN_RATES, ids=[f for f, _ in OWN_RATES])
def test_runs_at_their_own_learning_rate_and_weight_decay_equal_alone(
    family, optim, data, tmp_path
):
    """A sweep's points that differ in learning rate and weight decay train as one group, each
    run at its own (and its own schedule's), equal to alone as the seeds are."""
    own = [(1.0, 0.0), (3.0, 1e-2), (0.5, 1e-3)]  # x the base rate, and the weight decay

    def made(name: str) -> list[Trainer]:
        runs = []
        for seed, (times, decay) in zip(SEEDS, own, strict=True):
            rates = {**optim, "lr": optim["lr"] * times, "weight_decay": decay}
            cfg = config(family, "fp32", seed, optim=rates, schedule={"name": "onecycle"})
            (tmp_path / f"{name}{seed}").mkdir()
            runs.append(Trainer(cfg, tmp_path / f"{name}{seed}", data))
        return runs

    alone = made("alone")
    for t in alone:
        t.run(epoch_bar=False)
    fused = made("fused")
    assert fuse_blocker([t.cfg for t in fused]) is None
    assert train_fused(fused, epoch_bar=False) == [RunStatus.COMPLETED] * len(SEEDS)
    _, rel, _ = FAMILIES[family]
    for a, f in zip(alone, fused, strict=True):
        assert [h["lr"] for h in f.history] == [h["lr"] for h in a.history]
        assert_close(losses(f.history), losses(a.history), rel)


def test_a_run_that_stops_leaves_the_group_and_the_others_go_on(data, tmp_path):
    """A run stopped by its callback (a sweep's pruner) after epoch 1 is recorded as pruned,
    with its epoch-1 checkpoint; the others train on, as a group of two, equal to alone."""
    alone = trainers("mlp", "fp32", data, tmp_path, "alone", epochs=4)
    for t in alone:
        t.run(epoch_bar=False)
    fused = trainers("mlp", "fp32", data, tmp_path, "fused", epochs=4)

    def prune(record):
        if record["epoch"] == 1:
            raise StopRun("pruned", "pruned at epoch 1")

    fused[1].callbacks.append(prune)
    outcomes = train_fused(fused, epoch_bar=False)
    assert isinstance(outcomes[1], StopRun) and len(fused[1].history) == 1
    assert (fused[1].run_dir / "checkpoints" / "epoch-0001").exists()
    for i in (0, 2):
        assert outcomes[i] == RunStatus.COMPLETED and len(fused[i].history) == 4
        assert_close(losses(fused[i].history), losses(alone[i].history), 1e-4)


def test_a_fused_group_pauses_and_resumes_to_the_uninterrupted_group(data, tmp_path):
    """Stopped after epoch 1 (`until_epoch`) and resumed by a new group from the runs'
    checkpoints: the same histories and test losses as the group that never stopped."""
    whole = trainers(
        "vit", "fp32", data, tmp_path, "whole", model_args={"depth": 1, "dropout": 0.1}
    )
    train_fused(whole, epoch_bar=False)
    first = trainers("vit", "fp32", data, tmp_path, "part", model_args={"depth": 1, "dropout": 0.1})
    assert train_fused(first, epoch_bar=False, until_epoch=1) == [RunStatus.PAUSED] * 3
    again = [Trainer(t.cfg, t.run_dir, data) for t in first]
    train_fused(again, epoch_bar=False)
    for w, a in zip(whole, again, strict=True):
        assert a.history == [{**h, "seconds": a.history[i]["seconds"],
                              "samples_per_s": a.history[i]["samples_per_s"]}
                             for i, h in enumerate(w.history)]  # fmt: skip
        assert a.final["test_loss"] == w.final["test_loss"]


def test_a_run_resumed_after_its_early_stop_is_not_trained_on(data, tmp_path):
    """A group stopped (or killed) after one run's early stop, at epoch 2, and before the
    group's end: resumed, that run completes at epoch 2, and the others train on as one
    group, to the uninterrupted group's numbers."""

    def group(name: str) -> list[Trainer]:
        made = trainers("mlp", "fp32", data, tmp_path, name, epochs=4)
        stops = config("mlp", "fp32", 1, epochs=4, early_stop={"patience": 1, "min_delta": 1e9})
        made[1] = Trainer(stops, made[1].run_dir, data)
        return made

    whole = group("whole")
    train_fused(whole, epoch_bar=False)
    assert len(whole[1].history) == 2 and "early stop at epoch 2" in whole[1].final["early_stopped"]
    assert train_fused(group("part"), epoch_bar=False, until_epoch=3)[0] == RunStatus.PAUSED
    again = [
        Trainer(w.cfg, tmp_path / f"part{seed}", data) for w, seed in zip(whole, SEEDS, strict=True)
    ]
    assert train_fused(again, epoch_bar=False) == [RunStatus.COMPLETED] * 3
    for w, a in zip(whole, again, strict=True):
        assert losses(a.history) == losses(w.history)
        assert a.final["test_loss"] == w.final["test_loss"]
    assert again[1].final["early_stopped"] == whole[1].final["early_stopped"]


def test_a_group_whose_step_runs_out_of_memory_records_each_run_failed(data, tmp_path, monkeypatch):
    """The group's own step failing (out of memory, here injected) is every run's end: each
    run directory says failed, with the hint a lone run gives, and none is left running."""
    from dfl.training import fused
    from dfl.training.run import fit_each

    def out_of_memory(self, epoch):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 8 GB")

    monkeypatch.setattr(fused.FusedGroup, "train_epoch", out_of_memory)
    dirs = [tmp_path / f"seed{s}" for s in SEEDS]
    cfgs = [config("mlp", "fp32", s) for s in SEEDS]
    ended = fit_each(cfgs, dirs, fuse="on", dataset=data, epoch_bar=False)
    for run_dir, end in zip(dirs, ended, strict=True):
        assert isinstance(end, DflError) and "out of memory in epoch 1" in str(end)
        status = json.loads((run_dir / "status.json").read_text())
        assert status["status"] == "failed" and "lower batch_size" in status["reason"]


def test_what_fuses_and_what_auto_chooses(data, tmp_path):
    cfgs = [config("mlp", "fp32", s) for s in SEEDS]
    assert fuse_blocker(cfgs) is None
    other_lr = cfgs[1].model_copy(update={"optim": cfgs[1].optim.model_copy(update={"lr": 0.5})})
    assert fuse_blocker([cfgs[0], other_lr]) is None  # a run's own rate: see the test above
    sgd = cfgs[1].model_copy(update={"optim": cfgs[1].optim.model_copy(update={"name": "sgd"})})
    assert "differ in more than their seed" in fuse_blocker([cfgs[0], sgd])
    attn = config("vit", "fp32", 0, model_args={"attn_dropout": 0.1})
    assert "attn_dropout" in fuse_blocker([attn, attn.model_copy(update={"seed": 1})])
    # auto: dense models at small batches on a CPU (FUSE_MAX_BATCH), nothing through vmap.
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "c").mkdir()
    small = Trainer(config("autoencoder", "fp32", 0, batch_size=16), tmp_path / "a", data)
    large = Trainer(config("autoencoder", "fp32", 0, batch_size=128), tmp_path / "b", data)
    vit = Trainer(config("vit_lab", "fp32", 0, batch_size=16), tmp_path / "c", data)
    assert fuse_pays(small.cfg, small.model) and not fuse_pays(large.cfg, large.model)
    assert not fuse_pays(vit.cfg, vit.model)
    assert FusedGroup([small], [torch.get_rng_state()]).stacked is not None
    assert FusedGroup([vit], [torch.get_rng_state()]).stacked is None


def test_seeds_on_the_command_line_each_in_its_own_run_directory(digits, tmp_path, capsys):
    out = tmp_path / "ae"
    args = ["train", "autoencoder", "--seeds", "0,1", "--epochs", "2", "--dataset", str(digits),
            "--threads", "1", "--deterministic", "--out", str(out)]  # fmt: skip
    code, printed, err = run(capsys, *args, "--fuse", "on")
    assert code == 0, err
    assert "2 runs as one" in err and printed.count("completed:") == 2
    for seed in (0, 1):
        status = json.loads((out / f"seed{seed}" / "status.json").read_text())
        assert status["status"] == "completed"
        assert f"seed = {seed}" in (out / f"seed{seed}" / "config.toml").read_text()
    # Any one of them, repeated alone from its own config, ends as it did fused.
    config_file = str(out / "seed1" / "config.toml")
    code, _, err = run(capsys, "train", "--config", config_file, "--out", str(tmp_path / "alone"))
    assert code == 0, err
    fused_final = json.loads((out / "seed1" / "status.json").read_text())["final"]
    alone_final = json.loads((tmp_path / "alone" / "status.json").read_text())["final"]
    assert alone_final["test_loss"] == pytest.approx(fused_final["test_loss"], rel=1e-5)
    # --fuse off trains the seeds one after another.
    off = ["--out", str(tmp_path / "off"), "--fuse", "off"]
    code, printed, err = run(capsys, *args[:-2], *off)
    assert code == 0 and "runs as one" not in err and printed.count("completed:") == 2
    # A finished group resumed is returned as it is; --fuse on where runs cannot fuse is one line.
    assert run(capsys, *args, "--resume")[0] == 0
    code, _, err = run(capsys, "train", "mlp", "--seeds", "0,1", "--fuse", "on",
                       "--set", "compile=true", "--out", str(tmp_path / "c"))  # fmt: skip
    assert code == 2 and "cannot train as one: compile" in err and "Traceback" not in err
    assert not (tmp_path / "c").exists()


def test_an_experiments_runs_that_differ_in_their_seed_train_as_one(data, tmp_path, monkeypatch):
    """A reproduction's runs (Context.train_many, one process) group by everything but their
    seed: the autoencoder's three seeds train as one fused model, the lone MLP alone, and each
    comes back under its own key, equal to the run trained alone."""
    from dfl.experiments.context import Context
    from dfl.training import fused
    from dfl.training.run import fit

    groups = []

    def watched(trainers, *args, **kwargs):
        groups.append([t.cfg.seed for t in trainers])
        return real(trainers, *args, **kwargs)

    real = fused.train_fused
    monkeypatch.setattr(fused, "train_fused", watched)
    recipe = {"model": "autoencoder", "batch_size": 16, "epochs": 2, "threads": 1}
    runs = {f"seed{s}": {**recipe, "seed": s} for s in SEEDS}
    runs = {"seed0": runs["seed0"], "mlp": {**recipe, "model": "mlp"}, **runs}
    ctx = Context(tmp_path / "r", "smoke", data, "synthetic", "cpu")
    results = ctx.train_many("exp", runs)
    assert groups == [list(SEEDS)] and list(results) == list(runs)
    assert results["mlp"].config.model == "mlp" and results["seed2"].config.seed == 2
    alone = fit(ctx.config(runs["seed2"]), tmp_path / "alone", dataset=data, epoch_bar=False)
    assert results["seed2"].final["test_loss"] == pytest.approx(alone.final["test_loss"], rel=1e-5)
    # DFL_FUSE=off: the same runs, each alone (what a reproduction is timed against).
    monkeypatch.setenv("DFL_FUSE", "off")
    off = Context(tmp_path / "off", "smoke", data, "synthetic", "cpu").train_many("exp", runs)
    assert groups == [list(SEEDS)] and list(off) == list(runs)
    assert off["seed2"].final["test_loss"] == alone.final["test_loss"]


@pytest.mark.slow
def test_a_killed_fused_group_resumes_exactly(digits, tmp_path):
    """SIGKILL mid-checkpoint of epoch 3 of `dfl train --seeds` (the fault tests' way), then
    the same command with --resume: every run ends with the uninterrupted group's history.
    The first run holds still before renaming its epoch-3 checkpoint, so every run is killed
    at epoch 2 and the group resumes as one (runs at different epochs would go alone, equal
    to the group only up to rounding)."""

    def args(out: Path) -> list[str]:
        return [*DFL, "train", "mlp", "--seeds", "0,1,2", "--fuse", "on", "--epochs", "4",
                "--dataset", str(digits), "--batch-size", "16", "--threads", "1",
                "--deterministic", "--set", "model_args.dropout=0.2",
                "--out", str(out)]  # fmt: skip

    subprocess.run(args(tmp_path / "whole"), check=True, capture_output=True)
    out = tmp_path / "killed"
    env = {**os.environ, "DFL_FAULT_PAUSE_BEFORE_RENAME": "3:60"}
    proc = subprocess.Popen(args(out), env=env, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: any((out / "seed0" / "checkpoints").glob(".epoch-0003.tmp-*/state.json")))
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    done = subprocess.run([*args(out), "--resume"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    for seed in (0, 1, 2):
        assert history(out / f"seed{seed}") == history(tmp_path / "whole" / f"seed{seed}")


def history(run: Path) -> list[dict]:
    """A run's metrics.jsonl without its timings."""
    lines = (run / "metrics.jsonl").read_text().splitlines()
    timing = ("seconds", "samples_per_s")
    return [{k: v for k, v in json.loads(x).items() if k not in timing} for x in lines]
