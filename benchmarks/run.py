"""`make bench`: dfl's trainer against the textbook training loop, and against the machine.

For every lab model at its lab batch size: training samples/s of dfl's trainer and of the
textbook loop (see throughput.py), the same model, optimiser and images, in one process,
alternating, after a warm-up, over several repeats; their ratio (median, min-max spread); the
achieved FLOP/s against the matmul peak measured in the same run. Then the studies behind
dfl's defaults (studies.py), what training runs as one buys and what `fuse = "auto"` decides
(fused.py), a reproduction's wall time and peak memory (recorded in
src/dfl/experiments/profile_costs.json, which --help and the report quote), and the whole as
benchmarks/RESULTS.md with the machine it ran on.

Usage: python benchmarks/run.py [--repeats 3] [--steps 40] [--models cnn_lab,vit_lab]
          [--no-reproduce] [--profile preview] [--reproduce-out DIR]
          [--results benchmarks/RESULTS.md]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import resource
import statistics
import sys
from pathlib import Path

import torch

import compare_runs
import fused
import studies
from dfl.data import load_dataset
from dfl.runtime.allocator import keep_freed_memory
from dfl.runtime.atomic import atomic_file
from dfl.training.fused import FUSE_MAX_BATCH
from profile_cost import cpu_name, record_cost, reproduction
from throughput import (
    CASES,
    Case,
    Ceiling,
    textbook_twin,
    time_dfl,
    time_model_step,
    time_textbook,
    timed_images,
    trainer,
    training_flops_per_sample,
)

# The runs `auto` groups and the nearest it leaves alone (docs/SPEED.md has the wider table,
# from fused.py): the autoencoder about its limit, the wide one that loses at batch 32, and the
# models that would fuse through vmap.
FUSED_CASES = [
    *[Case("autoencoder", b, {"enc": 32}) for b in (16, 32, 64)],
    Case("autoencoder", 32, {"enc": 128}),
    Case("stacked_autoencoder", 16, optim=("sgd", 1.0)),
    Case("cnn_explore", 100),
    Case("vit_lab", 128),
]
# The compute-bound models, at batch >= 128 where their FLOP utilisation is judged.
# The precision and compile studies; the modern ViT too, as the full profile's longest runs.
BIG_BATCH = [Case(m, 128) for m in ("cnn_lab", "cnn_explore", "vit_lab", "vit")]


class Report:
    """Tables printed as they are measured and kept for RESULTS.md."""

    def __init__(self) -> None:
        self.parts: list[str] = []

    def text(self, line: str) -> None:
        print(line, flush=True)
        self.parts.append(line + "\n")

    def table(self, title: str, header: list[str], rows: list[list]) -> None:
        cells = [header, *[[str(c) for c in r] for r in rows]]
        widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
        print(f"\n{title}")
        for r in cells:
            print(
                "  ".join(
                    c.rjust(w) if i else c.ljust(w)
                    for i, (c, w) in enumerate(zip(r, widths, strict=True))
                )
            )
        md = [
            f"\n### {title}\n",
            "| " + " | ".join(header) + " |",
            "|" + "|".join("---" if i == 0 else "--:" for i in range(len(header))) + "|",
        ]
        md += ["| " + " | ".join(r) + " |" for r in cells[1:]]
        self.parts.append("\n".join(md) + "\n")
        sys.stdout.flush()


def versus_textbook(
    cases: list[Case], data, repeats: int, steps: int, ceiling: Ceiling
) -> list[list]:
    rows = []
    for case in cases:
        t = trainer(case, data, steps)
        timed = timed_images(case, data, steps)
        model, opt, per_sample = textbook_twin(t, case, *timed)
        time_dfl(t)  # warm-up every path
        time_textbook(case, model, opt, per_sample, 5)
        ours, theirs, bare = [], [], []
        for _ in range(repeats):
            ours.append(time_dfl(t))
            theirs.append(time_textbook(case, model, opt, per_sample, steps))
            bare.append(time_model_step(case, model, opt, *timed))
        ratios = [a / b for a, b in zip(ours, theirs, strict=True)]
        bare_ratio = statistics.median(bare) / statistics.median(theirs)
        achieved = statistics.median(ours) * training_flops_per_sample(case)
        peak = ceiling.now(t.precision)  # at the moment of these timings
        rows.append(
            [case.label, case.batch, f"{statistics.median(ours):.0f}",
             f"{statistics.median(theirs):.0f}", f"{statistics.median(ratios):.2f}x",
             f"{min(ratios):.2f}-{max(ratios):.2f}", f"{bare_ratio:.2f}x", t.precision,
             f"{achieved / 1e9:.1f}", f"{peak / 1e9:.0f}", f"{100 * achieved / peak:.0f}%"]
        )  # fmt: skip
    return rows


def machine() -> str:
    return (
        f"{cpu_name()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}, Python {platform.python_version()}"
    )


GPU_RECORD = Path(__file__).with_name("GPU.md")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="alternating repeats per model")
    parser.add_argument("--steps", type=int, default=40, help="training steps per timing")
    parser.add_argument("--models", help="comma-separated subset of model names")
    parser.add_argument("--no-reproduce", action="store_true", help="skip the reproduction")
    parser.add_argument(
        "--profile",
        default="preview",
        help="the profile to reproduce and record in profile_costs.json (default preview)",
    )
    parser.add_argument("--reproduce-out", help="where it runs (default runs/bench-PROFILE)")
    parser.add_argument(
        "--compare-with",
        help="a reproduction made with --precision fp32: its CNN and ViT accuracies are "
        "set beside this run's",
    )
    parser.add_argument(
        "--results", default="benchmarks/RESULTS.md", help="where to write the tables"
    )
    args = parser.parse_args()
    wanted = set(args.models.split(",")) if args.models else None
    pick = lambda cases: [c for c in cases if wanted is None or c.model in wanted]  # noqa: E731

    # Both loops run with dfl's malloc tuning, so the ratios leave its gain out (conservative);
    # the allocator table measures it apart.
    keep_freed_memory()
    data = load_dataset("mnist")
    report = Report()
    ceiling = Ceiling()
    report.text(f"Machine: {machine()}.")
    report.text(
        f"Matmul ceiling at the start: fp32 {ceiling.now('fp32') / 1e9:.0f} GFLOP/s, "
        f"bf16 {ceiling.now('bf16') / 1e9:.0f} GFLOP/s. Each share of the peak below is of the "
        "ceiling measured right after that row's timings."
    )
    report.table(
        "dfl's trainer (default precision) against the textbook loop (fp32), lab batch sizes",
        ["model", "batch", "dfl samples/s", "textbook samples/s", "ratio", "spread",
         "textbook step alone / textbook", "dfl precision", "dfl GFLOP/s",
         "ceiling GFLOP/s", "of peak in that precision"],
        versus_textbook(pick(CASES), data, args.repeats, args.steps, ceiling),
    )  # fmt: skip
    big = pick(BIG_BATCH)
    if big:
        report.table(
            "Precision: fp32 against bf16 autocast (dfl's trainer)",
            [
                "model",
                "batch",
                "precision",
                "samples/s",
                "GFLOP/s",
                "ceiling GFLOP/s",
                "of peak in that precision",
            ],
            studies.precision(big, data, args.steps, args.repeats, ceiling),
        )
        report.table(
            "torch.compile: compilation time and its payback",
            ["model", "batch", "eager samples/s", "compiled samples/s", "speed-up",
             "compile s", "pays back after"],
            studies.compile_payback(big, data, args.steps, args.repeats),
        )  # fmt: skip
    small = pick([Case("autoencoder", 32, {"enc": 32}), Case("cnn_explore", 100)])
    cores = os.cpu_count() or 1
    if small and cores > 1:
        report.table(
            f"Threads: one process with {cores} threads against {cores} single-thread workers",
            ["model", "batch", f"1 x {cores} threads samples/s", f"{cores} x 1 thread samples/s",
             "workers / threads"],
            studies.threads_vs_workers(small, args.steps, cores),
        )  # fmt: skip
    around = pick(
        [Case("autoencoder", 32, {"enc": 32}), Case("cnn_lab", 100), Case("cnn_explore", 100),
         Case("vit_lab", 128)]
    )  # fmt: skip
    if around and keep_freed_memory():
        report.table(
            "Memory allocator: glibc's malloc as the system sets it up, and tuned by dfl "
            "(dfl/runtime/allocator.py); each timing a fresh process",
            ["model", "batch", "textbook, system malloc", "textbook, tuned", "gain",
             "dfl, system malloc", "dfl, tuned", "gain", "dfl tuned / textbook system"],
            studies.allocator(around, args.steps, args.repeats),
        )  # fmt: skip
    if cores > 1:
        report.table(
            "Two `dfl train` runs at once against one after the other (whole processes, "
            "default threads)",
            ["model", "epochs", "core sharing", "one after the other s", "side by side s",
             "side by side / one after the other"],
            studies.concurrency(
                [m for m in ("autoencoder", "cnn_lab", "vit_lab") if wanted is None or m in wanted],
                3, args.repeats,
            ),
        )  # fmt: skip
    grouped = pick(FUSED_CASES)
    if grouped:
        threads = (1, 2) if cores > 1 else (1,)
        report.table(
            "Runs as one (dfl/training/fused.py): 3 seeds trained as one fused group against "
            "the same 3 one after another in one process; `auto` is what the rule "
            f"(FUSE_MAX_BATCH = {FUSE_MAX_BATCH}) does with them here",
            fused.header(workers=cores > 1, beside=cores > 1),
            fused.study(grouped, data, steps=args.steps, repeats=args.repeats, threads=threads,
                        workers=cores > 1, beside=cores > 1),
        )  # fmt: skip
        torch.set_num_threads(cores)
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    report.text(f"\nMatmul ceilings measured during this run: {ceiling.summary()}.")
    report.text(f"Peak resident memory of this benchmark: {peak_rss:.0f} MB.")
    if not args.no_reproduce:
        out = Path(args.reproduce_out or f"runs/bench-{args.profile}")
        wall, rss = reproduction(args.profile, out)
        record_cost(args.profile, out, wall, rss, "`make bench`")
        report.text(
            f"Reproduction (`dfl reproduce --profile {args.profile} --out {out}`, "
            f"a fresh directory): {wall / 60:.1f} min wall, its largest process's peak resident "
            f"memory {rss:.0f} MB."
        )
        if args.compare_with:
            # 'auto' changes the precision of the CNN runs only: compare those.
            lines = compare_runs.table(Path(args.compare_with), out, ["cnn"])
            if len(lines) == 2:  # the header alone: no CNN number in both
                lines = [
                    f"The {args.profile} profile sets no CNN number from a run that auto trains "
                    "in bf16 (its lab-protocol runs train in fp32): nothing to compare."
                ]
            report.parts.append(
                f"\n### {args.profile} accuracies: {args.compare_with} against the default "
                "precision (this run; auto is bf16 for the CNNs)\n\n" + "\n".join(lines) + "\n"
            )
            print("\n".join(lines))
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    command = "python benchmarks/run.py " + " ".join(sys.argv[1:])
    head = f"# Benchmark results\n\nWritten by `{command.strip()}` (`make bench`) on {stamp}.\n\n"
    # GPU runs happen on another machine, when one is lent: recorded by hand, kept here.
    gpu = GPU_RECORD.read_text() if GPU_RECORD.exists() else ""
    with atomic_file(Path(args.results)) as f:
        f.write((head + "".join(report.parts) + ("\n" + gpu if gpu else "")).encode())
    print(f"\nwrote {args.results}")


if __name__ == "__main__":
    main()
