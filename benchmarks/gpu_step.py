"""The training step on a CUDA device: where its time goes, and what a CUDA graph saves.

    python benchmarks/gpu_step.py steps    --out DIR   # ms a step: eager, graphed, compiled
    python benchmarks/gpu_step.py profile  --out DIR   # torch.profiler: host against kernels
    python benchmarks/gpu_step.py many     --out DIR   # several runs on one card: processes, fused

Each writes DIR/NAME.md (a Markdown table) and DIR/NAME.json; `profile` also writes Chrome
traces (DIR/trace-*.json). benchmarks/gpu.sh runs all three on a GPU machine.

- steps: the trainer's own epoch (`Trainer.train_epoch`) on real MNIST, timed after a warm
  epoch (the graph's capture and cuDNN's autotuning happen there), for the lab models at their
  lab batch sizes: the per-step loop (`cuda_graph = false`), the step replayed from a CUDA graph
  (`dfl/training/device_step.py`, the default on CUDA), and, for the autoencoder, torch.compile's
  "reduce-overhead" mode (inductor's kernels in CUDA graphs) in the per-step loop.
- profile: a few steps of the autoencoder at batch 16 and the notebook ViT at batch 128 under
  torch.profiler, eager and graphed: the host's time a step against the GPU kernels' time a step.
- many: the autoencoder at batch 16 trained for a fixed time as R runs at once: R processes
  (under CUDA MPS when it runs), R runs fused into one model in one process
  (`dfl/training/fused.py`: their layers stacked, one eager step for all R), or with --threads
  R threads of one process each on its own CUDA stream; samples per second in all.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch

from dfl.config import build_config
from dfl.data import load_dataset
from dfl.training.fused import FusedGroup
from dfl.training.trainer import Trainer, global_rng_state

NOWHERE = Path(tempfile.gettempdir()) / "dfl-gpu-bench-unused"
DEVICE = "cuda"  # --device cpu: a dry run of this script where there is no GPU
CASES = [  # (label, model, batch, model_args, optimiser)
    ("autoencoder enc 32", "autoencoder", 16, {"enc": 32}, ("adam", 1e-3)),
    ("autoencoder enc 32", "autoencoder", 64, {"enc": 32}, ("adam", 1e-3)),
    ("stacked_autoencoder", "stacked_autoencoder", 64, {}, ("sgd", 1.0)),
    ("cnn_lab", "cnn_lab", 100, {}, ("adam", 1e-3)),
    ("cnn_explore", "cnn_explore", 100, {}, ("adam", 1e-3)),
    ("vit_lab 64-6-8-128", "vit_lab", 128, {}, ("adam", 1e-3)),
    ("vit (modern)", "vit", 128, {}, ("adamw", 2e-3)),
]


def trainer(data, model: str, batch: int, args: dict, optim: tuple, steps: int, **over) -> Trainer:
    tree = {
        "model": model,
        "model_args": args,
        "batch_size": batch,
        "optim": {"name": optim[0], "lr": optim[1]},
        "device": DEVICE,
        "data": {"val_fraction": 0.0, "train_subset": steps * batch, "subset_seed": 0},
        **over,
    }
    return Trainer(build_config(overrides=tree), NOWHERE, data)


def ms_per_step(t: Trainer, epochs: int = 2) -> float:
    """The fastest of `epochs` timed epochs, after a warm one; ms per step."""
    t.train_epoch(1)
    steps = t.splits["train"].num_batches(t.cfg.batch_size)
    best = float("inf")
    for e in range(epochs):
        _sync()
        t0 = time.perf_counter()
        t.train_epoch(2 + e)  # ends reading its metrics: the device has finished
        best = min(best, time.perf_counter() - t0)
    return 1000 * best / steps


def write(out: Path, name: str, title: str, header: list[str], rows: list[list]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    lines = [f"### {title}", "", "| " + " | ".join(header) + " |"]
    lines.append("|" + "|".join("---" if i == 0 else "--:" for i in range(len(header))) + "|")
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")
    (out / f"{name}.json").write_text(json.dumps({"header": header, "rows": rows}, indent=1))
    print("\n".join(lines), flush=True)


def _sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def machine() -> str:
    if DEVICE != "cuda":
        return f"{DEVICE}, torch {torch.__version__}"
    p = torch.cuda.get_device_properties(0)
    return f"{p.name}, torch {torch.__version__}, CUDA {torch.version.cuda}"


# --- steps ---------------------------------------------------------------------------------


def steps(args: argparse.Namespace) -> None:
    data = load_dataset("mnist")
    rows: list[list] = []
    header = ["model", "batch", "per-step loop ms", "graph ms", "graph bf16 ms", "graph speed-up"]
    title = f"ms a training step on {machine()}"
    for label, model, batch, margs, optim in CASES:
        n = max(100, min(1500, 30000 // batch))
        row: list[Any] = [label, batch]
        for over in ({"cuda_graph": False}, {}, {"precision": "bf16"}):
            t = trainer(data, model, batch, margs, optim, n, **over)
            row.append(f"{ms_per_step(t):.3f}")
        row.append(f"{float(row[2]) / float(row[3]):.1f}x")
        rows.append(row)
        write(args.out, "steps", title, header, rows)  # row by row: a time limit keeps them
    if not args.no_compile:
        rows.append(compiled_autoencoder(data))
        write(args.out, "steps", title, header, rows)


def compiled_autoencoder(data) -> list:
    """torch.compile(mode="reduce-overhead") on the autoencoder at batch 16 in the per-step
    loop: inductor's fused kernels replayed from its own CUDA graphs; the optimiser eager."""
    t = trainer(data, "autoencoder", 16, {"enc": 32}, ("adam", 1e-3), 1500, cuda_graph=False)
    t.train_model = torch.compile(t.model, mode="reduce-overhead")
    t0 = time.perf_counter()
    ms = ms_per_step(t)
    compile_s = time.perf_counter() - t0
    print(f"compiled: {ms:.3f} ms a step ({compile_s:.0f} s with compilation)", flush=True)
    label = f"autoencoder enc 32, loop with torch.compile reduce-overhead ({compile_s:.0f} s)"
    return [label, 16, f"{ms:.3f}", "", "", ""]


# --- profile -------------------------------------------------------------------------------


def profile(args: argparse.Namespace) -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    data = load_dataset("mnist")
    rows, steps_ = [], 20
    for label, model, batch, margs, optim in (CASES[0], CASES[5]):
        for graph in (False, True):
            t = trainer(data, model, batch, margs, optim, steps_, cuda_graph=graph)
            t.train_epoch(1)
            _sync()
            acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if DEVICE == "cuda" else [])
            with torch_profile(activities=acts) as prof:
                t0 = time.perf_counter()
                t.train_epoch(2)
                wall = time.perf_counter() - t0
            events = prof.key_averages()
            kernel_us = sum(e.self_device_time_total for e in events) / steps_
            host_us = sum(e.self_cpu_time_total for e in events) / steps_
            kernels = sum(e.count for e in events if e.self_device_time_total > 0) / steps_
            name = f"{model}-b{batch}-{'graph' if graph else 'eager'}"
            prof.export_chrome_trace(str(args.out / f"trace-{name}.json"))
            rows.append(
                [label, batch, "graph" if graph else "eager", f"{1000 * wall / steps_:.3f}",
                 f"{host_us / 1000:.3f}", f"{kernel_us / 1000:.3f}", f"{kernels:.0f}"]
            )  # fmt: skip
            print(rows[-1], flush=True)
    header = ["model", "batch", "step", "wall ms", "host ms", "GPU kernel ms", "kernels"]
    title = f"host against kernel time a step, under torch.profiler, {machine()}"
    write(args.out, "profile", title, header, rows)


# --- many ----------------------------------------------------------------------------------


def _train_for(seconds: float, seed: int, stream: torch.cuda.Stream | None = None) -> int:
    """Autoencoder epochs at batch 16 for `seconds`; the samples trained."""
    data = _DATA or load_dataset("mnist")
    t = trainer(data, "autoencoder", 16, {"enc": 32}, ("adam", 1e-3), 500, seed=seed)
    with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
        t.train_epoch(1)  # warm: the capture
        samples, epoch, end = 0, 2, time.perf_counter() + seconds
        while time.perf_counter() < end:
            t.train_epoch(epoch)
            samples, epoch = samples + len(t.splits["train"]), epoch + 1
    return samples


_DATA = None


def _processes(r: int, seconds: float) -> int:
    """Samples trained by `r` worker processes, each with its own CUDA context."""
    cmd = [sys.executable, __file__, "worker", "--seconds", str(seconds), "--device", DEVICE]
    procs = [subprocess.Popen([*cmd, "--seed", str(i)], stdout=subprocess.PIPE) for i in range(r)]
    return sum(int(p.communicate()[0].split()[-1]) for p in procs)


def _fused(r: int, seconds: float) -> int:
    """Samples trained by `r` runs fused into one group in this process (seeds 0..r-1)."""
    data = _DATA or load_dataset("mnist")
    runs = []
    for seed in range(r):
        t = trainer(data, "autoencoder", 16, {"enc": 32}, ("adam", 1e-3), 500, seed=seed)
        runs.append((t, global_rng_state(t.device)))  # each run's dropout draws from its own
    group = FusedGroup([t for t, _ in runs], [state for _, state in runs])
    group.train_epoch(1)  # warm
    per_epoch = sum(len(t.splits["train"]) for t, _ in runs)
    samples, epoch, end = 0, 2, time.perf_counter() + seconds
    while time.perf_counter() < end:
        group.train_epoch(epoch)
        samples, epoch = samples + per_epoch, epoch + 1
    return samples


def _threads(r: int, seconds: float) -> int:
    """Samples trained by `r` threads of this process, each on its own CUDA stream."""
    results = [0] * r

    def run(i: int) -> None:
        results[i] = _train_for(seconds, i, torch.cuda.Stream() if DEVICE == "cuda" else None)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(r)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return sum(results)


def many(args: argparse.Namespace) -> None:
    global _DATA
    _DATA = load_dataset("mnist")
    seconds, r = args.seconds, args.runs
    mps = "MPS on" if os.environ.get("CUDA_MPS_PIPE_DIRECTORY") else "time-sliced"
    rows = []
    ways = [
        ("1 run", 1, lambda: _train_for(seconds, 0)),
        (f"{r} processes ({mps})", r, lambda: _processes(r, seconds)),
        (f"{r} runs fused, one process", r, lambda: _fused(r, seconds)),
    ]
    if args.threads:  # on an H200 the second capture failed and the process aborted
        ways.append((f"{r} threads, a stream each", r, lambda: _threads(r, seconds)))
    for how, runs, train in ways:
        t0 = time.perf_counter()
        samples = train()
        rows.append([how, runs, f"{samples / seconds:.0f}", f"{time.perf_counter() - t0:.0f}"])
        print(rows[-1], flush=True)
    header = ["how", "runs", "samples/s in all", "wall s"]
    name = "many-mps" if mps == "MPS on" else "many"
    write(args.out, name, f"autoencoder b16 runs side by side, {machine()} ({mps})", header, rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("what", choices=["steps", "profile", "many", "worker"])
    p.add_argument("--out", type=Path, default=Path("runs/gpu-bench"))
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--runs", type=int, default=4, help="many: runs side by side")
    p.add_argument("--threads", action="store_true", help="many: also R threads, a stream each")
    p.add_argument("--no-compile", action="store_true", help="steps: skip torch.compile")
    p.add_argument("--device", default="cuda", help="cpu: a dry run without a GPU")
    args = p.parse_args()
    global DEVICE
    DEVICE = args.device
    if args.what == "worker":
        print(_train_for(args.seconds, args.seed))
        return
    {"steps": steps, "profile": profile, "many": many}[args.what](args)


if __name__ == "__main__":
    main()
