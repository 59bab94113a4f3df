"""`dfl reproduce`, `dfl lab` and `dfl report`: argparse wiring; the work is in
`dfl.reproduce` and `dfl.report`."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from dfl.cli import add_data_arguments, command, whole_number
from dfl.errors import ConfigError, DflError
from dfl.experiments import EXPERIMENTS
from dfl.experiments.profiles import ALIASES, PROFILES, canonical

# The report and the reproduction (matplotlib, every experiment) are imported by the commands
# that use them, not when the parser is built: every `dfl` process builds it, `dfl train` too.


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    """What `dfl reproduce` and `dfl lab` share: profile, data, device, seeds, output."""
    p.add_argument(
        "--profile",
        choices=[*PROFILES, *ALIASES],
        metavar="NAME",
        help="how much to run (listed below; default: complete on a CUDA device, lab elsewhere)",
    )
    add_data_arguments(p)
    p.add_argument(
        "--device",
        default="auto",
        choices=["auto", "cpu", "cuda", "mps"],
        metavar="DEVICE",
        help="auto (default: cuda, mps, cpu), cpu, cuda or mps",
    )
    p.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "fp32", "bf16", "fp16"],
        metavar="PRECISION",
        help="auto (default: bf16 for CNNs on CPUs with native bf16, else fp32), fp32, bf16 "
        "or fp16",
    )
    p.add_argument(
        "--seeds", type=whole_number(1), help="seeds behind each mean ± std (default: by profile)"
    )
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        metavar="N",
        help="N runs at a time, in processes of cores/N threads (default 1)",
    )
    p.add_argument("--out", metavar="DIR", help="output directory (default runs/PROFILE[-DATASET])")
    p.formatter_class = argparse.RawDescriptionHelpFormatter  # keeps the list's lines
    p.epilog = profiles_help()


def profiles_help() -> str:
    """--help's list of profiles, each with its measured cost (from profile_costs.json)."""
    width = max(map(len, PROFILES))
    lines = [
        f"  {p.name:<{width}}  {p.brief}\n  {'':<{width}}  ({p.cost_brief})"
        for p in PROFILES.values()
    ]
    return "profiles (--profile NAME), each with its measured cost:\n" + "\n".join(lines)


@command("reproduce", "run every lab experiment (faithful and corrected) and write the report")
def add_reproduce_arguments(p: argparse.ArgumentParser) -> None:
    add_run_arguments(p)
    p.add_argument("--only", metavar="LIST", help=f"a subset of {','.join(EXPERIMENTS)}")
    p.add_argument(
        "--experiments-at-once",
        type=int,
        metavar="N",
        help="experiments side by side (default 2 with 2+ cores)",
    )
    p.set_defaults(run=run_reproduce)


@command("lab", "run one lab experiment (into the same directory as dfl reproduce)")
def add_lab_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "experiment",
        choices=EXPERIMENTS,
        metavar="EXPERIMENT",
        help=f"which lab question to run: {', '.join(EXPERIMENTS)}",
    )
    add_run_arguments(p)
    p.set_defaults(run=lambda args: run_reproduce(args, [args.experiment], "dfl lab"))


def run_reproduce(
    args: argparse.Namespace, only: list[str] | None = None, said_as: str = "dfl reproduce"
) -> int:
    """`dfl reproduce`, or `dfl lab` (`only` its experiment; `said_as` its progress lines')."""
    from dfl.reproduce import default_profile, reproduce

    dataset = args.dataset or "mnist"
    suffix = "" if dataset == "mnist" else "-" + Path(dataset).name
    profile = args.profile or default_profile(args.device)
    out = Path(args.out or f"runs/{canonical(profile)}{suffix}")
    if only is None and args.only is not None:
        only = [s.strip() for s in args.only.split(",") if s.strip()]
        if not only:
            raise ConfigError(f"--only names no experiment (choose from {','.join(EXPERIMENTS)})")
    report = reproduce(
        out,
        profile,
        dataset,
        args.data_dir,
        args.device,
        args.seeds,
        only,
        args.precision,
        args.jobs,
        getattr(args, "experiments_at_once", None),  # `dfl lab` runs one
        said_as=said_as,
    )
    print(report_line(report))
    return 0


def report_line(report: Path) -> str:
    return f"report: {report}  (markdown: {report.with_suffix('.md')})"


@command("report", "rebuild a reproduction's report from its saved results (no training)")
def add_report_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN_DIR", help="a reproduction directory, e.g. runs/lab")
    p.add_argument(
        "--lab-table",
        action="store_true",
        help="print the lab's numbers beside ours as a Markdown table, from results.json "
        "(the table in docs/RESULTS.md), instead of rebuilding the report",
    )
    p.set_defaults(run=run_report)


def run_report(args: argparse.Namespace) -> int:
    from dfl.report.build import build_report, lab_table_markdown
    from dfl.runtime.run_lock import claim_run_dir

    if args.lab_table:
        print(lab_table_markdown(Path(args.run_dir)))
        return 0
    out = Path(args.run_dir)
    if not (out / "reproduce.json").exists():
        print(report_line(build_report(out)))  # says what is missing, and makes nothing
        return 0
    if not os.access(out, os.W_OK):  # a read-only mount, another's directory
        raise DflError(
            f"cannot write to {out}: `dfl report` writes the report beside the results; copy "
            "the directory somewhere writable and run `dfl report` on the copy",
            exit_code=1,
        )
    # Not beside a reproduction, nor another report: a report paused mid-way would overwrite a
    # newer one with what it read before.
    with claim_run_dir(out, "reproducing it or writing its report") as claim:
        claim.started = True
        print(report_line(build_report(out)))
    return 0
