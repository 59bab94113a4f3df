"""Runs trained as one (dfl/training/fused.py) against the same runs one after another.

For each case: training samples/s of 3 seeds as one fused group against the same 3 seeds
trained one after another in this process (each seed's `Trainer.train_epoch`), on the same
real MNIST images, alternating, after a warm-up, on 1 and on 2 intra-op threads. Samples are
counted over all runs (3 seeds x the epoch's images). The ratio is what `fuse = "auto"`
(dfl/training/fused.py, FUSE_PAYS) is read from.

Usage: python benchmarks/fused.py [--repeats 3] [--steps 40] [--seeds 3] [--models autoencoder]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from dfl.data import load_dataset
from dfl.training.fused import FusedGroup
from dfl.training.trainer import global_rng_state
from throughput import Case, trainer

CASES = [
    *[Case("autoencoder", b, {"enc": 32}) for b in (16, 32, 64)],
    *[Case("autoencoder", b, {"enc": 128}) for b in (16, 64)],
    *[Case("stacked_autoencoder", b, optim=("sgd", 1.0)) for b in (16, 64)],
    *[Case("mlp", b) for b in (16, 64)],
    Case("cnn_explore", 100),  # the notebook CNN
    Case("vit_lab", 128),  # the notebook ViT
    Case("vit", 128),
]


def seeds_of(case: Case, data, steps: int, seeds: int) -> list:
    runs = []
    for seed in range(seeds):
        t = trainer(case, data, steps, seed=seed)
        runs.append((t, global_rng_state(t.device)))
    return runs


def time_alone(runs: list) -> float:
    n = 0
    t0 = time.perf_counter()
    for t, _ in runs:
        t.train_epoch(1)
        n += len(t.splits["train"])
    return n / (time.perf_counter() - t0)


def time_fused(runs: list) -> float:
    group = FusedGroup([t for t, _ in runs], [s for _, s in runs])
    n = sum(len(t.splits["train"]) for t, _ in runs)
    t0 = time.perf_counter()
    group.train_epoch(1)
    return n / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=40, help="training steps per timing")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--models", help="comma-separated subset of model names")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--batches", help="comma-separated subset of batch sizes")
    args = parser.parse_args()
    data = load_dataset("mnist")
    cases = [c for c in CASES if not args.models or c.model in args.models.split(",")]
    if args.batches:
        cases = [c for c in cases if c.batch in map(int, args.batches.split(","))]
    print(f"{'model':<22} {'batch':>5} {'threads':>7} {'alone/s':>9} {'fused/s':>9} {'x':>10}")
    for threads in map(int, args.threads.split(",")):
        torch.set_num_threads(threads)
        for case in cases:
            runs = seeds_of(case, data, args.steps, args.seeds)
            time_alone(runs), time_fused(runs)  # warm-up
            alone, fused = [], []
            for _ in range(args.repeats):
                alone.append(time_alone(runs))
                fused.append(time_fused(runs))
            ratios = [f / a for f, a in zip(fused, alone, strict=True)]
            spread = f"{min(ratios):.2f}-{max(ratios):.2f}"
            print(
                f"{case.label:<22} {case.batch:>5} {threads:>7} {statistics.median(alone):>9.0f} "
                f"{statistics.median(fused):>9.0f} {statistics.median(ratios):>5.2f} ({spread})",
                flush=True,
            )


if __name__ == "__main__":
    main()
