"""On a CUDA device: every model family trains there, replayed from CUDA graphs, a killed run
resumes to the uninterrupted one, and runs fused into one model equal the runs trained alone.
`pytest -m gpu` (benchmarks/gpu.sh runs it); skipped where CUDA is absent, so `make test` on a
CPU machine skips them, saying why."""

from __future__ import annotations

import math
import subprocess

import pytest
import torch

from conftest import make_dataset
from dfl.config import build_config
from dfl.training.trainer import Trainer
from test_faults import (
    final_status,
    history,
    kill_when,
    resume_and_compare,
    train_args,
)
from test_fused import fused_against_alone

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

# The families whose training differs on a GPU: dense (classifier, autoencoder), the stacked
# autoencoder, the CNNs with batch norm (and the lab's with SGD momentum), both ViTs (the
# modern one with dropout and a per-step schedule below).
MODELS = {
    "mlp": {"model_args": {"hidden": [128, 128]}},
    "autoencoder": {},
    "stacked_autoencoder": {
        "optim": {"name": "sgd", "lr": 0.1, "momentum": 0.9},
        "schedule": {"name": "cosine"},
        "data": {"augment_shift": 2},
    },
    "stacked_layerwise": {"model": "stacked_autoencoder", "objective": "layerwise"},
    "cnn_lab": {"optim": {"name": "sgd", "momentum": 0.9, "lr": 0.01}},
    "cnn_explore": {},
    "cnn_search": {"model_args": {"dropout": 0.2}},
    "vit_lab": {"schedule": {"name": "exponential"}},
    "vit": {"schedule": {"name": "onecycle"}, "data": {"augment_shift": 2}},
}


def _train(tmp_path, data, name: str, precision: str, graph: bool, **extra) -> Trainer:
    tree = {
        "model": name,
        "epochs": 3,
        "batch_size": 32,
        "device": "cuda",
        "precision": precision,
        "deterministic": True,
        "cuda_graph": graph,
        "seed": 3,
        **MODELS[name],
        **extra,
    }
    run_dir = tmp_path / f"{name}-{precision}-{'graph' if graph else 'eager'}"
    trainer = Trainer(build_config(overrides=tree), run_dir, data)
    run_dir.mkdir()
    trainer.run(epoch_bar=False)
    return trainer


@pytest.mark.parametrize("precision", ["fp32", "bf16", "auto"])
@pytest.mark.parametrize("name", MODELS)
def test_every_family_trains_from_a_cuda_graph(tmp_path, tiny_data, name, precision):
    graphed = _train(tmp_path, tiny_data, name, precision, graph=True)
    assert graphed.device_step is not None and graphed.device_step.graph is not None
    history_g = graphed.history
    first, last = history_g[0]["train_loss"], history_g[-1]["train_loss"]
    assert math.isfinite(last) and last < first  # it learned
    # The same run stepping eagerly through the per-step loop: the same numbers up to the
    # order of a few sums (exactly, in practice: the same kernels on the same values).
    eager = _train(tmp_path, tiny_data, name, precision, graph=False)
    assert eager.device_step is None
    for g, e in zip(history_g, eager.history, strict=True):
        for key in ("train_loss", "val_loss", "val_accuracy"):
            if key in e:
                assert g[key] == pytest.approx(e[key], rel=1e-4, abs=1e-6), (key, g, e)


def _cuda_args(args: list[str]) -> list[str]:
    return [("cuda" if a == "cpu" else a) for a in args]


KILLED = ["autoencoder", "stacked_autoencoder", "cnn_explore", "vit"]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("model", KILLED)
def test_sigkill_then_resume_matches_on_cuda(tmp_path, model, precision):
    from conftest import write_idx_dataset

    data = write_idx_dataset(tmp_path / "digits", 512, 128)
    whole = tmp_path / "whole"
    whole_args = _cuda_args(train_args(data, whole, model=model, precision=precision))
    subprocess.run(whole_args, check=True, capture_output=True)
    out = tmp_path / "run"
    args = _cuda_args(train_args(data, out, model=model, precision=precision))
    kill_when(args, 4, lambda: (out / "checkpoints" / "epoch-0002").exists())
    assert final_status(out)["status"] == "running"
    resume_and_compare(args, out, whole)
    assert len(history(out)) == 5
    assert final_status(out)["final"]["device"].startswith("cuda")


# Runs fused into one model (dfl/training/fused.py) on CUDA, one family of each way of fusing:
# stacked layers (mlp, the stacked autoencoder) and vmap (the lab CNN's BatchNorm, the modern
# ViT's dropout). The lone runs step from their graphs, the group eagerly; tolerances are
# test_fused's.
FUSED = ["mlp", "stacked_autoencoder", "cnn_lab", "vit"]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("family", FUSED)
def test_fused_runs_equal_the_runs_trained_alone_on_cuda(tmp_path, family, precision):
    fused_against_alone(family, precision, make_dataset(512, 128), tmp_path, device="cuda")
