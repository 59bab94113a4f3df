"""Grids and searches inside an experiment, as Optuna studies through the sweep engine."""

from __future__ import annotations

import sys
from typing import Any

from dfl.config import dict_to_toml
from dfl.experiments.context import Context, overrides_tree


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
    curve, wall time, run directory and reproducing command."""
    from dfl.sweep.launch import run_sweep  # here: the sweep engine loads optuna
    from dfl.sweep.spec import spec_from_dict

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
    status = run_sweep(spec, out=sweep_dir, workers=workers, progress=sys.stderr)
    points = []
    for t in status.trials:
        if t.state.name != "COMPLETE":
            continue
        points.append(
            {
                "params": dict(t.params),
                "value": t.value,
                "curve": t.user_attrs.get("curve", []),
                "wall_s": t.user_attrs.get("wall_s"),
                "run_dir": t.user_attrs.get("run_dir"),
                "epochs_from": t.user_attrs.get("epochs_from"),
                "command": t.user_attrs.get("command"),
            }
        )
    return points
