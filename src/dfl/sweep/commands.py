"""`dfl sweep` and `dfl worker`: parse, validate, call (the work is in dfl.sweep)."""

from __future__ import annotations

import argparse
from pathlib import Path

from dfl.cli import command
from dfl.errors import DflError
from dfl.runtime.interrupts import ReaderGone, interrupted_exit_code


@command("sweep", "run a sweep spec (grid or search) as an Optuna study; `dfl sweep status X`")
def add_sweep_arguments(p: argparse.ArgumentParser) -> None:
    p.usage = (
        "dfl sweep SPEC [--workers N] [--threads T] [--storage URL] [--out DIR]\n"
        "                [--dry-run] [--retry-failed]\n"
        "       dfl sweep status SPEC|STUDY [--storage URL] [--out DIR] [--trials]"
    )
    p.add_argument(
        "spec", metavar="SPEC", help="a sweep spec TOML (see configs/sweeps/), or `status`"
    )
    p.add_argument(
        "target", nargs="?", metavar="SPEC|STUDY", help="after `status`: what to report on"
    )
    p.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="local worker processes, each with cores/N threads (default: one per core on CPU, "
        "one on a GPU machine)",
    )
    p.add_argument(
        "--threads",
        type=int,
        metavar="T",
        help="intra-op threads per worker (default: cores / workers)",
    )
    add_storage_arguments(p)
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="check every trial's config and list the trials, without running anything",
    )
    p.add_argument(
        "--retry-failed",
        action="store_true",
        help="queue the failed trials again (same parameters, same run directory) before running",
    )
    p.add_argument("--trials", action="store_true", help="status: also list every trial")
    p.set_defaults(run=run_sweep_command)


def add_storage_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--storage",
        metavar="URL",
        help="the study's storage: an SQLAlchemy URL (postgresql://user@host/db for workers on "
        "several machines) or an SQLite file path (default: SWEEP_DIR/study.db)",
    )
    p.add_argument("--out", metavar="DIR", help="sweep directory (default: sweeps/NAME)")


def run_sweep_command(args: argparse.Namespace) -> int:
    if args.spec == "status":
        if args.target is None:
            raise DflError("`dfl sweep status` needs a spec file or a study name")
        running = [
            f
            for f in ("workers", "threads", "dry_run", "retry_failed")
            if getattr(args, f) not in (None, False)
        ]
        if running:
            flags = ", ".join("--" + f.replace("_", "-") for f in running)
            are = "is" if len(running) == 1 else "are"
            raise DflError(f"`dfl sweep status` only reports: {flags} {are} for running a sweep")
        print(_status_text(args.target, args.storage, args.out, args.trials))
        return 0
    if args.target is not None:
        raise DflError(f"unexpected argument '{args.target}' (did you mean `dfl sweep status`?)")
    from dfl.sweep.launch import check_counts, dry_run, run_sweep
    from dfl.sweep.status import format_status, require_no_failure

    if args.dry_run:  # run_sweep checks them itself
        check_counts(args.workers, args.threads)
        print(dry_run(args.spec, args.out))
        return 0
    try:
        status = run_sweep(
            args.spec,
            workers=args.workers,
            threads=args.threads,
            storage=args.storage,
            out=args.out,
            retry_failed=args.retry_failed,
        )
    except ReaderGone:
        raise  # nobody reads a message: the CLI exits as after SIGPIPE
    except KeyboardInterrupt:
        raise DflError(
            "interrupted: running trials are back in the queue with their checkpoints; rerun "
            "the same command to continue",
            exit_code=interrupted_exit_code(),
        ) from None
    print(format_status(status, list_trials=args.trials))  # each failure with its reason
    require_no_failure(status)  # exit 4, as a reproduction with a failed experiment
    return 0


def _status_text(target: str, storage: str | None, out: str | None, list_trials: bool) -> str:
    from dfl.sweep import study as studies
    from dfl.sweep.spec import load_spec
    from dfl.sweep.status import format_status, sweep_status
    from dfl.sweep.storage import describe_url, open_storage, stalled_trials

    if not target.strip():
        raise DflError("`dfl sweep status` got an empty name; give a spec file or a study name")
    if target.endswith(".toml") and not Path(target).is_file():  # a spec's path, mistyped
        raise DflError(f"spec file {target} is not a file (or give the study's name)")
    if Path(target).is_file() and _is_sqlite(Path(target)):
        raise DflError(
            f"{target} is a sweep's database: give the sweep's spec or name, with --storage "
            f"{target}"
        )
    name = load_spec(target).name if Path(target).is_file() else target
    url = _existing_storage(name, storage, out)
    store = open_storage(url)
    study, spec = studies.load(name, store)
    assert spec.grace_period is not None  # the spec sets it from the heartbeat if not given
    stalled = stalled_trials(url, name, spec.heartbeat_interval, spec.grace_period)
    return format_status(sweep_status(study, spec, describe_url(url), stalled), list_trials)


def _is_sqlite(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(16) == b"SQLite format 3\0"  # every SQLite file's first bytes


def _existing_storage(name: str, storage: str | None, out: str | None) -> str:
    """The URL of a study that must exist already (nothing is created by looking)."""
    from dfl.sweep.storage import storage_url

    url = storage_url(storage, Path(out) if out else Path("sweeps") / name)
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
        raise DflError(
            f"no sweep '{name}' at {url.removeprefix('sqlite:///')} (pass --storage URL or "
            "--out DIR for a sweep elsewhere)"
        )
    return url


@command("worker", "join a sweep's study and run its trials until none are left")
def add_worker_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("study", metavar="STUDY", help="the sweep's name (its spec's `name`)")
    add_storage_arguments(p)
    p.add_argument(
        "--threads", type=int, metavar="T", help="intra-op threads (default: torch's, all cores)"
    )
    p.add_argument("--index", type=int, help=argparse.SUPPRESS)  # set by `dfl sweep`: seeds
    p.set_defaults(run=run_worker_command)


def run_worker_command(args: argparse.Namespace) -> int:
    from dfl.sweep.launch import check_counts
    from dfl.sweep.worker import run_worker

    check_counts(None, args.threads)

    url = _existing_storage(args.study, args.storage, args.out)
    out = Path(args.out) if args.out else None
    run_worker(args.study, url, sweep_dir=out, threads=args.threads, index=args.index)
    return 0
