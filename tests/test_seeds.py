"""`dfl train --seeds` ends with what the seeds add up to: the mean and spread of their test
metric, and a classifier's ensemble, computed from the runs' saved weights on the very test
images each seed was tested on (none where those differ)."""

from __future__ import annotations

import json
from pathlib import Path
from statistics import fmean

import pytest
import torch

import dfl
from conftest import run
from dfl.data import load_dataset
from dfl.training.seeds import summary
from dfl.training.trained import load_trained

ARGS = ["--epochs", "2", "--threads", "1", "--fuse", "off", "--set", "data.val_fraction=0.2"]


def test_seeds_print_their_mean_and_their_ensemble(digits: Path, tmp_path: Path, capsys):
    out = tmp_path / "mlp"
    code, printed, err = run(capsys, "train", "mlp", "--seeds", "0,1,2", "--dataset",
                             str(digits), "--out", str(out), *ARGS)  # fmt: skip
    assert code == 0, err
    line = printed.strip().splitlines()[-1]
    finals = [json.loads((out / f"seed{s}" / "status.json").read_text())["final"] for s in range(3)]
    mean = fmean(f["test_accuracy"] for f in finals)
    assert line.startswith(f"3 seeds: test_accuracy {mean:.6g} ± ")
    # the ensemble, by hand: the three models' softmax outputs averaged on the 64 test images
    data = load_dataset(str(digits))
    with torch.no_grad():
        probs = sum(load_trained(out / f"seed{s}").predict(data.test_images).softmax(1)
                    for s in range(3))  # fmt: skip
    by_hand = float((probs.argmax(1) == data.test_labels).float().mean())
    assert line.endswith(f"; their ensemble (averaged probabilities) {by_hand:.6g}")
    # resumed, the finished seeds are reused and the line is the same
    code, again, _ = run(capsys, "train", "mlp", "--seeds", "0,1,2", "--dataset", str(digits),
                         "--out", str(out), "--resume", *ARGS)  # fmt: skip
    assert code == 0 and again.strip().splitlines()[-1] == line
    # weights that changed after training: the summary keeps the seeds' line and says why it
    # has no ensemble, in one line
    weights = out / "seed1" / "model.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[-64] ^= 0x10
    weights.write_bytes(bytes(raw))
    damaged = summary([dfl.load(out / f"seed{s}") for s in range(3)])
    assert damaged is not None and "\n" not in damaged
    assert damaged.startswith(line.split(";")[0] + "; no ensemble: ") and "seed1" in damaged


@pytest.mark.parametrize("model", ["mlp", "autoencoder"])
def test_no_ensemble_where_it_would_mean_nothing(digits: Path, tmp_path: Path, capsys, model):
    # a test subset drawn with each run's seed: each seed saw other test images
    extra = ["--set", "data.test_subset=32"] if model == "mlp" else []
    code, printed, err = run(capsys, "train", model, "--seeds", "0,1", "--dataset", str(digits),
                             "--out", str(tmp_path / model), *ARGS, *extra)  # fmt: skip
    assert code == 0, err
    line = printed.strip().splitlines()[-1]
    if model == "mlp":
        assert line.endswith("; no ensemble: the seeds were tested on different test images")
    else:  # an autoencoder has a test loss, and no ensemble of classes
        assert line.startswith("2 seeds: test_loss ") and "ensemble" not in line
