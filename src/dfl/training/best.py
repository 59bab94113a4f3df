"""A run's best epoch by the metric that selects it, and early stopping on that metric.

The metric is early stopping's when it has a patience, else the objective's (a validation
loss or accuracy). The best epoch's weights are kept, in memory and in every checkpoint, when
they will be restored before the test: with early stopping or `restore_best`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from dfl.config import TrainConfig
from dfl.errors import ConfigError
from dfl.objectives import Objective


@dataclass
class Best:
    metric: str
    mode: str  # "min" or "max"
    min_delta: float = 0.0  # a smaller change is no improvement
    patience: int = 0  # epochs without improvement that end the run; 0: never
    keep_weights: bool = False
    value: float | None = None
    epoch: int | None = None
    weights: dict[str, torch.Tensor] | None = None

    @classmethod
    def of(cls, cfg: TrainConfig, objective: Objective, validated: bool) -> Best:
        """The tracker of a run of `cfg`; `validated`: the run has a validation split.
        (early_stop.metric itself is checked with the config, TrainConfig.)"""
        if cfg.restore_best and not validated:
            raise ConfigError("restore_best needs a validation split (set data.val_fraction > 0)")
        es = cfg.early_stop
        if es.patience:
            metric, mode = es.metric, es.direction
        else:
            metric, mode = objective.select_metric, objective.select_mode
        return cls(metric, mode, es.min_delta, es.patience, bool(es.patience or cfg.restore_best))

    def update(self, record: dict[str, Any], model: nn.Module) -> str | None:
        """Take an epoch's record (and `model`'s weights, when they are kept and the epoch is
        the best yet); returns a reason when early stopping ends the run."""
        value = record.get(self.metric)
        if value is None:
            if self.patience:
                raise ConfigError(
                    f"early_stop.metric '{self.metric}' is not measured "
                    f"(measured: {', '.join(sorted(record))})"
                )
            return None
        best, delta = self.value, self.min_delta
        better = best is None or (
            value < best - delta if self.mode == "min" else value > best + delta
        )
        if better:
            self.value, self.epoch = value, record["epoch"]
            if self.keep_weights:  # restored before testing
                self.weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return self.stop_reason(record["epoch"])

    def stop_reason(self, epoch: int) -> str | None:
        """Why early stopping ends the run after `epoch` (the last epoch `update` took), or
        None. Asked again of a resumed run: one killed between its early stop's checkpoint and
        its end has already stopped, and must not train on."""
        patience = self.patience
        if not patience or self.epoch is None or epoch - self.epoch < patience:
            return None
        return (
            f"early stop at epoch {epoch}: {self.metric} has not improved for "
            f"{patience} epoch{'' if patience == 1 else 's'} "
            f"(best {self.value:.6g} at epoch {self.epoch})"
        )

    def summary(self) -> dict[str, Any]:
        """What a finished run's final metrics say of its selection."""
        return {"best_epoch": self.epoch, "select_metric": self.metric, "best_value": self.value}

    def restore(self, model: nn.Module, history: list[dict[str, Any]]) -> dict[str, Any]:
        """Load the best epoch's weights into `model` when they were kept (selection on
        validation: the test then measures that epoch). Returns the validation metrics of the
        epoch `model` now holds: the best one's, else the last one's."""
        if self.weights is not None:
            model.load_state_dict(self.weights)
        if not history:
            return {}
        tested = history[self.epoch - 1] if self.weights is not None else history[-1]
        return {k: v for k, v in tested.items() if k.startswith("val_")}
