"""Greedy layer-wise pretraining as runs of their own (a config's [pretrain] table).

A stacked autoencoder pretrained layer by layer trains in phases: each layer in turn rebuilds
its input with every other part frozen, on the run's training split without its labels (the
epoch selected on the validation split's reconstruction, where the run selects); then the
classifier trains on top with the bottom layer frozen; then the whole network fine-tunes.
Each phase is an ordinary run in a folder of the pretrained run's directory (pretrain0,
pretrain1, ..., classifier, finetune), started from the weights of the phase before it, so
each resumes and is read back like any other: `dfl train --config
configs/recipes/sae_deep.toml` is the whole recipe."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dfl.config import EarlyStopConfig, ScheduleConfig, TrainConfig
from dfl.errors import DflError, option
from dfl.models.registry import with_model_defaults
from dfl.training.run_dir import CONFIG, foreign_files, load_saved_config, rebase_config

FINETUNE = "finetune"  # the phase whose run is the pretrained run's result


def phases(cfg: TrainConfig, out: Path) -> dict[str, TrainConfig]:
    """The phase runs of `cfg` (which has a [pretrain] table), by name, in training order;
    each starts from the weights of the one before it in `out`."""
    pre = cfg.pretrain
    assert pre is not None  # only a pretrained config has phases
    layers = len(with_model_defaults(cfg).model_args["sizes"]) - 1  # checked: it builds
    trained = cfg.model_copy(update={"pretrain": None})
    # The layers see the images the run sees, split as it splits them (a train_subset without
    # a subset_seed draws afresh for every phase, as the notebook did), but learn with the
    # pretraining's own optimiser from a constant rate, unaugmented, and are never tested:
    # they have no labels to be tested against.
    images = cfg.data.model_copy(update={"augment_shift": 0, "augment_rotate": 0.0,
                                         "augment_scale": 0.0})  # fmt: skip
    out_phases: dict[str, TrainConfig] = {}
    previous: str | None = None
    for k in range(layers):
        update: dict[str, Any] = {
            "objective": "layerwise",
            "layer": k,
            "freeze": frozen_while_pretraining(k, layers),
            "init_from": previous,
            "epochs": pre.epochs,
            "optim": pre.optim,
            "schedule": ScheduleConfig(),
            "early_stop": EarlyStopConfig(),
            "grad_clip": None,
            "data": images,
            "evaluate_test": False,
            "test_every_epoch": False,
        }
        out_phases[f"pretrain{k}"] = trained.model_copy(update=update)
        previous = str(out / f"pretrain{k}")
    if pre.classifier_epochs:
        classifier = {"epochs": pre.classifier_epochs, "freeze": pre.classifier_freeze}
        out_phases["classifier"] = trained.model_copy(update={**classifier, "init_from": previous})
        previous = str(out / "classifier")
    out_phases[FINETUNE] = trained.model_copy(update={"init_from": previous})
    return out_phases


def frozen_while_pretraining(k: int, layers: int) -> list[str]:
    """What stays fixed while layer k learns to rebuild its input: every other layer's encoder
    and decoder, and the classifier."""
    others = [j for j in range(layers) if j != k]
    return [f"{part}.{j}" for part in ("encoders", "decoders") for j in others] + ["classifier"]


def rebase_phases(out: Path, named: dict[str, TrainConfig]) -> None:
    """Point the phases' saved `init_from` at their siblings in `out` as it is spelled now. A
    phase starts from the one before it in the same folder, named by the path the folder was
    given when it began (`sae`, relative to where it was started): given as `../sae` from
    elsewhere, or after the folder moved, that path names nothing, and the resume was refused
    as a changed config."""
    for name, phase in named.items():
        saved = load_saved_config(out / name) if (out / name / CONFIG).exists() else None
        if saved is None or not saved.init_from or not phase.init_from:
            continue
        was, now = saved.init_from, phase.init_from
        if was != now and Path(was).name == Path(now).name:  # the same sibling, named anew
            rebase_config(out / name, was, now)


def check_folder(out: Path, names: list[str]) -> None:
    """A pretrained run's folder holds its config and its phases' runs and nothing else: a
    run's own files, or someone's, would mix with them."""
    if out.exists() and not out.is_dir():
        raise DflError(f"{out} is a file; give {option('out')} a new or empty directory")
    foreign = foreign_files(out, names) if out.exists() else []
    if foreign:
        raise DflError(
            f"{out} holds {', '.join(foreign[:3])}, not a layer-wise pretrained run's phases; "
            f"give {option('out')} a new or empty directory"
        )
