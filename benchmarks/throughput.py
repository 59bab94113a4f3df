"""Training throughput, measured two ways on the same model, optimiser and images.

dfl: the trainer's own epoch (`Trainer.train_epoch`): the dataset is one uint8 tensor on the
device, batches are index slices, the optimiser has fused kernels.
textbook: what the lab's notebooks do: a per-sample Dataset that converts each image to float
on access, DataLoader(shuffle=True), torch's default optimiser kernels, fp32.
"""

from __future__ import annotations

import copy
import itertools
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from dfl import models
from dfl.config import build_config
from dfl.data.dataset import Dataset
from dfl.labtools.shapes import model_summary
from dfl.objectives import OBJECTIVES
from dfl.training.trainer import Trainer


@dataclass(frozen=True)
class Case:
    """A lab model at its lab batch size, with the lab's optimiser."""

    model: str
    batch: int
    model_args: dict[str, Any] = field(default_factory=dict)
    optim: tuple[str, float] = ("adam", 1e-3)

    @property
    def label(self) -> str:
        args = " ".join(f"{k} {v}" for k, v in self.model_args.items())
        return f"{self.model} {args}".strip()


CASES = [
    *[Case("autoencoder", b, {"enc": enc}) for enc in (32, 128) for b in (16, 32, 64)],
    *[Case("stacked_autoencoder", b, optim=("sgd", 1.0)) for b in (64, 128)],
    Case("cnn_lab", 100),
    Case("cnn_explore", 100),
    Case("vit_lab", 128),
]


NOWHERE = Path(tempfile.gettempdir()) / "dfl-bench-unused"


def trainer(case: Case, data: Dataset, steps: int, **overrides: Any) -> Trainer:
    """dfl's trainer for `case`, on a training set of exactly `steps` batches; `overrides`
    are top-level config keys (precision, compile, threads)."""
    tree = {
        "model": case.model,
        "model_args": case.model_args,
        "batch_size": case.batch,
        "optim": {"name": case.optim[0], "lr": case.optim[1]},
        "device": "cpu",
        "data": {"val_fraction": 0.0, "train_subset": steps * case.batch, "subset_seed": 0},
        **overrides,
    }
    return Trainer(build_config(overrides=tree), NOWHERE, data)  # an epoch writes nothing


def time_dfl(t: Trainer) -> float:
    """Samples/s of one epoch of the trainer (its training set is the timed steps)."""
    n = len(t.splits["train"])
    t0 = time.perf_counter()
    t.train_epoch(1)
    return n / (time.perf_counter() - t0)


class PerSampleMNIST(TorchDataset):
    """The textbook way: one Python call and one float conversion per image."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels = images.numpy(), labels.numpy()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = torch.from_numpy(self.images[i]).float().div(255.0).unsqueeze(0)  # ToTensor
        return x, int(self.labels[i])


def textbook_optimizer(case: Case, model: torch.nn.Module) -> torch.optim.Optimizer:
    name, lr = case.optim
    cls = torch.optim.SGD if name == "sgd" else torch.optim.Adam
    return cls(model.parameters(), lr=lr)


def _train(case: Case, model, opt, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """The textbook step over `batches`: samples/s, the batches' production included."""
    objective = OBJECTIVES[models.get(case.model).objective]
    model.train()
    samples, t0 = 0, time.perf_counter()
    for x, y in batches:
        loss, _ = objective.step(model, x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        samples += len(y)
    return samples / (time.perf_counter() - t0)


def timed_images(case: Case, data: Dataset, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The images and labels of `steps` batches: what the trainer built by `trainer` sees."""
    return data.train_images[: steps * case.batch], data.train_labels[: steps * case.batch]


def textbook_twin(t: Trainer, case: Case, images: torch.Tensor, labels: torch.Tensor):
    """The textbook loop's side of a comparison with trainer `t`: the same network with its own
    weights and (default-kernel) optimiser, and the images as a per-sample dataset."""
    model = copy.deepcopy(t.model)
    return model, textbook_optimizer(case, model), PerSampleMNIST(images, labels)


def time_textbook(case: Case, model, opt, dataset: PerSampleMNIST, steps: int) -> float:
    loader = DataLoader(dataset, batch_size=case.batch, shuffle=True)
    return _train(case, model, opt, itertools.islice(loader, steps))


def time_model_step(case: Case, model, opt, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Samples/s of the textbook loop's step alone (the same model, optimiser and fp32) on
    batches converted beforehand: what any data handling at all could bring the textbook loop
    up to. Beyond it, only faster arithmetic helps (bf16, fused kernels, compilation)."""
    x = images.float().div(255.0).unsqueeze(1)
    batches = list(zip(x.split(case.batch), labels.split(case.batch), strict=True))
    return _train(case, model, opt, batches)


def training_flops_per_sample(case: Case) -> float:
    """Multiply-adds of one forward pass (the shape checker's count) x 2 FLOPs x 3 for the
    forward and the backward pass."""
    return model_summary(models.create(case.model, **case.model_args)).macs * 2 * 3


def matmul_peak(dtype: torch.dtype = torch.float32, n: int = 2048, reps: int = 5) -> float:
    """Achievable matrix-multiply FLOP/s on this machine in `dtype`, measured now: the ceiling.

    The better of torch.mm and the same (n x n) @ (n x n) product run as a 1x1 convolution:
    torch.mm goes through MKL, which on AMD CPUs reaches about half of what oneDNN's GEMM
    (behind convolutions) does in fp32, and a ceiling below what the CNNs achieve would flatter
    them."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    image = b.reshape(1, n, n // 64, 64)  # n channels of n pixels
    kernel = a.reshape(n, n, 1, 1)
    products = [lambda: a @ b, lambda: torch.nn.functional.conv2d(image, kernel)]
    best = 0.0
    for product in products:
        product()
        for _ in range(reps):
            t0 = time.perf_counter()
            product()
            best = max(best, 2 * n**3 / (time.perf_counter() - t0))
    return best


class Ceiling:
    """The matmul peak, measured again right after each model's timings. These machines change
    speed by up to a quarter over minutes (other tenants), so a share of a ceiling measured at
    another moment would say as much about that moment as about the model."""

    def __init__(self) -> None:
        self.seen: dict[str, list[float]] = {"fp32": [], "bf16": []}

    def now(self, precision: str) -> float:
        peak = matmul_peak(torch.float32 if precision == "fp32" else torch.bfloat16)
        self.seen[precision].append(peak)
        return peak

    def summary(self) -> str:
        return ", ".join(
            f"{p} {min(v) / 1e9:.0f}-{max(v) / 1e9:.0f} GFLOP/s" for p, v in self.seen.items() if v
        )
