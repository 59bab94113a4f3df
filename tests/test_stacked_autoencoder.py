"""Greedy layer-wise pretraining through the one trainer: only the layer being trained moves,
its reconstruction loss falls, and the phases chain through saved weights."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dfl.config import build_config, parse_overrides
from dfl.errors import ConfigError
from dfl.training.run import fit
from dfl.training.run_dir import WEIGHTS


def phase(*pairs: str):
    base = [
        'model="stacked_autoencoder"',
        "model_args.sizes=[784, 32, 16]",
        "epochs=3",
        "batch_size=32",
        'device="cpu"',
        'optim.name="sgd"',
        "optim.lr=0.1",
    ]
    return build_config(overrides=parse_overrides(base + list(pairs)))


def test_layerwise_phases_train_only_their_layer(tmp_path: Path, tiny_data):
    first = fit(
        phase(
            'objective="layerwise"',
            "layer=0",
            'freeze=["encoders.1", "decoders.1", "classifier"]',
            "evaluate_test=false",
        ),
        tmp_path / "layer0",
        dataset=tiny_data,
    )
    losses = [r["train_loss"] for r in first.history]
    assert losses[-1] < losses[0]  # the layer learns to rebuild its input

    second = fit(
        phase(
            'objective="layerwise"',
            "layer=1",
            f'init_from="{first.run_dir}"',
            'freeze=["encoders.0", "decoders.0", "classifier"]',
            "evaluate_test=false",
        ),
        tmp_path / "layer1",
        dataset=tiny_data,
    )
    w0, w1 = load_file(str(first.run_dir / WEIGHTS)), load_file(str(second.run_dir / WEIGHTS))
    for name in ("encoders.0.0.weight", "decoders.0.0.weight", "classifier.weight"):
        assert torch.equal(w0[name], w1[name]), f"{name} moved while frozen"
    assert not torch.equal(w0["encoders.1.0.weight"], w1["encoders.1.0.weight"])

    clf = fit(
        phase(
            f'init_from="{second.run_dir}"', 'freeze=["encoders.0"]', "optim.lr=1.0", "epochs=12"
        ),
        tmp_path / "classifier",
        dataset=tiny_data,
    )
    clf_losses = [r["train_loss"] for r in clf.history]
    assert clf_losses[-1] < clf_losses[0]
    w2 = load_file(str(clf.run_dir / WEIGHTS))
    assert torch.equal(w1["encoders.0.0.weight"], w2["encoders.0.0.weight"])
    assert not torch.equal(w1["encoders.1.0.weight"], w2["encoders.1.0.weight"])


def test_freeze_prefix_that_matches_nothing_is_named(tmp_path: Path, tiny_data):
    with pytest.raises(ConfigError, match=r"freeze: no parameter starts with 'encoder\.0'"):
        fit(phase('freeze=["encoder.0"]'), tmp_path / "x", dataset=tiny_data)


def test_init_from_an_unfinished_run_is_an_error(tmp_path: Path, tiny_data):
    with pytest.raises(ConfigError, match="init_from"):
        fit(phase(f'init_from="{tmp_path / "nothing"}"'), tmp_path / "y", dataset=tiny_data)
