"""What a step optimises and measures. An objective turns (model, batch) into a mean loss to
backpropagate and per-batch *sums* (loss x samples, correct answers), so epoch metrics are
exact per-sample averages however the last batch is cut (the lab divided by the wrong count).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import vmap

Sums = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Objective:
    name: str
    select_metric: str  # the validation metric model selection uses
    select_mode: str  # "min" or "max"
    metrics: ClassVar[tuple[str, ...]] = ("loss",)  # what `finish` returns for an epoch

    def step(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, Sums]:
        return self.loss(self.outputs(model, x), x, y)

    # A step in two parts, so that runs trained as one (dfl/training/fused.py) can compute the
    # outputs of all their models at once and each run's loss from its own slice.

    def outputs(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """What the model computes for the loss."""
        return model(x)

    def loss(
        self, out: torch.Tensor, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, Sums]:
        """The batch's mean loss to backpropagate, and its sums (see the module docstring)."""
        raise NotImplementedError

    def run_losses(
        self, out: torch.Tensor | tuple[torch.Tensor, ...], x: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, Sums]:
        """`loss` of R runs at once, their outputs and batches stacked (R, B, ...): each run's
        mean loss and sums, (R,). Mapped over the runs with vmap here; the objectives below
        write it as batched operations, because on a CPU vmap wraps each small operation of
        the loss at a cost of its own (3 autoencoders at batch 16: 1.32x as fast as one after
        another on 1 thread with the vmapped loss, 1.48x without, in separate invocations of
        benchmarks/fused.py)."""
        return vmap(self.loss)(out, x, y)

    @staticmethod
    def finish(sums: dict[str, float], n: int) -> dict[str, float]:
        """Sums over an epoch -> per-sample means ("correct" becomes "accuracy")."""
        out = {"loss": sums["loss"] / n}
        if "correct" in sums:
            out["accuracy"] = sums["correct"] / n
        return out


class Classification(Objective):
    metrics: ClassVar[tuple[str, ...]] = ("loss", "accuracy")

    def loss(
        self, logits: torch.Tensor, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, Sums]:
        # logits: (B, classes)
        loss = F.cross_entropy(logits.float(), y)
        correct = (logits.argmax(dim=1) == y).sum()
        return loss, {"loss": loss.detach() * y.shape[0], "correct": correct}

    def run_losses(
        self, logits: torch.Tensor, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, Sums]:
        # logits: (R, B, classes), y: (R, B)
        each = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), reduction="none")
        loss = each.view_as(y).mean(1)
        correct = (logits.argmax(dim=2) == y).sum(1)
        return loss, {"loss": loss.detach() * y.shape[1], "correct": correct}


class Reconstruction(Objective):
    def loss(
        self, recon: torch.Tensor, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, Sums]:
        loss = F.mse_loss(recon.float(), x)  # mean over every pixel of the batch
        return loss, {"loss": loss.detach() * x.shape[0]}  # per-pixel MSE x samples

    def run_losses(
        self, recon: torch.Tensor, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, Sums]:
        loss = _mse_per_run(recon, x)
        return loss, {"loss": loss.detach() * x.shape[1]}


@dataclass(frozen=True)
class LayerwisePretraining(Objective):
    """Greedy layer-wise pretraining: layer k rebuilds its own input (the code of the frozen
    layers below it). The model must offer `reconstruct_layer(x, k)`."""

    layer: int = 0

    def outputs(self, model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return model.reconstruct_layer(x, self.layer)

    def loss(self, out: tuple, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, Sums]:
        target, recon = out
        loss = F.mse_loss(recon.float(), target)
        return loss, {"loss": loss.detach() * x.shape[0]}

    def run_losses(self, out: tuple, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, Sums]:
        target, recon = out
        loss = _mse_per_run(recon, target)
        return loss, {"loss": loss.detach() * x.shape[1]}


def _mse_per_run(recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Each run's mean squared error over its batch's every element: (R, ...) -> (R,)."""
    return F.mse_loss(recon.float(), target, reduction="none").flatten(1).mean(1)


OBJECTIVES: dict[str, Objective] = {
    "classification": Classification("classification", "val_accuracy", "max"),
    "reconstruction": Reconstruction("reconstruction", "val_loss", "min"),
}


def objective_for(name: str, layer: int = 0) -> Objective:
    if name == "layerwise":
        return LayerwisePretraining(name, "val_loss", "min", layer)
    return OBJECTIVES[name]


def recorded_metrics(name: str) -> tuple[str, ...]:
    """The metrics objective `name` records per split each epoch ("loss", "accuracy"), which
    the run directory's metrics.jsonl holds as train_loss, val_loss, ..."""
    return objective_for(name).metrics
