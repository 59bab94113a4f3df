"""The device step (dfl/training/device_step.py) computes what the trainer's per-step loop computes.

On CUDA it is replayed from a graph (tests/test_gpu.py); here it runs eagerly on the CPU, where
everything but the replay can be checked: the batch picked by the device counter, the epoch's
augmentation drawn up front, the sums kept in place, the tail batch, a per-step schedule.
Both loops run at one thread, so they must agree exactly.
"""

from __future__ import annotations

import pytest

from dfl.config import build_config
from dfl.training.device_step import DeviceStep
from dfl.training.trainer import Trainer

CASES = {
    "autoencoder": {"model": "autoencoder", "batch_size": 48},
    "stacked_layerwise": {
        "model": "stacked_autoencoder",
        "objective": "layerwise",
        "optim": {"name": "sgd", "lr": 0.1, "momentum": 0.9},
    },
    "cnn_bn_augmented": {
        "model": "cnn_explore",
        "model_args": {"filters": [8, 16], "kernels": [3, 3], "pool_after": [1, 2]},
        "data": {"augment_shift": 2, "augment_rotate": 10.0, "augment_scale": 0.1},
        "grad_clip": 1.0,
    },
    "vit_dropout_onecycle": {
        "model": "vit",
        "model_args": {"dim": 32, "depth": 2, "heads": 2, "dim_head": 16, "mlp_dim": 64},
        "optim": {"name": "adamw", "lr": 2e-3, "weight_decay": 0.05},
        "schedule": {"name": "onecycle"},
        "data": {"augment_shift": 2},
    },
}


def _history(cfg_tree: dict, tmp_path, data, name: str, device_step: bool) -> list[dict]:
    tree = {"epochs": 2, "batch_size": 40, "threads": 1, "device": "cpu", **cfg_tree}
    trainer = Trainer(build_config(overrides=tree), tmp_path / name, data)
    if device_step:
        trainer.device_step = DeviceStep(trainer, capture=False)
    (tmp_path / name).mkdir()
    trainer.run(epoch_bar=False)
    return [
        {k: v for k, v in r.items() if k not in ("seconds", "samples_per_s")}
        for r in trainer.history
    ]


@pytest.mark.parametrize("case", CASES)
def test_device_step_equals_the_loop(case, tmp_path, tiny_data):
    loop = _history(CASES[case], tmp_path, tiny_data, "loop", device_step=False)
    device = _history(CASES[case], tmp_path, tiny_data, "device", device_step=True)
    assert len(loop) == 2
    assert device == loop


def test_the_tail_batch_counts(tmp_path, tiny_data):
    """512 training images less the 20% validation split at batch 40: a partial last batch."""
    tree = {"model": "mlp", "batch_size": 40, "threads": 1, "device": "cpu", "epochs": 1}
    trainer = Trainer(build_config(overrides=tree), tmp_path / "r", tiny_data)
    step = DeviceStep(trainer, capture=False)
    n = len(trainer.splits["train"])
    assert n % 40 and sum(step.sizes) == n and step.sizes[-1] == n % 40
