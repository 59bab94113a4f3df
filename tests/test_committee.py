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
from dfl.training.run import fit
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


def test_a_member_can_vote_twice():
    sure, hedging = probs([0.99, 0.99, 0.99, 0.2]), probs([0.7, 0.7, 0.7, 0.99])
    # the hedging member first, then the sure one, then the hedging one's second vote: at
    # weights 2:1 the committee's log-loss is lower than at 1:1, 1:2 or either alone
    assert greedy([sure, hedging], LABELS, rounds=8) == [1, 0, 1]


def test_nothing_to_choose_from():
    with pytest.raises(ValueError, match="at least one candidate"):
        greedy([], LABELS, rounds=3)


ARGS = ["--epochs", "2", "--threads", "1", "--fuse", "off"]


def train(capsys, digits, out: Path, *extra: str, model: str = "mlp", val: str = "0.25") -> Path:
    code, _, err = run(capsys, "train", model, "--dataset", str(digits), "--out", str(out),
                       *ARGS, "--set", f"data.val_fraction={val}", *extra)  # fmt: skip
    assert code == 0, err
    return out


def test_choose_picks_on_validation_and_reads_test_once_for_the_committee(
    digits: Path, tmp_path: Path, capsys
):
    dirs = [
        train(capsys, digits, tmp_path / f"{model}{seed}", "--seed", str(seed), model=model)
        for model in ("mlp", "cnn") for seed in (0, 1)
    ]  # fmt: skip
    committee = choose(dirs, rounds=6)
    # by hand: greedy selection on the runs' validation outputs, then the members' averaged
    # probabilities on the split their configs select
    cfg = load_trained(dirs[0]).config
    splits = prepare_splits(cfg, load_dataset(str(digits)), torch.device("cpu"))

    @torch.no_grad()
    def outputs(split: str) -> list[torch.Tensor]:
        return [load_trained(d).predict(splits[split].images).softmax(1) for d in dirs]

    picks = greedy(outputs("val"), splits["val"].labels, rounds=6)
    assert committee.members == [dirs[i] for i in picks]

    def averaged(split: str) -> torch.Tensor:
        probs = outputs(split)
        return sum(probs[i] for i in picks) / len(picks)

    def accuracy(split: str) -> float:
        return float((averaged(split).argmax(1) == splits[split].labels).float().mean())

    assert committee.val_accuracy == accuracy("val")
    assert committee.test_accuracy == accuracy("test")
    assert committee.val_loss == log_loss(averaged("val"), splits["val"].labels)
    assert committee.describe().startswith(f"{len(picks)} votes from {len(set(picks))} run")


def test_what_makes_no_committee(digits: Path, tmp_path: Path, capsys):
    first = train(capsys, digits, tmp_path / "first")
    with pytest.raises(DflError, match="at least one run"):
        choose([])
    other = train(capsys, digits, tmp_path / "other_split", "--set", "data.split_seed=7")
    with pytest.raises(DflError, match="other images than"):
        choose([first, other])
    # started from a run that trained on the images `first` validates on
    source = train(capsys, digits, tmp_path / "source", val="0")
    started = train(capsys, digits, tmp_path / "started", "--set", f'init_from="{source}"')
    with pytest.raises(DflError, match="in a run it started from"):
        choose([first, started])
    with pytest.raises(DflError, match="no validation split"):
        choose([source])
    autoencoder = train(capsys, digits, tmp_path / "ae", model="autoencoder")
    with pytest.raises(DflError, match="does not classify"):
        choose([first, autoencoder])
    paused = tmp_path / "paused"
    cfg = load_trained(first).config.model_copy(update={"epochs": 3})
    assert fit(cfg, paused, until_epoch=1, epoch_bar=False).status == "paused"
    with pytest.raises(DflError, match="is paused: a committee is made of completed runs"):
        choose([first, paused])
