"""`make bench`: training throughput of dfl's trainer against the textbook loop.

The textbook loop is what the lab's notebooks do: a per-sample Dataset that converts each
image to float on access, DataLoader(shuffle=True), fp32, torch's default Adam. dfl keeps the
dataset as one uint8 tensor on the device, slices batches out of it, and uses the trainer's
optimiser (Adam with fused kernels). Both train the same model with the same
optimiser on the same images, in one process, alternating, after a warm-up; the table shows
samples/s of each and the ratio (median over repeats, with its min-max spread).

Usage: python benchmarks/run.py [--repeats 3] [--steps 60] [--models autoencoder,cnn_lab]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from dfl import models
from dfl.config import build_config
from dfl.data import load_dataset
from dfl.data.batches import Split, to_input
from dfl.objectives import OBJECTIVES
from dfl.train import build_optimizer

# (model, model args, lab batch size)
CASES = [
    ("autoencoder", {"enc": 32}, 32),
    ("autoencoder", {"enc": 128}, 64),
    ("cnn_lab", {}, 100),
    ("cnn_explore", {}, 100),
]


class PerSampleMNIST(TorchDataset):
    """The textbook way: one Python call and one float conversion per image."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels = images.numpy(), labels.numpy()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = torch.from_numpy(self.images[i]).float().div(255.0).unsqueeze(0)  # ToTensor
        return x, int(self.labels[i])


def _step(model, objective, opt, x, y) -> None:
    loss, _ = objective.step(model, x, y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def time_dfl(model, objective, split: Split, batch: int, steps: int) -> float:
    g = torch.Generator().manual_seed(0)
    opt = build_optimizer(build_config(), model.parameters(), torch.device("cpu"))  # the trainer's
    batches = split.batches(batch, generator=g)
    t0 = time.perf_counter()
    for _, (images, y) in zip(range(steps), batches, strict=False):
        _step(model, objective, opt, to_input(images), y)
    return steps * batch / (time.perf_counter() - t0)


def time_textbook(model, objective, dataset: PerSampleMNIST, batch: int, steps: int) -> float:
    loader = DataLoader(dataset, batch_size=batch, shuffle=True)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    t0 = time.perf_counter()
    for _, (x, y) in zip(range(steps), loader, strict=False):
        _step(model, objective, opt, x, y)
    return steps * batch / (time.perf_counter() - t0)


def matmul_peak(dtype: torch.dtype = torch.float32, n: int = 1024, reps: int = 10) -> float:
    """Achievable matmul FLOP/s on this machine, measured now (the ceiling we compare with)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="alternating repeats per model")
    parser.add_argument("--steps", type=int, default=60, help="training steps per timing")
    parser.add_argument("--models", help="comma-separated subset of model names")
    args = parser.parse_args()

    data = load_dataset("mnist")
    images, labels = data.train_images[:20000], data.train_labels[:20000]
    split = Split.of(images, labels, torch.device("cpu"))
    textbook_data = PerSampleMNIST(images, labels)
    print(
        f"machine: {platform.machine()} {platform.processor()}, {torch.get_num_threads()} "
        f"threads, torch {torch.__version__}; fp32 matmul peak "
        f"{matmul_peak() / 1e9:.1f} GFLOP/s"
    )
    print(f"{'model':<28} {'batch':>5} {'dfl /s':>10} {'textbook /s':>12} {'ratio':>6} spread")
    for name, model_args, batch in CASES:
        if args.models and name not in args.models.split(","):
            continue
        objective = OBJECTIVES[models.get(name).objective]
        model = models.create(name, **model_args)
        time_dfl(model, objective, split, batch, 5)  # warm-up both paths
        time_textbook(model, objective, textbook_data, batch, 5)
        ours, theirs = [], []
        for _ in range(args.repeats):
            ours.append(time_dfl(model, objective, split, batch, args.steps))
            theirs.append(time_textbook(model, objective, textbook_data, batch, args.steps))
        ratios = [a / b for a, b in zip(ours, theirs, strict=True)]
        label = f"{name} {model_args or ''}".strip()
        print(
            f"{label:<28} {batch:>5} {statistics.median(ours):>10.0f} "
            f"{statistics.median(theirs):>12.0f} {statistics.median(ratios):>5.2f}x "
            f"{min(ratios):.2f}-{max(ratios):.2f}"
        )


if __name__ == "__main__":
    main()
