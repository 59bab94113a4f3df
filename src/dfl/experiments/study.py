"""Grids and searches inside an experiment, as Optuna studies through the sweep engine."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dfl.config import dict_to_toml
from dfl.experiments.context import Context, overrides_tree
from dfl.experiments.experiment import moved

if TYPE_CHECKING:
    from dfl.sweep.status import SweepStatus

RETRY = "the next run of this command retries them"  # study_sweep queues failed trials again


def study_sweep(
    ctx: Context,
    experiment: str,
    name: str,
    base: dict[str, Any],
    *,
    grid: dict[str, list[Any]] | None = None,
    search: dict[str, Any] | None = None,
    metric: str = "val_loss",
) -> list[dict[str, Any]]:
    """Run a grid, or a TPE search with its pruner, as an Optuna study through the sweep
    engine (resumable, exactly once per point, shorter epochs read off longer runs where
    exact); returns one dict per completed trial: its params, validation value, per-epoch
    curve, wall time, run directory and reproducing command.

    Failed trials are queued again on every call, so the next `dfl reproduce` retries them
    (a full disk, an unwritable directory: causes that go away). A grid with a failed point,
    or a search with no completed trial, raises `SweepFailed` naming the failures: selecting
    from part of a grid would report a choice the grid never made."""
    from dfl.sweep.launch import run_sweep  # here: the sweep engine loads optuna
    from dfl.sweep.spec import spec_from_dict
    from dfl.sweep.status import require_a_completed_trial

    sweep_dir = ctx.out / experiment / "sweeps" / name
    sweep_dir.mkdir(parents=True, exist_ok=True)
    tree = {
        "name": f"{experiment}-{name}",
        "metric": metric,
        "base": overrides_tree(ctx.common(), ctx.base_overrides, base, {"evaluate_test": False}),
        **({"grid": grid} if grid is not None else {"search": search}),
    }
    spec = spec_from_dict(tree)  # the trials get these values as data, through the study
    # The spec as a file too: `dfl sweep SPEC --out SWEEP_DIR` continues or inspects it.
    (sweep_dir / "spec.toml").write_text(dict_to_toml(tree))
    workers = ctx.jobs if ctx.jobs > 1 else None  # None: the sweep engine's own policy
    status = run_sweep(spec, out=sweep_dir, workers=workers, retry_failed=True, progress=sys.stderr)
    if spec.grid is not None:
        require_every_point(status)
    require_a_completed_trial(status, retry=RETRY)
    points = []
    for t in status.trials:
        if t.state.name != "COMPLETE":
            continue
        paths = {k: t.user_attrs.get(k) for k in ("run_dir", "epochs_from", "command")}
        if paths["run_dir"]:  # named where it is now, should the reproduction have moved
            paths = moved(paths, str(Path(paths["run_dir"]).parent), str(sweep_dir / "trials"))
        points.append(
            {
                "params": dict(t.params),
                "value": t.value,
                "curve": t.user_attrs.get("curve", []),
                "wall_s": t.user_attrs.get("wall_s"),
                **paths,
            }
        )
    return points


def require_every_point(status: SweepStatus) -> None:
    """Every point of a finished grid completed, or `SweepFailed` naming each failed point
    and its reason (the experiment is recorded failed with it; the next run retries them)."""
    from dfl.sweep.status import SweepFailed, failed_trials, format_trial_params, reason

    failed = failed_trials(status)
    if failed:
        points = "; ".join(f"{format_trial_params(t)}: {reason(t)}" for t in failed)
        raise SweepFailed(
            f"grid {status.spec.name}: {len(failed)} of {status.spec.n_trials} points failed, "
            f"so none is selected ({points}); {RETRY}",
            status,
        )
