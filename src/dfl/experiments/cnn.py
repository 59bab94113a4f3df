"""Lab 3.2 Q2: CNN exploration.

Faithful: the notebook's baseline CNN and its exploration model ("CNNnet") on the notebook's
protocol (random 10,000 train / 2,000 test images, batch 100, Adam 1e-3), with test accuracy
per epoch as the notebook plotted it (it also picked its best epoch on that test set, which we
show but never use). Corrected: architectures the lab asked about (depth, filters, kernel
sizes, pooling, batch norm, activation) as a sweep on the full data, selected on a validation
split, each with its parameters, multiply-adds and seconds per epoch. The architectures on the
search's front of accuracy against cost, near its best, are then trained with augmentation at
the search's width and at double width, with and without dropout in the head, over seeds; the
one with the highest mean validation accuracy is trained again for longer (the long recipe),
and whichever of the two trainings validates better is the selected CNN, tested once, with the
ensemble of its seeds.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from statistics import fmean, stdev
from typing import Any

import torch
from pydantic import Field

from dfl import models
from dfl.experiments import ablation, figures, recipes
from dfl.experiments.comparison import FULL_ONLY, Comparison, compare
from dfl.experiments.context import Canvas, Context, Overrides, overrides_tree
from dfl.experiments.document import Figure, Section, Table, fmt, mean_std
from dfl.experiments.document import epochs as _epochs
from dfl.experiments.experiment import Experiment, Number, Result
from dfl.experiments.lab_numbers import CNN_EXPLORE_PEAK, lab_value
from dfl.experiments.study import study_sweep
from dfl.labtools.shapes import model_summary
from dfl.training.run import Run
from dfl.training.trained import final_weights

NAME = "cnn"
QUESTION = (
    "Explore CNN architectures on MNIST: depth, number of filters, kernel sizes, pooling, batch "
    "normalisation and activation functions. How do they affect accuracy and cost?"
)


@dataclass(frozen=True)
class Settings:
    lab_epochs: int  # the notebook's baseline CNN (the lab: 20)
    explore_epochs: int  # its exploration CNNnet (the lab: 20)
    lab_subset: tuple[int, int]  # random train / test images of the notebook's protocol
    study_images: tuple[int, int]  # one change at a time: training / validation images
    study_epochs: int
    study_seeds: int  # of the unchanged CNN: the spread that tells a change from noise
    sweep_subset: int | None  # the architecture search's training images (None: all)
    sweep_epochs: int
    trials: int  # 0: no search and no final stage (beyond the lab: the larger profiles)
    final_subset: int | None  # the final stage's training images (None: all, as its recipe)
    final_epochs: int | None  # None: its recipe's (configs/recipes/cnn_final.toml)
    final_test_subset: int | None = None  # its test images (None: all 10,000)


# Every profile answers the lab's question with the one-change-at-a-time study; the search and
# the final stage (the corrected CNN beside the lab's number) are full recipes, in full and
# complete only (smoke runs them tiny, for the tests).
PROFILES = {
    "smoke": Settings(1, 1, (1000, 500), (1000, 500), 1, 2, 2000, 1, 2, 2000, 1, 500),
    "preview": Settings(20, 1, (10000, 2000), (10000, 2000), 2, 3, 6000, 2, 0, 12000, 3),
    "lab": Settings(20, 20, (10000, 2000), (10000, 2000), 3, 3, 6000, 2, 0, 12000, 3),
    "full": Settings(20, 20, (10000, 2000), (10000, 2000), 6, 3, None, 6, 24, None, None),
}
PROFILES["every"] = PROFILES["lab"]
PROFILES["complete"] = PROFILES["full"]

# What the lab asked to explore, one change at a time from its exploration CNN (cnn_search's
# defaults: 4 layers of 16 filters doubling, 3x3 kernels, pooling after every second layer,
# batch norm, ReLU): each value here replaces the default of its argument, the rest unchanged.
CHANGES: dict[str, list[Any]] = {
    "depth": [2, 3, 5],
    "width": [8, 32],
    "growth": ["constant"],
    "kernel": [5, 7],
    "pool": ["first_two", "last_two"],
    "batchnorm": [False],
    "activation": ["tanh", "gelu"],
}
# Words for the study's table: what each argument is, as the lab named it.
FACTOR = {
    "depth": "layers", "width": "first-layer filters", "growth": "filters per layer",
    "kernel": "kernel size", "pool": "pooling", "batchnorm": "batch norm",
    "activation": "activation",
}  # fmt: skip


# What the lab asked to explore, as a TPE search space over the `cnn_search` family: depth,
# filters (16 doubling to 256, or constant), kernel size, pooling placement, batch norm on or
# off, activation. Width stays 16 in the search, where wider first layers would multiply the
# cost of every trial; the final stage tries double width too (FINAL_WIDTHS).
SPACE = {
    "model_args.depth": {"choices": [2, 3, 4, 5]},
    "model_args.growth": {"choices": ["double", "constant"]},
    "model_args.kernel": {"choices": [3, 5]},
    "model_args.pool": {"choices": ["every_second", "first_two", "last_two"]},
    "model_args.batchnorm": {"choices": [True, False]},
    "model_args.activation": {"choices": ["relu", "leaky_relu", "tanh"]},
}


# The first-layer filters the final stage trains each front architecture at.
FINAL_WIDTHS = (16, 32)
# Dropout before the head's linears, tried in the final stage. Without it the 30-epoch runs
# fit their augmented training images almost perfectly (train accuracy 0.999 against 0.996 on
# validation), and most of their weights sit in the head's first linear (0.8M of 1.06M).
FINAL_DROPOUTS = (0.0, 0.5)


def _describe(args: dict[str, Any]) -> str:
    """A short readable name for an architecture: 'd4 x2 k3 pool:every_second bn relu'."""
    return (
        f"d{args['depth']} {'x2' if args['growth'] == 'double' else 'const'} k{args['kernel']} "
        f"pool:{args['pool']} {'bn' if args['batchnorm'] else 'no-bn'} {args['activation']}"
    )


def _dropout(arch: dict[str, Any]) -> float:
    """A final candidate's head dropout: the key is left out at 0, so the runs of the stage
    from before it tried dropout keep their configs (and are reused as they are)."""
    return arch.get("dropout", 0.0)


def _variant(arch: dict[str, Any]) -> str:
    """What the final stage adds to a searched architecture: 'w32', 'w32 dropout 0.5'."""
    return f"w{arch['width']}" + (f" dropout {_dropout(arch)}" if _dropout(arch) else "")


def _model_args(params: dict[str, Any]) -> dict[str, Any]:
    return {k.removeprefix("model_args."): v for k, v in params.items()}


def _cost(args: dict[str, Any]) -> dict[str, int]:
    summary = model_summary(models.create("cnn_search", **args), (1, 28, 28))
    return {"params": summary.params, "macs": summary.macs}


class CNNResult(Result):
    faithful: dict[str, dict[str, Any]]  # baseline / explore on the notebook's protocol
    study: dict[str, Any]  # one change at a time: the unchanged CNN's seeds, then each change
    # The search and the final stage, empty (or None) in the profiles that leave them out:
    # the search's completed architectures, its best on validation, the final stage's
    # candidates over seeds, the index of the selected CNN among them, its test accuracy per
    # seed, the ensemble of its seeds, and the ensemble's confusion matrix on the 10,000 test
    # images and most confidently wrong digits.
    points: list[dict[str, Any]] = Field(default_factory=list)
    best: dict[str, Any] | None = None
    finals: list[dict[str, Any]] = Field(default_factory=list)
    chosen: int | None = None
    selected: list[float] = Field(default_factory=list)
    ensemble: float | None = None
    final_epochs: int = 0
    # The selected architecture trained longer (configs/recipes/cnn_long.toml): its epochs, val
    # and test accuracy per seed, ensemble, and whether it validated better than the final
    # stage's runs and so is the selected CNN above ({} in results saved before the stage).
    long: dict[str, Any] = Field(default_factory=dict)
    ablation: dict[str, Any] = Field(default_factory=dict)  # lab CNN -> long stage, a row a step
    confusion: list[list[int]] | None = None
    wrong: list[dict[str, Any]] = Field(default_factory=list)


def run(ctx: Context, p: Settings) -> CNNResult:
    faithful = _notebook_stage(ctx, p)
    study = _study_stage(ctx, p)
    if not p.trials:
        return CNNResult(faithful=faithful, study=study, compare=_comparisons(faithful, []))
    points = _search_stage(ctx, p)
    candidates, finals = _final_stage(ctx, p, points)
    chosen = max(range(len(candidates)), key=lambda i: fmean(candidates[i]["val"]))
    arch = candidates[chosen]["arch"]
    plan = ablation.ladder(LADDER_START_LABEL, LADDER_START, ladder_to(arch), _final_changes(p))
    longer = {
        f"long/{candidates[chosen]['key']} {_variant(arch)}/seed{s}": _final_overrides(
            p, arch, s, LONG
        )
        for s in range(ctx.seeds)
    }
    # The longer training and the ladder's rungs below the two stages' are independent: with
    # --jobs they train side by side.
    trained = ctx.train_many(NAME, {**longer, **plan.below_top(ctx.seeds, tops=2)})
    long_runs = [trained[k] for k in longer]
    # The selected CNN: its final-recipe runs or the longer ones, whichever validates better.
    runs = max((finals[chosen], long_runs), key=_mean_val)
    ensemble, confusion, wrong = _ensemble(ctx, runs)
    long_ensemble = (
        ensemble
        if runs is long_runs
        else ablation.ensemble_accuracy(ctx, [r.run_dir for r in long_runs])
    )
    ladder = ablation.collect(ctx, plan, trained, [finals[chosen], long_runs], long_ensemble)
    selected = [r.final["test_accuracy"] for r in runs]
    return CNNResult(
        faithful=faithful,
        study=study,
        points=points,
        best=max(points, key=lambda q: q["val_accuracy"]),
        finals=candidates,
        chosen=chosen,
        selected=selected,
        ensemble=ensemble,
        final_epochs=finals[chosen][0].config.epochs,
        long={
            "epochs": long_runs[0].config.epochs,
            "val": [r.final["val_accuracy"] for r in long_runs],
            "test": [r.final["test_accuracy"] for r in long_runs],
            "ensemble": long_ensemble,
            "kept": runs is long_runs,
        },
        ablation=ladder,
        confusion=confusion,
        wrong=wrong,
        numbers={
            "selected.test_accuracy": Number.of(
                selected, "selected CNN, test accuracy", runs[0], NAME
            ),
            "ensemble.test_accuracy": Number.of(ensemble, "ensemble of the seeds", runs[0], NAME),
        },
        compare=_comparisons(faithful, selected),
    )


def _study_stage(ctx: Context, p: Settings) -> dict[str, Any]:
    """The lab's exploration CNN and each change of one of its choices (CHANGES), plus the
    notebook's baseline CNN, on one shared protocol: the same random training and validation
    images for every run, the notebook's batch and optimiser, a fixed number of epochs, the
    last epoch's validation accuracy. The unchanged CNN over seeds gives the spread a change
    must beat to mean anything. The test set is not looked at."""
    n_train, n_val = p.study_images
    protocol = {
        "data.train_subset": n_train + n_val,
        "data.val_fraction": n_val / (n_train + n_val),
        "data.subset_seed": 0,  # every run draws the same images
        "batch_size": 100,
        "epochs": p.study_epochs,
        "evaluate_test": False,
    }
    runs = {
        f"study/base/seed{s}": {"model": "cnn_search", "seed": s, **protocol}
        for s in range(p.study_seeds)
    }
    changes = [(arg, value) for arg, values in CHANGES.items() for value in values]
    for arg, value in changes:
        runs[f"study/{arg}={value}"] = {
            "model": "cnn_search", "model_args": {arg: value}, "seed": 0, **protocol
        }  # fmt: skip
    runs["study/notebook_baseline"] = {"model": "cnn_lab", "seed": 0, **protocol}
    done = ctx.train_many(NAME, runs)

    def row(run: Run, model: str, args: dict[str, Any]) -> dict[str, Any]:
        summary = model_summary(models.create(model, **args), (1, 28, 28))
        return {
            "val_accuracy": run.final["val_accuracy"],
            "params": summary.params,
            "macs": summary.macs,
            "seconds": sum(h["seconds"] for h in run.history),
        }

    base_runs = [done[f"study/base/seed{s}"] for s in range(p.study_seeds)]
    base = row(base_runs[0], "cnn_search", {})
    base["val_accuracy"] = [r.final["val_accuracy"] for r in base_runs]
    rows = [
        {"arg": a, "value": v, **row(done[f"study/{a}={v}"], "cnn_search", {a: v})}
        for a, v in changes
    ]
    notebook = row(done["study/notebook_baseline"], "cnn_lab", {})
    return {
        "images": list(p.study_images),
        "epochs": p.study_epochs,
        "base": base,
        "changes": rows,
        "notebook_baseline": notebook,
    }


NOTEBOOK_CNNS = (("baseline", "cnn_lab"), ("explore", "cnn_explore"))


def _notebook_stage(ctx: Context, p: Settings) -> dict[str, Any]:
    """The notebook's two CNNs on its protocol, test accuracy every epoch as it plotted."""
    n_train, n_test = p.lab_subset
    protocol = {
        "data.train_subset": n_train,
        "data.test_subset": n_test,
        "data.val_fraction": 0.0,
        "batch_size": 100,
        "test_every_epoch": True,
        **ctx.lab_precision(),
    }
    epochs = {"baseline": p.lab_epochs, "explore": p.explore_epochs}
    name = {
        (key, s): f"lab_{key}/seed{s}"
        for key, _ in NOTEBOOK_CNNS
        for s in range(ctx.faithful_seeds)
    }
    runs = ctx.train_many(
        NAME,
        {
            name[key, s]: {"model": model, "epochs": epochs[key], "seed": s, **protocol}
            for key, model in NOTEBOOK_CNNS
            for s in range(ctx.faithful_seeds)
        },
    )
    faithful = {}
    for key, _ in NOTEBOOK_CNNS:
        seeds = [runs[name[key, s]] for s in range(ctx.faithful_seeds)]
        faithful[key] = {
            "final": [r.final["test_accuracy"] for r in seeds],
            "peak": [max(h["test_accuracy"] for h in r.history) for r in seeds],
            "curve": [h["test_accuracy"] for h in seeds[0].history],
            "epochs": epochs[key],
        }
    return faithful


def _search_stage(ctx: Context, p: Settings) -> list[dict[str, Any]]:
    """A TPE search over the architectures on the full data (or the profile's subset), pruned
    and selected on validation accuracy; the test set is looked at only afterwards, to report
    each architecture's test accuracy beside its validation one."""
    search = {
        "n_trials": p.trials,
        "sampler_seed": 0,
        "pruner": "median",
        "startup_trials": max(2, p.trials // 4),
        "warmup_epochs": 1,
        "space": SPACE,
    }
    base = {
        "model": "cnn_search",
        "batch_size": 100,
        "epochs": p.sweep_epochs,
        "restore_best": True,
        "data": {"val_fraction": 0.2},
    }
    if p.sweep_subset:
        base["data"]["train_subset"] = p.sweep_subset
    points, seen = [], set()
    for q in study_sweep(ctx, NAME, "search", base, search=search, metric="val_accuracy"):
        if q["run_dir"] in seen:  # TPE proposed a finished point again; its run was reused
            continue
        seen.add(q["run_dir"])
        args = _model_args(q["params"])
        points.append(
            {
                "arch": args,
                "key": _describe(args),
                "val_accuracy": q["value"],
                "test_accuracy": _test_accuracy(ctx, Path(q["run_dir"])),
                "seconds_per_epoch": fmean(c["seconds"] for c in q["curve"]),
                **_cost(args),
                "run_dir": q["run_dir"],
            }
        )
    return points


def _final_stage(
    ctx: Context, p: Settings, points: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], list[list[Run]]]:
    """Each architecture on the search's accuracy-cost front, at each final width and head
    dropout, with augmentation, over seeds (their restored best validation epochs)."""
    candidates = [
        {"key": q["key"], "arch": {**q["arch"], "width": w, **({"dropout": d} if d else {})}}
        for q in _front(points)
        for w in FINAL_WIDTHS
        for d in FINAL_DROPOUTS
    ]
    name = lambda c, s: f"final/{c['key']} {_variant(c['arch'])}/seed{s}"  # noqa: E731
    runs = ctx.train_many(
        NAME,
        {
            name(c, s): _final_overrides(p, c["arch"], s)
            for c in candidates
            for s in range(ctx.seeds)
        },
    )
    seeds_of = [[runs[name(c, s)] for s in range(ctx.seeds)] for c in candidates]
    for c, rs in zip(candidates, seeds_of, strict=True):
        c["val"] = [r.final["val_accuracy"] for r in rs]
        c["test"] = [r.final["test_accuracy"] for r in rs]
        c.update(_cost(c["arch"]))
    return candidates, seeds_of


def _comparisons(faithful: dict[str, Any], selected: list[float]) -> dict[str, Comparison]:
    base, explore = faithful["baseline"], faithful["explore"]
    out = {
        "acc.baseline": _notebook_compare(
            "acc.baseline", base, "final", _lab_draw(base["final"]), 0.005
        ),
        "acc.baseline_peak": _notebook_compare(
            "acc.baseline_peak",
            base,
            "peak",
            "picking the best epoch on the test set flatters it",
            0.005,
        ),
        "acc.explore": _notebook_compare(
            "acc.explore",
            explore,
            "final",
            _lab_draw(explore["final"]),
            0.004,
            corrected=mean_std(selected) if selected else FULL_ONLY,
        ),
    }
    return out


def _notebook_compare(
    key: str, runs: dict[str, Any], which: str, why: str, tolerance: float, corrected: Any = None
) -> Comparison:
    shown = {"faithful": mean_std(runs[which]), "corrected": corrected}
    if runs["epochs"] != 20:
        return Comparison.not_comparable(
            f"{_epochs(runs['epochs'])} in this profile, the lab 20", **shown
        )
    return compare(NAME, key, fmean(runs[which]), tolerance=tolerance, why=why, **shown)


# The final stage trains every architecture on the search's front of validation accuracy
# against multiply-adds that is within this of the best: about a dozen of the full profile's
# 12,000 validation images, the noise between two runs of one architecture. An architecture
# that costs more and scores no higher than another is never worth training longer.
FRONT_TOLERANCE = 0.001


def _front(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The searched architectures that no other matches in validation accuracy at no more
    multiply-adds, within FRONT_TOLERANCE of the best; best first."""
    top = max(q["val_accuracy"] for q in points)

    def dominated(q: dict[str, Any]) -> bool:
        return any(
            o["macs"] <= q["macs"]
            and o["val_accuracy"] >= q["val_accuracy"]
            and (o["macs"], o["val_accuracy"]) != (q["macs"], q["val_accuracy"])
            for o in points
        )

    front = [q for q in points if q["val_accuracy"] >= top - FRONT_TOLERANCE and not dominated(q)]
    return sorted(front, key=lambda q: -q["val_accuracy"])


FINAL = "cnn_final"  # the final stage's training recipe (configs/recipes/)
LONG = "cnn_long"  # the selected architecture trained longer (configs/recipes/)


def _final_overrides(
    p: Settings, arch: dict[str, Any], seed: int, name: str = FINAL
) -> dict[str, Any]:
    """The final recipe (augmentation, a one-cycle schedule, the best validation epoch), or
    with `name` LONG the long one, for one architecture and seed: the architecture replaces
    the recipe's model arguments whole, and a profile changes only the epochs and images it
    says (full: nothing; the smoke profile trains both recipes as short as each other)."""
    recipe = recipes.recipe(name)
    recipe.pop("model_args", None)
    return overrides_tree(recipe, {"model_args": dict(arch), "seed": seed}, _final_changes(p))


def _mean_val(runs: list[Run]) -> float:
    return fmean(r.final["val_accuracy"] for r in runs)


def _final_changes(p: Settings) -> Overrides:
    """What a profile changes of the final recipe: its epochs and images ({}: nothing)."""
    changes: Overrides = {}
    if p.final_epochs:
        changes["epochs"] = p.final_epochs
    if p.final_subset:
        changes["data.train_subset"] = p.final_subset
    if p.final_test_subset:
        changes["data.test_subset"] = p.final_test_subset
    return changes


# What each ingredient bought (ablation.py): from the lab's exploration CNN as the notebook
# trained it (batch 100, Adam 1e-3, 20 epochs), here on the full data and selected on
# validation, one ingredient at a time up to the CNN the final stage selected.
LADDER_START_LABEL = "the exploration CNNnet, the notebook's training (batch 100, Adam 1e-3)"
LADDER_START: Overrides = {
    "model": "cnn_search",
    "batch_size": 100,
    "epochs": 20,
    "data.val_fraction": 0.1,
    "restore_best": True,
}


def ladder_to(arch: dict[str, Any]) -> tuple[ablation.Rung, ...]:
    """The rungs from LADDER_START to the final recipe with `arch`; a rung that would change
    nothing for this architecture (16 filters, no dropout) is left out."""
    # at the search's 16 filters, named as the final stage names them (the same config)
    searched = {k: v for k, v in arch.items() if k != "dropout"} | {"width": 16}
    rungs = [ablation.Rung(f"the searched architecture ({_describe(arch)})",
                           {"model_args": searched})]  # fmt: skip
    if arch["width"] != 16:
        rungs.append(ablation.Rung(f"{arch['width']} first-layer filters",
                                   {"model_args.width": arch["width"]}))  # fmt: skip
    rungs.append(
        ablation.Rung(
            "shifts, rotations and zooms",
            {"data.augment_shift": 2, "data.augment_rotate": 10, "data.augment_scale": 0.1},
        )
    )
    if _dropout(arch):
        rungs.append(ablation.Rung(f"head dropout {_dropout(arch)}",
                                   {"model_args.dropout": _dropout(arch)}))  # fmt: skip
    rungs.append(
        ablation.Rung(
            "a one-cycle schedule to lr 0.003, batch 128",
            {"schedule.name": "onecycle", "optim.lr": 0.003, "batch_size": 128},
        )
    )
    for recipe in (FINAL, LONG):  # the final stage's runs, then the long stage's
        epochs = recipes.recipe(recipe)["epochs"]
        rungs.append(ablation.Rung(f"{epochs} epochs", {"epochs": epochs}))
    return tuple(rungs)


def alone_command(arch: dict[str, Any], seeds: int = 3, recipe: str = FINAL) -> str:
    """The command that trains a final-stage architecture alone at a recipe, FINAL or LONG (the
    full recipe: a profile that shortens the stages says so in its table). LONG carries the
    full profile's selection as its model arguments, so the command sets the head dropout too,
    and trains `arch` whatever the file holds."""
    args = arch if recipe == FINAL else {**arch, "dropout": _dropout(arch)}
    sets = " ".join(f"--set model_args.{k}={str(v).lower()}" for k, v in args.items())
    seed_list = ",".join(map(str, range(seeds)))
    return f"dfl train --config configs/recipes/{recipe}.toml --seeds {seed_list} {sets}"


def _lab_draw(ours: list[float]) -> str:
    """Why a notebook CNN's accuracy can miss the lab's: its protocol draws the images at
    random, and seeds move it too (by as much as our own runs spread)."""
    why = (
        "the lab's number is one run on a random, unseeded draw of 10,000 training and 2,000 "
        "test images, each test image worth 0.0005"
    )
    if len(ours) > 1:
        why += f"; our {len(ours)} seeds spread by ± {stdev(ours):.4f}"
    return why


def _test_accuracy(ctx: Context, run_dir: Path) -> float:
    pred = ablation.probabilities_on_test(ctx, run_dir).argmax(1)
    return float((pred == ctx.test_set()[1]).float().mean())


@torch.no_grad()
def _ensemble(ctx: Context, runs: list[Run]) -> tuple[float, list, list]:
    """Average the seeds' softmax outputs on the test set (`Context.test_set`); confusion
    matrix and the most confidently wrong digits of the ensemble."""
    probs = sum(ablation.probabilities_on_test(ctx, r.run_dir) for r in runs)
    probs = probs / len(runs)
    pred, y = probs.argmax(1), ctx.test_set()[1]
    accuracy = float((pred == y).float().mean())
    k = int(y.max()) + 1
    confusion = torch.zeros(k, k, dtype=torch.long)
    confusion.index_put_((y, pred), torch.ones_like(y), accumulate=True)
    wrong = (pred != y).nonzero().flatten()
    top = wrong[probs[wrong].max(1).values.argsort(descending=True)[:10]]
    wrong_list = [
        {
            "index": int(i),
            "label": int(y[i]),
            "pred": int(pred[i]),
            "confidence": float(probs[i].max()),
        }
        for i in top
    ]
    return accuracy, confusion.tolist(), wrong_list


def draw(result: CNNResult, canvas: Canvas) -> list[Figure]:
    figs = [_figure_lab_curves(canvas, result.faithful), _figure_study(canvas, result.study)]
    if result.confusion is None:  # no final stage in this profile: no model earned the rest
        return figs
    return [
        *figs,
        _figure_cost(canvas, result.points),
        _figure_confusion(canvas, result.confusion),
        _figure_wrong(canvas, result.wrong),
        _figure_filters(canvas, Path(result.numbers["selected.test_accuracy"].run_dir)),
    ]


def _change_label(change: dict[str, Any]) -> str:
    """'kernel size 7', 'batch norm off', 'pooling first two': a change as the figure and the
    table name it."""
    arg, value = change["arg"], change["value"]
    shown = {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value
    return f"{FACTOR[arg]} {str(shown).replace('_', ' ')}"


def _figure_study(ctx: Canvas, study: dict[str, Any]) -> Figure:
    base, changes = study["base"], study["changes"]
    nb = study["notebook_baseline"]
    points = {
        "the lab's exploration CNN (each seed)": (
            [base["macs"]] * len(base["val_accuracy"]),
            base["val_accuracy"],
            [""] * len(base["val_accuracy"]),
        ),
        "one change": (
            [c["macs"] for c in changes],
            [c["val_accuracy"] for c in changes],
            [_change_label(c) for c in changes],
        ),
        "notebook baseline CNN": ([nb["macs"]], [nb["val_accuracy"]], ["notebook baseline"]),
    }
    plot = figures.scatter(
        ctx.figure_path("cnn_study"),
        {k: (x, y) for k, (x, y, _) in points.items()},
        "multiply-adds per image",
        "validation accuracy",
        "One change at a time: accuracy against cost",
        logx=True,
        labels={k: names for k, (_, _, names) in points.items()},
    )
    n_train, n_val = study["images"]
    return Figure.of(
        plot,
        f"Validation accuracy ({n_val:,} images) after {_epochs(study['epochs'])} on the same "
        f"{n_train:,} training images, against multiply-adds per image, for the lab's "
        "exploration CNN (its seeds show the noise) and each change of one of its choices.",
    )


def _figure_filters(ctx: Canvas, run_dir: Path) -> Figure:
    """The selected CNN's first-layer kernels (seed 0), each scaled to its own range."""
    weights = final_weights(run_dir)
    # The first conv: the 4-D weight of the lowest layer index (a file lists keys in its own
    # order, "10.weight" before "4.weight").
    convs = {int(k.split(".")[0]): w for k, w in weights.items() if w.dim() == 4}
    first = convs[min(convs)]  # (out, 1, k, k)
    kernels = first[:, 0].float().numpy()
    per_row = 16
    rows = {
        f"filters {i + 1}-{min(i + per_row, len(kernels))}": kernels[i : i + per_row]
        for i in range(0, len(kernels), per_row)
    }
    plot = figures.image_grid(ctx.figure_path("cnn_filters"), rows, cmap="RdBu_r", symmetric=True)
    return Figure.of(
        plot,
        f"The selected CNN's {len(kernels)} first-layer filters "
        f"({kernels.shape[-1]}x{kernels.shape[-1]}, seed 0; red positive, blue negative, "
        "each on its own scale centred on zero).",
    )


def _figure_lab_curves(ctx: Canvas, faithful: dict) -> Figure:
    series = {f"{k} (seed 0)": v["curve"] for k, v in faithful.items()}
    plot = figures.curves(
        ctx.figure_path("cnn_lab_curves"),
        series,
        "epoch",
        "test accuracy (2,000 images)",
        "Notebook protocol: test accuracy per epoch",
    )
    return Figure.of(
        plot,
        "Test accuracy per epoch on the notebook's protocol, as "
        "the lab plotted it (the notebook also chose its best epoch on this test set).",
    )


def _figure_cost(ctx: Canvas, points: list[dict]) -> Figure:
    plot = figures.scatter(
        ctx.figure_path("cnn_cost"),
        {"architectures": ([q["macs"] for q in points], [q["val_accuracy"] for q in points])},
        "multiply-adds per image",
        "validation accuracy",
        "Accuracy against cost",
        logx=True,
    )
    return Figure.of(
        plot,
        "Validation accuracy against multiply-adds per image for every architecture tried.",
    )


def _figure_confusion(ctx: Canvas, confusion: list[list[int]]) -> Figure:
    errors = [[0 if i == j else n for j, n in enumerate(row)] for i, row in enumerate(confusion)]
    plot = figures.heatmap(
        ctx.figure_path("cnn_confusion"),
        errors,
        "predicted digit",
        "true digit",
        "Ensemble confusion matrix: its errors",
        annotate=True,
        cmap="Reds",
    )
    return Figure.of(
        plot,
        f"The ensemble's errors on the {sum(map(sum, confusion)):,} test images: how many of "
        "each true digit it called each other digit (the correct calls, the diagonal, are left "
        "out so the colour shows the mistakes).",
    )


def _figure_wrong(ctx: Canvas, wrong: list[dict]) -> Figure:
    images = ctx.data.test_images[[w["index"] for w in wrong]].numpy()
    plot = figures.image_grid(ctx.figure_path("cnn_wrong"), {"": images})
    pairs = ", ".join(f"{w['label']}→{w['pred']} ({w['confidence']:.2f})" for w in wrong)
    pairs = pairs or "none: every test digit was classified correctly"
    return Figure.of(
        plot,
        "The ensemble's most confidently wrong test digits, left "
        f"to right as true→predicted (confidence): {pairs}.",
    )


def section(result: CNNResult, figs: list[Figure]) -> Section:
    paragraphs = [_study_discussion(result.study)]
    tables = [_notebook_table(result.faithful), _study_table(result.study)]
    if result.finals and result.best is not None and result.chosen is not None:
        paragraphs.append(_search_paragraph(result))
        paragraphs.append(_factors(sorted(result.points, key=lambda q: -q["val_accuracy"])))
        tables += [_search_table(result.points), _final_table(result)]
        if result.ablation:
            paragraphs.append(ablation.summary(result.ablation, "the CNN"))
            tables.append(ablation.table(result.ablation, "the CNN"))
    else:
        paragraphs.append(
            "The corrected CNN (a search over these choices on all the training images, then "
            "its best architectures trained with augmentation for "
            f"{recipes.recipe(FINAL)['epochs']} epochs over seeds and the best of them for "
            f"{recipes.recipe(LONG)['epochs']}, selected on validation and tested once) is the "
            "full profile's: `dfl reproduce --profile full --only cnn`."
        )
    paragraphs.append(
        "The notebook chose its best epoch on the test set (its table's 'best epoch on test' "
        "column shows what that gives); every other choice here uses a validation split, and "
        "the test accuracies shown are reported, never used to choose."
    )
    return Section(EXPERIMENT.title, QUESTION, paragraphs, tables, figs)


def _study_discussion(study: dict[str, Any]) -> str:
    """What each change did against the unchanged CNN, judged against its seeds' spread: the
    words come from the numbers (a change inside the spread is called noise)."""
    base, changes = study["base"], study["changes"]
    seeds = base["val_accuracy"]
    mean = fmean(seeds)
    band = max(max(seeds) - min(seeds), 1 / study["images"][1])  # at least one image
    helped = [c for c in changes if c["val_accuracy"] - mean > band]
    hurt = [c for c in changes if mean - c["val_accuracy"] > band]
    noise = [c for c in changes if c not in helped and c not in hurt]

    def listed(group: list[dict[str, Any]]) -> str:
        group = sorted(group, key=lambda c: -c["val_accuracy"])
        return "; ".join(
            f"{_change_label(c)} ({c['val_accuracy'] - mean:+.4f}, "
            f"{c['macs'] / base['macs']:.2g}x the multiply-adds)"
            for c in group
        )

    best = max(changes, key=lambda c: c["val_accuracy"])
    nb = study["notebook_baseline"]
    parts = [
        f"One change at a time from the lab's exploration CNN ({fmt(mean)} validation accuracy "
        f"over {len(seeds)} seeds, which span {fmt(min(seeds))}-{fmt(max(seeds))}: a change "
        f"within {band:.4f} of it is noise here)."
    ]
    parts.append(f"Helped: {listed(helped)}." if helped else "No change helped beyond the noise.")
    parts.append(f"Hurt: {listed(hurt)}." if hurt else "No change hurt beyond the noise.")
    if noise:
        parts.append(f"Within the noise: {listed(noise)}.")
    parts.append(
        f"The best single change, {_change_label(best)}, reached {fmt(best['val_accuracy'])}; "
        f"the notebook's baseline CNN {fmt(nb['val_accuracy'])} with "
        f"{nb['macs'] / base['macs']:.2g}x the multiply-adds. These are {study['epochs']}-epoch "
        "runs: they rank how fast each choice learns as much as how far it gets."
    )
    return " ".join(parts)


def _study_table(study: dict[str, Any]) -> Table:
    base, nb = study["base"], study["notebook_baseline"]
    first = [
        ["none (the lab's exploration CNN)", mean_std(base["val_accuracy"]), "",
         base["params"], base["macs"], f"{base['seconds']:.1f}"],
    ]  # fmt: skip
    mean = fmean(base["val_accuracy"])
    rows = [
        [_change_label(c), c["val_accuracy"],
         f"{c['val_accuracy'] - mean:+.4f}", c["params"], c["macs"], f"{c['seconds']:.1f}"]
        for c in study["changes"]
    ]  # fmt: skip
    rows.append(
        ["the notebook's baseline CNN instead", nb["val_accuracy"],
         f"{nb['val_accuracy'] - mean:+.4f}", nb["params"], nb["macs"], f"{nb['seconds']:.1f}"]
    )  # fmt: skip
    n_train, n_val = study["images"]
    return Table(
        ["change", "val accuracy", "vs unchanged", "parameters", "multiply-adds", "seconds"],
        first + rows,
        f"One change at a time: {n_train:,} training and {n_val:,} validation images (the same "
        f"for every run), batch 100, Adam 1e-3, {_epochs(study['epochs'])}, last epoch; seconds "
        "of training, with other runs beside it",
    )


def _search_paragraph(result: CNNResult) -> str:
    best, finals = result.best, result.finals
    assert best is not None and result.chosen is not None and result.ensemble is not None
    chosen = finals[result.chosen]
    names = list(dict.fromkeys(c["key"] for c in finals))  # in order, once each
    return (
        f"Beyond the lab: a search over the same choices. Best in the search: {best['key']} "
        f"({fmt(best['val_accuracy'])} validation "
        f"accuracy, {best['params']:,} parameters, {best['macs']:,} multiply-adds per image). "
        f"The final stage trained {len(names)} architecture{'s' if len(names) > 1 else ''} "
        f"from the search's accuracy-cost front ({'; '.join(names)}) at "
        f"{_each(c['arch']['width'] for c in finals)} filters, with head dropout "
        f"{_each(_dropout(c['arch']) for c in finals)}, for {_epochs(result.final_epochs)} "
        "with random shifts, rotations and zooms "
        f"and a one-cycle schedule. Selected on mean validation accuracy: {chosen['key']} at "
        f"{chosen['arch']['width']} filters, head dropout {_dropout(chosen['arch'])} "
        f"({chosen['params']:,} parameters). " + _selected(result) + _candidate_spread(finals)
    )


def _selected(result: CNNResult) -> str:
    """The selected CNN's test accuracy and ensemble, at the final recipe's length or the long
    recipe's, whichever validated better, and the command that trains it alone."""
    assert result.chosen is not None and result.ensemble is not None
    chosen, n = result.finals[result.chosen], len(result.selected)
    if not result.long:  # saved before the long stage
        return (
            f"Its test accuracy is {mean_std(result.selected)}, and the ensemble of those seeds "
            f"reaches {fmt(result.ensemble)}. It trains alone with "
            f"`{alone_command(chosen['arch'], n)}`. "
        )
    long, kept = result.long, result.long["kept"]
    margin = fmean(long["val"]) - fmean(chosen["val"])
    spread = max(max(v) - min(v) for v in (long["val"], chosen["val"]))
    verdict = (
        "it validates better"
        + (" on the mean, within the seeds' spread," if margin <= spread else "")
        + " so the longer training is the selected CNN"
        if kept
        else "it validates no better, so the final recipe's runs stay selected (their seeds' "
        f"ensemble: {fmt(result.ensemble)})"
    )
    return (
        f"At the final recipe it reaches {mean_std(chosen['val'])} validation and "
        f"{mean_std(chosen['test'])} test accuracy. Trained for {_epochs(long['epochs'])} "
        f"instead (configs/recipes/{LONG}.toml), it reaches {mean_std(long['val'])} validation "
        f"and {mean_std(long['test'])} test accuracy, {fmt(long['ensemble'])} as an ensemble "
        f"of its seeds: {verdict}. It trains alone with "
        f"`{alone_command(chosen['arch'], n, LONG if kept else FINAL)}`. "
    )


def _notebook_table(faithful: dict[str, dict[str, Any]]) -> Table:
    lab = {k: lab_value(NAME, k) for k in ("acc.baseline", "acc.baseline_peak", "acc.explore")}
    printed = {
        "baseline": f"{lab['acc.baseline']:.3f} final, {lab['acc.baseline_peak']:.3f} peak",
        "explore": f"{lab['acc.explore']:.3f} final, {CNN_EXPLORE_PEAK:.3f} peak",
    }
    label = {"baseline": "notebook baseline CNN", "explore": "exploration CNNnet"}
    return Table(
        ["model", "epochs", "final test accuracy", "best epoch on test (lab's choice)", "lab"],
        [
            [label[k], f["epochs"], mean_std(f["final"]), mean_std(f["peak"]), printed[k]]
            for k, f in faithful.items()
        ],
        "Notebook protocol: random 10,000 train / 2,000 test images, in fp32 as the lab "
        "trained (unless --precision says otherwise)",
    )


def _search_table(points: list[dict[str, Any]]) -> Table:
    return Table(
        ["architecture", "val accuracy", "test accuracy", "parameters", "multiply-adds",
         "s / epoch"],
        [
            [q["key"], q["val_accuracy"], q["test_accuracy"], q["params"], q["macs"],
             q["seconds_per_epoch"]]
            for q in points
        ],
        "The completed trials of a TPE search (pruned trials left out) on the full data (or "
        "the profile's subset), selected on a 20% validation split; test accuracy is reported, "
        "never used to choose",
    )  # fmt: skip


def _final_table(result: CNNResult) -> Table:
    assert result.chosen is not None
    chosen, long = result.finals[result.chosen], result.long
    kept = long.get("kept", False)
    row = lambda c, key, val, test, yes: [  # noqa: E731
        key, c["arch"]["width"], f"{_dropout(c['arch']):g}", c["params"], c["macs"],
        mean_std(val), mean_std(test), "yes" if yes else "",
    ]  # fmt: skip
    rows = [row(c, c["key"], c["val"], c["test"], c is chosen and not kept) for c in result.finals]
    if long:  # the selected architecture trained longer, last
        key = f"{chosen['key']}, {_epochs(long['epochs'])} (the long recipe)"
        rows.append(row(chosen, key, long["val"], long["test"], kept))
    return Table(
        ["architecture", "filters", "head dropout", "parameters", "multiply-adds",
         "val accuracy", "test accuracy", "selected"],
        rows,
        f"The final stage: the search's accuracy-cost front within {FRONT_TOLERANCE} of its "
        f"best validation accuracy, at each width and head dropout, trained for "
        f"{_epochs(result.final_epochs)} "
        "with shifts, rotations and zooms and a one-cycle schedule, over seeds; chosen on mean "
        "validation accuracy"
        + (
            ". The last row is the chosen architecture trained longer, selected instead where it "
            "validates better"
            if long
            else ""
        ),
    )  # fmt: skip


def _each(values: Iterable[Any]) -> str:
    """The distinct values, sorted: '16 and 32'."""
    return " and ".join(str(v) for v in sorted(set(values)))


def _candidate_spread(finals: list[dict[str, Any]]) -> str:
    """How far apart the final candidates' mean validation and test accuracies are."""
    if len(finals) < 2:
        return ""
    val = [fmean(c["val"]) for c in finals]
    test = [fmean(c["test"]) for c in finals]
    return (
        f"The candidates' mean validation accuracies span {fmt(min(val))}-{fmt(max(val))} and "
        f"their mean test accuracies {fmt(min(test))}-{fmt(max(test))}: compare the seeds' "
        "spread before reading a ranking into them."
    )


def _factors(points: list[dict[str, Any]]) -> str:
    """What each searched choice bought: the best validation accuracy among the completed
    trials that made it (a choice no completed trial made is left out)."""
    parts = []
    for key in (k.removeprefix("model_args.") for k in SPACE):
        best: dict[Any, float] = {}
        for q in points:
            value = q["arch"][key]
            best[value] = max(best.get(value, 0.0), q["val_accuracy"])
        shown = ", ".join(f"{v}: {fmt(a)}" for v, a in sorted(best.items(), key=str))
        parts.append(f"{key} ({shown})")
    return (
        f"Best validation accuracy per choice over the {len(points)} completed trials: "
        + "; ".join(parts)
        + ". Each is one search's evidence, not a controlled comparison: TPE spends its "
        "trials where earlier ones did well."
    )


EXPERIMENT = Experiment(
    name=NAME,
    title="3.2 Q2 — CNN exploration",
    question=QUESTION,
    result_type=CNNResult,
    run=run,
    section=section,
    draw=draw,
    profiles=PROFILES,
)
