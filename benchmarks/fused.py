"""Runs trained as one (dfl/training/fused.py) against the same runs one after another, and
against the same runs in two worker processes.

For each case: training samples/s of 3 seeds as one fused group against the same 3 seeds
trained one after another in this process (each seed's `Trainer.train_epoch`), on the same
real MNIST images, alternating, after a warm-up, on 1 and on 2 intra-op threads. Samples are
counted over all runs (3 seeds x the epoch's images). The ratio is what `fuse = "auto"`
(dfl/training/fused.py, FUSE_MAX_BATCH) is read from. With --workers, the 3 seeds also train
alone in 2 spawned processes of 1 thread each (seeds 0 and 2 in one, 1 in the other, as
`dfl reproduce --jobs 2` would share them), timed from a common start to the last finish: the
column "2 workers/s" and its ratio to the fused group on 2 threads.

With --beside, the fused/alone comparison runs in 2 spawned one-thread processes at once, each
with its own 3 seeds, both alone or both fused at the same time (a barrier between the
phases): what two sweep workers sharing 2 cores see, where the cores' shared caches and memory
bandwidth are shared too. Its column is each process's fused/alone ratio, median over both
processes and the repeats.

Usage: python benchmarks/fused.py [--repeats 3] [--steps 40] [--seeds 3] [--models autoencoder]
         [--batches 16,32] [--threads 1,2] [--workers] [--beside]
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing as mp
import statistics
import time

import torch

from dfl.data import load_dataset
from dfl.runtime import flushed_to_zero
from dfl.runtime.allocator import keep_freed_memory
from dfl.training.fused import FusedGroup, fuse_pays
from dfl.training.trainer import global_rng_state
from throughput import Case, trainer

CASES = [
    *[Case("autoencoder", b, {"enc": 32}) for b in (16, 32, 64)],
    *[Case("autoencoder", b, {"enc": 64}) for b in (16, 32)],
    *[Case("autoencoder", b, {"enc": 128}) for b in (16, 32, 64)],
    *[Case("stacked_autoencoder", b, optim=("sgd", 1.0)) for b in (16, 32, 64)],
    *[Case("mlp", b) for b in (16, 32, 64)],
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


def as_dfl_trains() -> None:
    """The process tuned as a dfl training's run_context tunes it (malloc keeping freed memory,
    subnormals flushed to zero from before the thread pool starts), for the whole benchmark."""
    keep_freed_memory()
    _TUNED.enter_context(flushed_to_zero())


_TUNED = contextlib.ExitStack()  # held for the process's life


def _worker(case: Case, steps: int, seeds: list[int], start, done) -> None:
    """One spawned worker: its seeds trained alone one after another, after a warm-up and the
    common start; puts (samples, start time, end time)."""
    as_dfl_trains()
    torch.set_num_threads(1)
    data = load_dataset("mnist")
    runs = [trainer(case, data, steps, seed=s) for s in seeds]
    for t in runs:
        t.train_epoch(1)  # warm-up
    start.wait()
    t0 = time.time()
    n = 0
    for t in runs:
        t.train_epoch(1)
        n += len(t.splits["train"])
    done.put((n, t0, time.time()))


def time_two_workers(case: Case, steps: int, seeds: int) -> float:
    """Samples/s of the seeds shared out over 2 one-thread processes, from the first start to
    the last end."""
    spawn = mp.get_context("spawn")
    start, done = spawn.Barrier(2), spawn.Queue()
    shares = [list(range(seeds))[i::2] for i in range(2)]
    procs = [spawn.Process(target=_worker, args=(case, steps, s, start, done)) for s in shares]
    for proc in procs:
        proc.start()
    results = [done.get() for _ in procs]
    for proc in procs:
        proc.join()
    n = sum(r[0] for r in results)
    return n / (max(r[2] for r in results) - min(r[1] for r in results))


def _beside_worker(case: Case, steps: int, seeds: int, repeats: int, phase, done) -> None:
    """One of the --beside processes: its own seeds, alone then fused, each phase started
    together with the other process; puts its fused/alone ratios."""
    as_dfl_trains()
    torch.set_num_threads(1)
    runs = seeds_of(case, load_dataset("mnist"), steps, seeds)
    time_alone(runs), time_fused(runs)  # warm-up
    ratios = []
    for _ in range(repeats):
        phase.wait()
        alone = time_alone(runs)
        phase.wait()
        ratios.append(time_fused(runs) / alone)
    done.put(ratios)


def time_beside(case: Case, steps: int, seeds: int, repeats: int) -> list[float]:
    """Fused/alone ratios of 2 one-thread processes comparing at the same time."""
    spawn = mp.get_context("spawn")
    phase, done = spawn.Barrier(2), spawn.Queue()
    args = (case, steps, seeds, repeats, phase, done)
    procs = [spawn.Process(target=_beside_worker, args=args) for _ in range(2)]
    for proc in procs:
        proc.start()
    ratios = [r for _ in procs for r in done.get()]
    for proc in procs:
        proc.join()
    return ratios


def auto_decides(case: Case, data) -> str:
    """What `fuse = "auto"` does with runs of `case` in this process: the rule as it stands."""
    t = trainer(case, data, 1)
    return "fuse" if fuse_pays(t.cfg, t.model) else "alone"


def _spread(ratios: list[float]) -> str:
    return f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})"


def study(
    cases: list[Case],
    data,
    *,
    steps: int,
    repeats: int,
    seeds: int = 3,
    threads: tuple[int, ...] = (1, 2),
    workers: bool = False,
    beside: bool = False,
) -> list[list]:
    """One row per case and thread count: samples/s alone and fused, their ratio, and with
    `beside` (1 thread) the ratio in two processes at once, with `workers` (2 threads) 2
    one-thread workers against the fused group; last, what `auto` decides for the case."""
    rows = []
    for n in threads:
        torch.set_num_threads(n)
        for case in cases:
            runs = seeds_of(case, data, steps, seeds)
            time_alone(runs), time_fused(runs)  # warm-up
            alone, fused = [], []
            for _ in range(repeats):
                alone.append(time_alone(runs))
                fused.append(time_fused(runs))
            row = [case.label, case.batch, n, f"{statistics.median(alone):.0f}",
                   f"{statistics.median(fused):.0f}",
                   _spread([f / a for f, a in zip(fused, alone, strict=True)])]  # fmt: skip
            if beside:
                row.append(_spread(time_beside(case, steps, seeds, repeats)) if n == 1 else "")
            if workers:
                two = (
                    [time_two_workers(case, steps, seeds) for _ in range(repeats)] if n == 2 else []
                )
                row.append(_spread([w / f for w, f in zip(two, fused, strict=True)]) if two else "")
            rows.append([*row, auto_decides(case, data)])
            print("  ".join(str(c) for c in rows[-1]), flush=True)
    return rows


def header(*, workers: bool, beside: bool) -> list[str]:
    return [
        "model", "batch", "threads", "alone samples/s", "fused samples/s", "fused / alone",
        *(["fused / alone, 2 processes at once (1 thread each)"] if beside else []),
        *(["2 one-thread workers / fused (2 threads)"] if workers else []),
        "auto",
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=40, help="training steps per timing")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--models", help="comma-separated subset of model names")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--batches", help="comma-separated subset of batch sizes")
    parser.add_argument("--workers", action="store_true", help="also 2 one-thread workers")
    parser.add_argument(
        "--beside", action="store_true", help="also fused/alone in 2 one-thread processes at once"
    )
    args = parser.parse_args()
    as_dfl_trains()
    data = load_dataset("mnist")
    cases = [c for c in CASES if not args.models or c.model in args.models.split(",")]
    if args.batches:
        cases = [c for c in cases if c.batch in map(int, args.batches.split(","))]
    print("  ".join(header(workers=args.workers, beside=args.beside)))
    study(
        cases, data, steps=args.steps, repeats=args.repeats, seeds=args.seeds,
        threads=tuple(map(int, args.threads.split(","))), workers=args.workers,
        beside=args.beside,
    )  # fmt: skip


if __name__ == "__main__":
    main()
