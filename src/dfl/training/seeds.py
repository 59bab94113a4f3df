"""What several seeds of one config add up to: the mean and spread of their test metric, and
for classifiers the test accuracy of their ensemble (the seeds' softmax outputs averaged),
on the very test images each seed was tested on. `dfl train --seeds` prints it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from statistics import fmean, stdev

import torch

from dfl.config import TrainConfig
from dfl.data import load_dataset
from dfl.errors import DflError
from dfl.training.run import Run
from dfl.training.trained import Trained, load_trained
from dfl.training.trainer import prepare_splits, subset_seed


def summary(runs: Sequence[Run]) -> str | None:
    """'3 seeds: test_accuracy 0.9967 ± 0.0003; their ensemble 0.9971', or None for fewer
    than two completed runs (a paused or failed seed is left out, and the line says so)."""
    done = [r for r in runs if r.status == "completed"]
    key = next((k for k in ("test_accuracy", "test_loss") if done and k in done[0].final), None)
    if len(done) < 2 or key is None:
        return None
    values = [r.final[key] for r in done]
    line = f"{len(done)} seeds: {key} {fmean(values):.6g} ± {stdev(values):.2g}"
    if len(done) < len(runs):
        line += f" ({len(runs) - len(done)} not completed, left out)"
    if key == "test_accuracy":
        try:
            accuracy = ensemble_accuracy([r.run_dir for r in done])
        except DflError as e:  # the runs are trained and recorded: the summary only lacks it
            return f"{line}; no ensemble: {e}"
        line += (
            f"; their ensemble (averaged probabilities) {accuracy:.6g}"
            if accuracy is not None
            else "; no ensemble: the seeds were tested on different test images"
        )
    return line


@torch.no_grad()
def ensemble_accuracy(run_dirs: Sequence[str | Path]) -> float | None:
    """Test accuracy of the runs' averaged softmax outputs, on the test images their configs
    select; None where those differ between runs (a test subset drawn with each run's seed)."""
    trained = [load_trained(d) for d in run_dirs]
    if len({test_images_key(t.config) for t in trained}) > 1:
        return None
    cfg = trained[0].config
    data = load_dataset(cfg.data.dataset, cfg.data.data_dir)
    test = prepare_splits(cfg, data, torch.device("cpu"))["test"]
    return averaged_accuracy(trained, test.images, test.labels)


@torch.no_grad()
def averaged_accuracy(
    trained: Sequence[Trained], images: torch.Tensor, labels: torch.Tensor
) -> float:
    """Accuracy of the models' softmax outputs averaged, on uint8 `images`."""
    probs = sum(t.predict(images).softmax(1) for t in trained) / len(trained)
    return float((probs.argmax(1) == labels).float().mean())


def test_images_key(cfg: TrainConfig) -> tuple:
    """What picks a run's test images (prepare_splits): the dataset, and any subset's seed."""
    d = cfg.data
    return (d.dataset, d.data_dir, d.test_subset, subset_seed(cfg) if d.test_subset else None)
