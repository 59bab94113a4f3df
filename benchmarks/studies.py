"""The choices behind dfl's defaults, measured: precision, torch.compile, threads vs workers,
the memory allocator, two trainings at once.

Each study returns table rows; `run.py` prints them and writes them to RESULTS.md.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from dfl.data import load_dataset
from dfl.data.dataset import Dataset
from dfl.runtime.allocator import OPT_OUT
from dfl.runtime.core_share import OPT_OUT as CORE_SHARE_OPT_OUT
from throughput import (
    Case,
    Ceiling,
    textbook_twin,
    time_dfl,
    time_textbook,
    timed_images,
    trainer,
    training_flops_per_sample,
)


def precision(
    cases: list[Case], data: Dataset, steps: int, repeats: int, ceiling: Ceiling
) -> list[list[Any]]:
    """fp32 against bf16 autocast in the trainer: samples/s (medians of `repeats` alternating
    timings) and the share of the matmul peak in the same precision, measured right after."""
    rows = []
    for case in cases:
        flops = training_flops_per_sample(case)
        trainers = {p: trainer(case, data, steps, precision=p) for p in ("fp32", "bf16")}
        for t in trainers.values():
            time_dfl(t)  # warm-up
        rates = {p: [] for p in trainers}
        for _ in range(repeats):
            for p, t in trainers.items():
                rates[p].append(time_dfl(t))
        for p, timed in rates.items():
            rate, peak = statistics.median(timed), ceiling.now(p)
            rows.append(
                [case.label, case.batch, p, f"{rate:.0f}", f"{rate * flops / 1e9:.1f}",
                 f"{peak / 1e9:.0f}", f"{100 * rate * flops / peak:.0f}%"]
            )  # fmt: skip
    return rows


def compile_payback(cases: list[Case], data: Dataset, steps: int, repeats: int) -> list[list[Any]]:
    """torch.compile: the first epoch pays the compilation; how many steps until it is
    earned back by faster steps (never, if compiled steps are not faster). After the
    compilation the eager and compiled trainers alternate `repeats` times and the medians are
    compared, so that a slow spell of the machine cannot pass for a speed-up. Compiled code is
    cached on disk between processes; a fresh cache directory measures a first compile."""
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="dfl-bench-inductor-")
    rows = []
    for case in cases:
        eager = trainer(case, data, steps)
        time_dfl(eager)
        compiled = trainer(case, data, steps, compile=True)
        t0 = time.perf_counter()
        time_dfl(compiled)  # compiles
        first = time.perf_counter() - t0
        rates = [(time_dfl(eager), time_dfl(compiled)) for _ in range(repeats)]
        eager_rate = statistics.median(e for e, _ in rates)
        rate = statistics.median(c for _, c in rates)
        step_eager, step_compiled = case.batch / eager_rate, case.batch / rate
        overhead = first - steps * step_compiled
        saving = step_eager - step_compiled
        payback = f"{overhead / saving:,.0f} steps" if saving > 0 else "never"
        rows.append(
            [case.label, case.batch, f"{eager_rate:.0f}", f"{rate:.0f}",
             f"{rate / eager_rate:.2f}x", f"{overhead:.1f}", payback]
        )  # fmt: skip
    return rows


def _worker(case: Case, steps: int, threads: int, barrier, results) -> None:
    torch.set_num_threads(threads)
    t = trainer(case, load_dataset("mnist"), steps, threads=threads)
    time_dfl(t)  # warm-up
    barrier.wait()  # all workers time the same moment
    results.put(time_dfl(t))


def threads_vs_workers(cases: list[Case], steps: int, cores: int) -> list[list[Any]]:
    """Total samples/s of one process with every core as intra-op threads, against one
    single-threaded process per core (what `dfl sweep --workers N` does)."""
    ctx = mp.get_context("spawn")
    rows = []
    for case in cases:
        totals = {}
        for workers, threads in ((1, cores), (cores, 1)):
            barrier, results = ctx.Barrier(workers), ctx.Queue()
            procs = [
                ctx.Process(target=_worker, args=(case, steps, threads, barrier, results))
                for _ in range(workers)
            ]
            for p in procs:
                p.start()
            totals[workers] = sum(results.get(timeout=600) for _ in procs)
            for p in procs:
                p.join()
        rows.append(
            [case.label, case.batch, f"{totals[1]:.0f}", f"{totals[cores]:.0f}",
             f"{totals[cores] / totals[1]:.2f}x"]
        )  # fmt: skip
    return rows


def _both_loops(case: Case, steps: int, tuned: bool, results) -> None:
    """One timing of dfl's trainer and one of the textbook loop, after a warm-up of each, in a
    fresh process whose malloc the trainer tunes, or (`tuned` False) leaves as it starts."""
    if not tuned:
        os.environ[OPT_OUT] = "0"  # read when the trainer is built, just below
    data = load_dataset("mnist")
    t = trainer(case, data, steps)
    model, opt, per_sample = textbook_twin(t, case, *timed_images(case, data, steps))
    time_dfl(t)
    time_textbook(case, model, opt, per_sample, 5)
    results.put((time_dfl(t), time_textbook(case, model, opt, per_sample, steps)))


def allocator(cases: list[Case], steps: int, repeats: int) -> list[list[Any]]:
    """glibc's malloc as the system sets it up against dfl's tuning (runtime/allocator.py), for both
    loops. The tuning is process-wide and cannot be undone, so each timing is a fresh process;
    the two settings alternate `repeats` times and the medians are compared. (Everywhere else
    in the benchmark both loops run with the tuning, so their ratio leaves its gain out.)"""
    ctx = mp.get_context("spawn")  # a fresh interpreter: malloc as at start
    rows = []
    for case in cases:
        rates: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
        for _ in range(repeats):
            for tuned in (False, True):
                results = ctx.Queue()
                p = ctx.Process(target=_both_loops, args=(case, steps, tuned, results))
                p.start()
                rates[tuned].append(results.get(timeout=600))
                p.join()
        dfl = {k: statistics.median(d for d, _ in v) for k, v in rates.items()}
        textbook = {k: statistics.median(b for _, b in v) for k, v in rates.items()}
        rows.append(
            [case.label, case.batch, f"{textbook[False]:.0f}", f"{textbook[True]:.0f}",
             f"{textbook[True] / textbook[False]:.2f}x", f"{dfl[False]:.0f}", f"{dfl[True]:.0f}",
             f"{dfl[True] / dfl[False]:.2f}x", f"{dfl[True] / textbook[False]:.2f}x"]
        )  # fmt: skip
    return rows


def _train_command(model: str, epochs: int, out: Path) -> list[str]:
    return [
        sys.executable, "-m", "dfl", "train", model, "--epochs", str(epochs), "--device", "cpu",
        "--set", "data.train_subset=10000", "--set", "evaluate_test=false", "--out", str(out),
    ]  # fmt: skip


def _two_runs(model: str, epochs: int, side_by_side: bool, share: bool) -> float:
    """Wall seconds of two `dfl train` processes, one after the other or side by side, each
    with torch's default thread count; `share` False turns dfl's core sharing off."""
    env = {**os.environ, CORE_SHARE_OPT_OUT: "1" if share else "0"}
    root = Path(tempfile.mkdtemp(prefix="dfl-bench-concurrency-"))
    t0 = time.perf_counter()
    procs = []
    for i in range(2):
        cmd = _train_command(model, epochs, root / f"run{i}")
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if not side_by_side:
            proc.wait()
        procs.append(proc)
    for proc in procs:
        if proc.wait():
            raise SystemExit(f"a concurrency-study run failed: {proc.stderr.read().decode()}")
    wall = time.perf_counter() - t0
    shutil.rmtree(root, ignore_errors=True)
    return wall


def concurrency(models: list[str], epochs: int, repeats: int) -> list[list[Any]]:
    """Two trainings at once on this machine against the same two one after the other, with
    dfl's core sharing (dfl/runtime/core_share.py) and without it (each run one thread per core,
    spinning against the other's). Wall seconds of whole processes (start-up, data, training),
    medians of `repeats`, the four arrangements alternating."""
    rows = []
    for model in models:
        walls: dict[tuple[bool, bool], list[float]] = {}
        for _ in range(repeats):
            for share in (False, True):
                for side_by_side in (False, True):
                    wall = _two_runs(model, epochs, side_by_side, share)
                    walls.setdefault((share, side_by_side), []).append(wall)
        med = {k: statistics.median(v) for k, v in walls.items()}
        for share in (False, True):
            one_after, together = med[share, False], med[share, True]
            rows.append(
                [model, epochs, "shared (default)" if share else f"off ({CORE_SHARE_OPT_OUT}=0)",
                 f"{one_after:.1f}", f"{together:.1f}", f"{together / one_after:.2f}x"]
            )  # fmt: skip
    return rows
