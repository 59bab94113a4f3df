"""Beyond the lab, for the last part of 3.1 Q2 ("what is the benefit of pretraining the network
layer by layer?"): the stacked autoencoder pretrained layer by layer on every training image
without its label, then fine-tuned end to end on n labelled images, against the same network
from random initialisation on the same n images, over seeds.

With all 60,000 labels a randomly initialised network trains as well as a pretrained one (the
full-data rows of the section); unsupervised pretraining is meant to pay where labels are
scarce, and this study measures the curve. Each label count is a random draw of n training
images (the seed's draw, the same for both networks), a fifth of them held out to select the
epoch: n labels in all, none borrowed for selection. The test set is used once per run.

sae.py trains the runs; this module holds the study's settings and reads its results into the
report's table, figure and answer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from statistics import fmean
from typing import Any

from dfl.experiments import figures
from dfl.experiments.document import Figure, Table, epochs, fmt, mean_std

VAL_FRACTION = 0.2  # of each label count's images, held out to select the epoch


@dataclass(frozen=True)
class Scarce:
    labels: tuple[int | None, ...]  # labelled images per fine-tuning; None: every image
    pretrain: int  # epochs per layer, on every training image, no labels
    finetune: int  # epochs with every label
    # A few labels make an epoch of one or two steps: those runs train more epochs, to at
    # least this many steps, so they are not judged before they could learn.
    min_steps: int

    def epochs(self, images: int, batch: int) -> int:
        """Epochs of a fine-tuning on `images` labelled images (a fifth held out)."""
        steps = math.ceil((images - round(images * VAL_FRACTION)) / batch)
        return max(self.finetune, math.ceil(self.min_steps / max(steps, 1)))


def summarise(
    s: Scarce, accuracy: dict[tuple[int, str, int], float], images: dict[int, int]
) -> dict[str, Any]:
    """The study as saved in the result: per label count, each arm's test accuracy per seed.
    `accuracy[(i, arm, seed)]` is label count i's run; `images[i]` its labelled images."""
    seeds = sorted({seed for _, _, seed in accuracy})
    rows = [
        {
            "labels": images[i],
            "all": n is None,
            **{
                arm: [accuracy[(i, arm, seed)] for seed in seeds]
                for arm in ("pretrained", "random")
            },
        }
        for i, n in enumerate(s.labels)
    ]
    return {"rows": rows, "pretrain_epochs": s.pretrain, "finetune_epochs": s.finetune}


def _labels(row: dict[str, Any]) -> str:
    return f"all {row['labels']:,}" if row["all"] else f"{row['labels']:,}"


def verdicts(study: dict[str, Any], test_images: int) -> list[tuple[dict[str, Any], float, str]]:
    """Each row with its gain and verdict (`judge`)."""
    return [(row, *judge(row["pretrained"], row["random"], test_images)) for row in study["rows"]]


def judge(pretrained: list[float], random: list[float], test_images: int) -> tuple[float, str]:
    """The pretrained network's gain over random initialisation (means over seeds), and
    "helped" or "hurt" where it is beyond the larger of the two arms' ranges, else "noise".
    The band is at least the standard error of a difference of two accuracies on
    `test_images` images: seeds that agree (at 98%, to a few images) leave the test set's own
    sampling noise, about 0.002 on 10,000 images."""
    gain = fmean(pretrained) - fmean(random)
    p = min(max((fmean(pretrained) + fmean(random)) / 2, 0.0), 1.0)  # an accuracy
    sampling = math.sqrt(2 * p * (1 - p) / test_images)
    band = max(max(pretrained) - min(pretrained), max(random) - min(random), sampling)
    return gain, "helped" if gain > band else "hurt" if -gain > band else "noise"


def table(study: dict[str, Any], test_images: int) -> Table:
    rows = [
        [_labels(row), mean_std(row["pretrained"]), mean_std(row["random"]), f"{gain:+.4f}", v]
        for row, gain, v in verdicts(study, test_images)
    ]
    return Table(
        ["labelled images", "pretrained, fine-tuned", "random init", "gain", "beyond the spread"],
        rows,
        f"Stacked autoencoder 784-256-64: test accuracy on all {test_images:,} test images, mean "
        "± std over seeds; each label count's images are the same for both networks, a fifth "
        "of them held out to select the epoch.",
    )


def answer(study: dict[str, Any], test_images: int, pretrain_images: int) -> str:
    """The lab's question answered from the curve: the words follow the numbers."""
    judged = verdicts(study, test_images)
    helped = [_labels(row) for row, _, v in judged if v == "helped"]
    hurt = [_labels(row) for row, _, v in judged if v == "hurt"]
    steps = "; ".join(
        f"{_labels(row)} labels: {fmt(fmean(row['pretrained']))} against "
        f"{fmt(fmean(row['random']))} ({gain:+.4f})"
        for row, gain, _ in judged
    )
    text = (
        f"What pretraining layer by layer buys, measured: each layer pretrained for "
        f"{epochs(study['pretrain_epochs'])} on all {pretrain_images:,} training images without "
        f"their labels, then the whole network fine-tuned on n labelled images"
        + (
            f" for {epochs(study['finetune_epochs'])} (more where so few labels make an epoch "
            "only a few steps)"
            if "finetune_epochs" in study
            else ""
        )
        + f", against the same network from random initialisation on the same images and "
        f"epochs. {steps}. "
    )
    if helped and len(helped) == len(judged):
        text += "Pretraining helped at every label count, beyond the seeds' spread."
    elif helped:
        text += (
            f"Pretraining helped beyond the seeds' spread with {', '.join(helped)} labels"
            + (f" and hurt with {', '.join(hurt)}" if hurt else "")
            + "; elsewhere the two are within it."
        )
        fewest, every = judged[0], judged[-1]
        if fewest[2] == "helped" and every[2] != "helped":
            text += (
                " Its benefit is with scarce labels: the unlabelled images teach features that "
                "a few labels cannot."
            )
    elif hurt:
        text += f"Pretraining helped at no label count and hurt with {', '.join(hurt)} labels."
    else:
        text += "Pretraining helped at no label count beyond the seeds' spread."
    return text


def figure(canvas_path: Path, study: dict[str, Any]) -> Figure:
    rows = study["rows"]
    plot = figures.trend(
        canvas_path,
        [row["labels"] for row in rows],
        {
            "pretrained layer by layer, then fine-tuned": [row["pretrained"] for row in rows],
            "random initialisation": [row["random"] for row in rows],
        },
        "labelled training images (log scale)",
        "test accuracy",
        "Stacked autoencoder 784-256-64: what pretraining buys per label count",
        logx=True,
    )
    return Figure.of(
        plot,
        "Test accuracy against the number of labelled images, mean and standard deviation "
        "over seeds: pretrained on every training image without labels, then fine-tuned, "
        "against random initialisation.",
    )
