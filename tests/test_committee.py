"""A committee of runs is chosen on validation only (greedy selection on log-loss), and only
among runs that were selected on the same validation images."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import run
from dfl.data import load_dataset
from dfl.errors import DflError
from dfl.training.committee import choose, greedy, log_loss
from dfl.training.trained import load_trained
from dfl.training.trainer import prepare_splits

LABELS = torch.tensor([0, 1, 0, 1])


def probs(right: list[float]) -> torch.Tensor:
    """Two-class probabilities giving each image's true class the probability in `right`."""
    p = torch.tensor(right)
    true = torch.stack([p, 1 - p], 1)
    return torch.where(LABELS[:, None] == 0, true, true.flip(1))


def test_a_member_that_adds_nothing_is_cut():
    good, bad = probs([0.9, 0.9, 0.9, 0.9]), probs([0.2, 0.2, 0.2, 0.2])
    assert greedy([bad, good], LABELS, rounds=5) == [1]  # every addition raises the loss


def test_members_that_err_apart_join_together():
    first, second = probs([0.99, 0.99, 0.3, 0.3]), probs([0.3, 0.3, 0.99, 0.99])
    picks = greedy([first, second], LABELS, rounds=4)
    assert sorted(set(picks)) == [0, 1]
    together = (first + second) / 2
    assert log_loss(together, LABELS) < min(log_loss(first, LABELS), log_loss(second, LABELS))


def test_nothing_to_choose_from():
    with pytest.raises(ValueError, match="at least one candidate"):
        greedy([], LABELS, rounds=3)


ARGS = ["--epochs", "2", "--threads", "1", "--fuse", "off"]
VAL = "data.val_fraction=0.25"


def test_choose_reads_test_once_for_the_committee_picked_on_validation(
    digits: Path, tmp_path: Path, capsys
):
    out = tmp_path / "runs"
    for model in ("mlp", "cnn"):
        code, _, err = run(capsys, "train", model, "--seeds", "0,1", "--dataset", str(digits),
                           "--out", str(out / model), *ARGS, "--set", VAL)  # fmt: skip
        assert code == 0, err
    dirs = [out / m / f"seed{s}" for m in ("mlp", "cnn") for s in (0, 1)]
    committee = choose(dirs, rounds=6)
    assert set(committee.members) <= set(dirs) and 1 <= len(committee.members) <= 6
    # by hand: the members' averaged probabilities, on the split their configs select
    cfg = load_trained(dirs[0]).config
    splits = prepare_splits(cfg, load_dataset(str(digits)), torch.device("cpu"))

    @torch.no_grad()
    def accuracy(split: str) -> float:
        images, labels = splits[split].images, splits[split].labels
        summed = sum(load_trained(d).predict(images).softmax(1) for d in committee.members)
        return float((summed.argmax(1) == labels).float().mean())

    assert committee.val_accuracy == accuracy("val")
    assert committee.test_accuracy == accuracy("test")
    assert committee.describe().startswith(f"{len(committee.members)} votes from ")


def test_runs_selected_on_other_images_make_no_committee(digits: Path, tmp_path: Path, capsys):
    for name, fraction in (("a", "0.25"), ("b", "0.5"), ("none", "0")):
        val = f"data.val_fraction={fraction}"
        code, _, err = run(capsys, "train", "mlp", "--dataset", str(digits), "--out",
                           str(tmp_path / name), *ARGS, "--set", val)  # fmt: skip
        assert code == 0, err
    with pytest.raises(DflError, match="other validation or test images"):
        choose([tmp_path / "a", tmp_path / "b"])
    with pytest.raises(DflError, match="no validation split"):
        choose([tmp_path / "none"])
