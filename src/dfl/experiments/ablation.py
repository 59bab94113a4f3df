"""What each ingredient bought: a ladder from the lab's recipe to a beyond-the-lab recipe.

Each rung adds one ingredient to the rung below it (wider layers, augmentation, dropout, a
schedule, more epochs) and trains over seeds, selected on validation and tested once. The top
rungs are the recipes the experiment's beyond stages trained (the CNN's final recipe, then the
same CNN trained longer), so their runs are those (checked, and tests/test_ablation.py holds
each ladder to its recipes). A last row averages the top rung's seeds' predicted
probabilities: what ensembling adds. Every row
carries its training seconds a seed and the device that ran it, since what an ingredient costs
is half of whether it is worth having.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from statistics import fmean, stdev
from typing import Any

import torch

from dfl.experiments.context import Context, Overrides, overrides_tree, slug
from dfl.experiments.document import Table, fmt, mean_std
from dfl.models.registry import spelled_out
from dfl.training.run import Run
from dfl.training.seeds import averaged_accuracy
from dfl.training.trained import load_trained


@dataclass(frozen=True)
class Rung:
    ingredient: str  # what this rung adds, as the table says it: "head dropout 0.5"
    overrides: Overrides  # what it changes of the rung below


def configs(start: Overrides, rungs: tuple[Rung, ...]) -> list[dict[str, Any]]:
    """Each rung's whole config tree: the start and every ingredient up to it."""
    parts: list[Overrides] = [start]
    trees = [overrides_tree(*parts)]
    for rung in rungs:
        parts.append(rung.overrides)
        trees.append(overrides_tree(*parts))
    return trees


@dataclass(frozen=True)
class Ladder:
    """A ladder's runs for a profile: each rung's config tree (`changes`, what the profile
    changes of every rung, applied), labelled bottom first."""

    labels: list[str]
    trees: list[dict[str, Any]]
    changes: Overrides

    def name(self, rung: int, seed: int) -> str:
        # keyed by ingredient: a rung added or left out (cnn.ladder_to) moves no other's runs
        return f"ablation/{slug(self.labels[rung])[:60]}/seed{seed}"

    def runs(self, rungs: Iterable[int], seeds: Iterable[int]) -> dict[str, Overrides]:
        """Those rungs' runs of those seeds, by name, rung by rung."""
        seeds = list(seeds)
        return {self.name(i, s): {**self.trees[i], "seed": s} for i in rungs for s in seeds}

    def below_top(self, seeds: int, tops: int = 1) -> dict[str, Overrides]:
        """The runs to train: every rung but the top `tops`, whose runs are the beyond
        stages'."""
        return self.runs(range(len(self.trees) - tops), range(seeds))


def ladder(
    start_label: str, start: Overrides, rungs: tuple[Rung, ...], changes: Overrides
) -> Ladder:
    labels = [start_label, *(f"+ {r.ingredient}" for r in rungs)]
    trees = [overrides_tree(tree, changes) for tree in configs(start, rungs)]
    return Ladder(labels, trees, dict(changes))


def collect(
    ctx: Context,
    plan: Ladder,
    runs: dict[str, Run],
    tops: list[list[Run]],
    ensemble: float | None = None,
) -> dict[str, Any]:
    """The ladder's rows, bottom first, from its trained runs (`runs`, by plan.name) and the
    beyond stages' (`tops`: the top rungs' runs, bottom first, seed by seed, each checked to
    be its rung's configs), then the ensemble of the top rung's seeds (`ensemble`: its
    accuracy where the stage measured it)."""
    first = len(plan.trees) - len(tops)
    for i, stage in enumerate(tops, first):
        for s, run_ in enumerate(stage):
            staged = spelled_out(ctx.config({**plan.trees[i], "seed": s}))
            if staged != spelled_out(run_.config):  # a ladder drifted from its recipe
                raise AssertionError(f"the ladder's {plan.labels[i]!r} is not {run_.run_dir}")
        runs = runs | {plan.name(i, s): r for s, r in enumerate(stage)}
    top = tops[-1]
    rows = []
    for i, label in enumerate(plan.labels):
        seeds = [runs[plan.name(i, s)] for s in range(len(top))]
        rows.append(
            {
                "ingredient": label,
                "val": [r.final["val_accuracy"] for r in seeds],
                "test": [r.final["test_accuracy"] for r in seeds],
                "seconds": [sum(h["seconds"] for h in r.history) for r in seeds],
                "device": seeds[0].final.get("device", "?"),
                "epochs": seeds[0].config.epochs,
            }
        )
    if ensemble is None:
        ensemble = ensemble_accuracy(ctx, [r.run_dir for r in top])
    return {"rows": rows, "ensemble": ensemble, "changes": plan.changes}


def probabilities_on_test(ctx: Context, run_dir: str | Path) -> torch.Tensor:
    """Softmax outputs (N, classes) of a finished run's saved weights on the test set
    (`Context.test_set`)."""
    return load_trained(run_dir).predict(ctx.test_set()[0]).softmax(1)


def ensemble_accuracy(ctx: Context, run_dirs: list[Path]) -> float:
    """Test accuracy of the runs' averaged probabilities."""
    trained = [load_trained(d) for d in run_dirs]
    return averaged_accuracy(trained, *ctx.test_set())


def signed(gain: float) -> str:
    """A gain to 4 places with its sign; one that rounds to nothing reads +0.0000, not -0.0000."""
    return f"{round(gain, 4) + 0.0:+.4f}"


def table(ablation: dict[str, Any], what: str) -> Table:
    """The ladder as a table: each rung's accuracies over seeds, its gain in mean test
    accuracy over the rung below, and its cost."""
    rows, previous = [], None
    for r in ablation["rows"]:
        test = fmean(r["test"])
        gain = "" if previous is None else signed(test - previous)
        rows.append(
            [r["ingredient"], r["epochs"], mean_std(r["val"]), mean_std(r["test"]), gain,
             f"{fmean(r['seconds']):,.0f} ({r['device']})"]
        )  # fmt: skip
        previous = test
    top = ablation["rows"][-1]
    if len(top["test"]) > 1:  # one seed is no ensemble
        rows.append(
            ["+ ensemble of those seeds", top["epochs"], "", fmt(ablation["ensemble"]),
             signed(ablation["ensemble"] - previous), f"{sum(top['seconds']):,.0f} in all"]
        )  # fmt: skip
    changed = ", ".join(f"{k} = {v}" for k, v in ablation["changes"].items())
    shortened = f"; every rung as this profile changes it: {changed}"
    return Table(
        ["ingredient", "epochs", "val accuracy", "test accuracy", "test gain",
         "seconds a seed (device)"],
        rows,
        f"What each ingredient bought, {what}: each row adds one ingredient to the row above, "
        "over seeds, selected on a validation split, tested once on the full test set"
        + (shortened if ablation["changes"] else ""),
    )  # fmt: skip


def summary(ablation: dict[str, Any], what: str) -> str:
    """One paragraph: how far the ladder climbed, the steps that gained and lost beyond the
    seeds' spread (a step must beat the larger standard deviation of its two rows), and the
    rest, which the seeds cannot tell from nothing. One seed has no spread: then the steps
    are only listed by size."""
    rows = ablation["rows"]
    means = [fmean(r["test"]) for r in rows]
    seeds = len(rows[-1]["test"])
    spread = [stdev(r["test"]) if len(r["test"]) > 1 else 0.0 for r in rows]
    steps = [  # (ingredient, gain, the spread it must beat)
        (rows[i]["ingredient"].removeprefix("+ "), means[i] - means[i - 1],
         max(spread[i], spread[i - 1]))
        for i in range(1, len(rows))
    ]  # fmt: skip
    text = f"What each ingredient bought, {what}: from {fmt(means[0])} to {fmt(means[-1])} mean "
    if seeds < 2:
        ranked = sorted(steps, key=lambda t: -t[1])
        return (
            text + "test accuracy, from one seed, so no step can be told from noise; by size: "
            + "; ".join(f"'{n}' {signed(g)}" for n, g, _ in ranked) + "."
        )  # fmt: skip
    steps.append(("ensemble of the seeds", ablation["ensemble"] - means[-1], spread[-1]))
    text += f"test accuracy over {seeds} seeds, {fmt(ablation['ensemble'])} as an ensemble."

    def listed(chosen: list[tuple[str, float, float]]) -> str:
        return "; ".join(f"'{n}' ({signed(g)})" for n, g, _ in sorted(chosen, key=lambda t: -t[1]))

    gained = [t for t in steps if t[1] > t[2]]
    lost = [t for t in steps if -t[1] > t[2]]
    unclear = [t for t in steps if abs(t[1]) <= t[2]]
    if gained:
        text += f" Gained beyond the seeds' spread: {listed(gained)}."
    if lost:
        text += f" Lost beyond it: {listed(lost)}."
    if unclear:
        text += f" Within it: {listed(unclear)}."
    return text
