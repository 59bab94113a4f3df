"""A committee of finished runs chosen on validation only, the test set read once for it.

Greedy ensemble selection (Caruana et al., 2004): runs join one at a time, repeats allowed,
each time the one whose softmax outputs lower the committee's validation log-loss most; the
committee kept is the prefix with the lowest log-loss (100 rounds by default: on the CNN
ladder's 24 runs the loss still fell after 25). Log-loss rather than accuracy because at 99.7%
a validation split of 6,000 images holds about 18 errors, too few to rank by.
Every run, and every run whose weights it started from, must have been trained and selected
on the same split, or one run's validation images would be another's training images and the
choice would flatter them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from dfl.config import TrainConfig
from dfl.data import load_dataset
from dfl.errors import DflError
from dfl.training.run_dir import RunStatus, load_saved_config, read_status
from dfl.training.seeds import test_images_key
from dfl.training.trained import load_trained
from dfl.training.trainer import prepare_splits, subset_seed


@dataclass(frozen=True)
class Committee:
    members: list[Path]  # in the order they joined; a run that joined twice counts twice
    val_loss: float
    val_accuracy: float
    test_accuracy: float

    def describe(self) -> str:
        distinct = len(set(self.members))
        return (
            f"{len(self.members)} votes from {distinct} run{'s' if distinct != 1 else ''}: "
            f"validation {self.val_accuracy:.4f} (log-loss {self.val_loss:.4f}; chosen on it, "
            f"so optimistic), test {self.test_accuracy:.4f}"
        )


def log_loss(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean negative log-probability of the true class."""
    true = probs.gather(1, labels[:, None]).squeeze(1)
    return float(-true.clamp_min(1e-12).log().mean())


def greedy(val_probs: Sequence[torch.Tensor], labels: torch.Tensor, rounds: int) -> list[int]:
    """Indices into `val_probs` of the committee, repeats allowed: `rounds` greedy additions,
    cut back to the prefix whose averaged probabilities have the lowest log-loss."""
    if not val_probs or rounds < 1:
        raise ValueError("a committee needs at least one candidate and one round")
    total = torch.zeros_like(val_probs[0])
    picks: list[int] = []
    best_loss, best_size = float("inf"), 0
    for size in range(1, rounds + 1):
        losses = [log_loss((total + p) / size, labels) for p in val_probs]
        pick = min(range(len(losses)), key=losses.__getitem__)
        picks.append(pick)
        total += val_probs[pick]
        if losses[pick] < best_loss:
            best_loss, best_size = losses[pick], size
    return picks[:best_size]


def _split_key(cfg: TrainConfig) -> tuple:
    """What picks a run's training, validation and test images (prepare_splits)."""
    d = cfg.data
    train_seed = subset_seed(cfg) if d.train_subset else None
    return (*test_images_key(cfg), d.train_subset, train_seed, d.val_fraction, d.split_seed)


def _check_completed(run_dir: Path) -> None:
    status = read_status(run_dir)
    if status is None or status["status"] != RunStatus.COMPLETED:
        how = "has not started" if status is None else f"is {status['status']}"
        raise DflError(f"{run_dir} {how}: a committee is made of completed runs")


def _check_images(run_dir: Path, cfg: TrainConfig | None, key: tuple, first: Path) -> None:
    """The run (its config `cfg`) and every run whose weights it started from (init_from) were
    trained and selected on the images `key` names."""
    while cfg is not None:
        if _split_key(cfg) != key:
            raise DflError(
                f"{run_dir} was trained or selected on other images than {first} (data.* "
                "differs, itself or in a run it started from): choose a committee among runs "
                "that share them"
            )
        cfg = load_saved_config(Path(cfg.init_from)) if cfg.init_from else None


@torch.no_grad()
def choose(run_dirs: Sequence[str | Path], rounds: int = 100) -> Committee:
    """The committee of the completed classifier runs in `run_dirs` that greedy selection
    picks on their shared validation split, with its test accuracy on their test images."""
    dirs = [Path(d) for d in run_dirs]
    if not dirs or rounds < 1:
        raise DflError("a committee needs at least one run and one round")
    for d in dirs:
        _check_completed(d)
    trained = [load_trained(d) for d in dirs]
    cfg = trained[0].config
    if cfg.data.val_fraction == 0:
        raise DflError(
            f"{dirs[0]} has no validation split (data.val_fraction=0): "
            "a committee is chosen on validation only"
        )
    key = _split_key(cfg)
    for d, t in zip(dirs, trained, strict=True):
        _check_images(d, t.config, key, dirs[0])
    splits = prepare_splits(cfg, load_dataset(cfg.data.dataset, cfg.data.data_dir),
                            torch.device("cpu"))  # fmt: skip
    val, test = splits["val"], splits["test"]
    logits = [t.predict(val.images) for t in trained]
    for d, out in zip(dirs, logits, strict=True):
        if out.shape != logits[0].shape or out.ndim != 2:
            raise DflError(f"{d} does not classify into the classes of {dirs[0]}: a committee "
                           "votes on classes")  # fmt: skip
    val_probs = [out.softmax(1) for out in logits]
    picks = greedy(val_probs, val.labels, rounds)
    val_avg = sum(val_probs[i] for i in picks) / len(picks)
    test_probs = {i: trained[i].predict(test.images).softmax(1) for i in set(picks)}
    test_avg = sum(test_probs[i] for i in picks) / len(picks)
    return Committee(
        members=[dirs[i] for i in picks],
        val_loss=log_loss(val_avg, val.labels),
        val_accuracy=float((val_avg.argmax(1) == val.labels).float().mean()),
        test_accuracy=float((test_avg.argmax(1) == test.labels).float().mean()),
    )
