"""A trained run loaded back from its run directory alone: the model its config.toml
describes, built as training built it, holding the run's weights, and the input pipeline
its evaluation used. No dataset is loaded and no other run is read.

    trained = load_trained("runs/cnn/selected")
    probabilities = trained.predict(test_images).softmax(1)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dfl import models
from dfl.config import TrainConfig
from dfl.data.batches import model_input
from dfl.data.dataset import IMAGE_SIZE
from dfl.errors import ConfigError, DflError, UnloadableRun
from dfl.training import checkpoint
from dfl.training.run_dir import (
    CHECKPOINTS,
    CONFIG,
    WEIGHTS,
    RunStatus,
    load_saved_config,
    read_final_weights,
    read_status,
)
from dfl.training.trainer import build_model

PREDICT_CHUNK = 1000  # images per forward in `predict`


@dataclass(frozen=True)
class Trained:
    """A run's model with its trained weights, on the CPU in eval mode, and how to feed it.

    `config` is the run's config.toml (the keys a resume may change, such as device and
    threads, at their defaults); `run_dir` is where it was loaded from."""

    config: TrainConfig
    model: nn.Module
    run_dir: Path

    def inputs(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, H, W) images -> the float (B, 1, H, W) the model takes, as the trainer's
        evaluation makes them: pixels / 255, then standardised with MNIST's statistics when
        the run had `data.normalize` (augmentation is training's only): the trainer's own
        pipeline, `model_input`."""
        return model_input(images, self.config.data.normalize)

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """The model's float outputs for uint8 (B, H, W) images (logits for a classifier,
        images for an autoencoder), computed without gradients in chunks of 1000 images.
        Always in fp32, as the model is stored: a run that trained with bf16 autocast (a CNN
        under precision "auto" on a CPU with native bf16) was also evaluated in bf16, so its
        recorded test metrics can differ slightly from those of these outputs. Images of
        another type or shape are a ConfigError saying what the model takes."""
        x = self.inputs(as_images(images, "predict"))
        starts = range(0, len(x), PREDICT_CHUNK) or [0]
        return torch.cat([self.model(x[i : i + PREDICT_CHUNK]).float() for i in starts])


def as_images(images: Any, taker: str) -> torch.Tensor:
    """`images` as the uint8 (N, H, W) tensor `taker` needs (a tensor or a NumPy array), or
    a ConfigError saying how to make one. Float images are refused rather than guessed at:
    pixels in [0, 1] taken as 0-255 would be divided by 255 twice, and the outputs of a
    model fed near-black digits look like outputs."""
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(np.ascontiguousarray(images))  # a flipped view has no torch twin
    if not isinstance(images, torch.Tensor):
        raise ConfigError(
            f"{taker} takes uint8 images (N, H, W) as a tensor or a NumPy array, not "
            f"{type(images).__name__}"
        )
    if images.dtype != torch.uint8:
        hint = (
            "; for pixels in [0, 1] give (images * 255).round().to(torch.uint8)"
            if images.dtype.is_floating_point
            else ""
        )
        raise ConfigError(
            f"{taker} takes uint8 images (pixels 0-255, as dfl.data.load gives them), not "
            f"{str(images.dtype).removeprefix('torch.')}{hint}"
        )
    if images.dim() != 3 or tuple(images.shape[1:]) != IMAGE_SIZE:
        hint = ": one image is images[None]" if tuple(images.shape) == IMAGE_SIZE else ""
        raise ConfigError(
            f"{taker} takes a batch of 28x28 images (N, 28, 28), as every dfl dataset holds, "
            f"not shape {tuple(images.shape)}{hint}"
        )
    return images


def load_trained(run_dir: str | Path) -> Trained:
    """Rebuild the model of the run in `run_dir` from that directory alone: its config.toml,
    and its final weights (model.safetensors; a paused or pruned run, which has none yet,
    gives its newest checkpoint's). The model is built as training built it (`build_model`,
    its class count read off the weights where training read it off the dataset, without
    `init_from`'s run, whose weights are overwritten anyway), put in eval mode on the CPU;
    the global random generator is left as it was. A missing or damaged config.toml or
    weights file is an UnloadableRun naming the run directory."""
    run_dir = Path(run_dir)
    cfg = _config(run_dir)
    weights = _weights(run_dir)
    try:
        with torch.random.fork_rng(devices=[]):  # a fresh model's init draws, thrown away
            model, _ = build_model(
                cfg.model_copy(update={"init_from": None}), _num_classes(cfg, weights)
            )
    except DflError as e:
        raise UnloadableRun(f"cannot rebuild the model of run {run_dir}: {_one_line(e)}") from None
    _check_fits(run_dir, cfg, model, weights)
    model.load_state_dict(weights)
    return Trained(cfg, model.eval(), run_dir)


def final_weights(run_dir: str | Path) -> dict[str, torch.Tensor]:
    """A finished run's weights as tensors by name (a figure of its filters), checked as
    `load_trained` checks them: a missing, cut or changed file is an UnloadableRun naming
    the run, not a SafetensorError."""
    return _weights(Path(run_dir))


def _config(run_dir: Path) -> TrainConfig:
    if not run_dir.is_dir():
        raise UnloadableRun(f"cannot load run {run_dir}: no such directory")
    try:
        cfg = load_saved_config(run_dir)
    except DflError as e:  # not TOML, not UTF-8, a key no config has ...
        raise UnloadableRun(
            f"cannot load run {run_dir}: its {CONFIG} is damaged: {_one_line(e)}"
        ) from None
    if cfg is None:
        raise UnloadableRun(
            f"cannot load run {run_dir}: it has no {CONFIG} (is it a dfl run directory?)"
        )
    return cfg


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    if (run_dir / WEIGHTS).exists():
        return read_final_weights(run_dir)
    try:
        status = read_status(run_dir)
    except DflError as e:
        raise UnloadableRun(
            f"cannot load run {run_dir}: it has no {WEIGHTS}, and {_one_line(e)}"
        ) from None
    if status is None or status["status"] not in (RunStatus.PAUSED, RunStatus.PRUNED):
        how = "it has not started" if status is None else f"it is {status['status']}"
        raise UnloadableRun(
            f"cannot load run {run_dir}: it has no {WEIGHTS} ({how}; a run writes its "
            "weights when it completes)"
        )
    try:
        found = checkpoint.load_latest(run_dir / CHECKPOINTS)
    except DflError as e:
        what = _one_line(e)
        raise UnloadableRun(f"cannot load {status['status']} run {run_dir}: {what}") from None
    if found is None:
        raise UnloadableRun(
            f"cannot load {status['status']} run {run_dir}: it has neither {WEIGHTS} nor a "
            "checkpoint"
        )
    return checkpoint.unprefixed(checkpoint.MODEL, found[0])


def _num_classes(cfg: TrainConfig, weights: dict[str, torch.Tensor]) -> int:
    """The class count `build_model` got in training: the dataset's, for a model that takes
    `num_classes` when the config leaves it out. Read off the weights without the dataset:
    the tensors whose shapes change with `num_classes` hold it in the dimensions that change
    (a dimension c + m * num_classes of a model built with k and k + 1 classes)."""
    default = models.get(cfg.model).defaults().get("num_classes")
    if default is None or "num_classes" in cfg.model_args:
        return 0  # build_model does not pass it on
    with torch.random.fork_rng(devices=[]):
        one, two = (_shapes(cfg, n) for n in (default, default + 1))
    found = set()
    for name, shape in one.items():
        saved = weights.get(name)
        if shape == two[name] or saved is None or saved.dim() != len(shape):
            continue
        for a, b, s in zip(shape, two[name], saved.shape, strict=True):
            if a != b and (s - a) % (b - a) == 0:
                found.add(default + (s - a) // (b - a))
    return found.pop() if len(found) == 1 else default  # otherwise _check_fits says what is off


def _shapes(cfg: TrainConfig, num_classes: int) -> dict[str, torch.Size]:
    model = models.create(cfg.model, **cfg.model_args, num_classes=num_classes)
    return {k: v.shape for k, v in model.state_dict().items()}


def _check_fits(
    run_dir: Path, cfg: TrainConfig, model: nn.Module, weights: dict[str, torch.Tensor]
) -> None:
    """The weights are this model's, every tensor: said on one line, not load_state_dict's."""
    own = model.state_dict()
    missing = [k for k in own if k not in weights]
    extra = [k for k in weights if k not in own]
    wrong = [k for k in own if k in weights and weights[k].shape != own[k].shape]
    if missing or extra or wrong:
        if wrong:
            k = wrong[0]
            what = f"'{k}' has shape {list(weights[k].shape)}, the model {list(own[k].shape)}"
        elif missing:
            what = f"they lack '{missing[0]}'{_of_all(missing)}"
        else:
            what = f"'{extra[0]}'{_of_all(extra)} is none of the model's"
        raise UnloadableRun(
            f"cannot load run {run_dir}: its weights do not fit the '{cfg.model}' model its "
            f"{CONFIG} describes: {what}"
        )


def _of_all(names: list[str]) -> str:
    return f" (and {len(names) - 1} more)" if len(names) > 1 else ""


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split()) or type(error).__name__
