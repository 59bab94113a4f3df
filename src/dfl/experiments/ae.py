"""Lab 3.1 Q1: image reconstruction with a dense autoencoder, and what tuning buys.

Faithful: the notebook's baseline (enc 32, batch 32, 20 epochs, random 10,000 train / 1,000
test images) and its grid batch x enc x epochs on the seeded 80/20 split of all 60,000
training images, selected on validation MSE. The notebook's two test figures were divided by
10,000 instead of 1,000 (10x too small); ours are per-pixel MSE, correctly normalised, on the
full 10,000 test images. Beyond: a linear probe on the codes per encoding size, and a deeper
autoencoder at the smallest code size.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from statistics import fmean
from typing import Any

import torch
from pydantic import Field
from torch import nn

from dfl import models
from dfl.experiments import figures, pca, recipes
from dfl.experiments.comparison import Comparison, compare
from dfl.experiments.context import Canvas, Context, Overrides, overrides_tree
from dfl.experiments.document import Figure, Section, Table, epochs, fmt, mean_std
from dfl.experiments.experiment import Experiment, Number, Result
from dfl.experiments.lab_numbers import AE_GRID, lab_value
from dfl.experiments.study import study_sweep
from dfl.training.run import Run
from dfl.training.trained import load_trained
from dfl.training.trainer import prepare_splits

NAME = "ae"
QUESTION = (
    "Conduct image reconstruction on MNIST using an autoencoder. Tune the number of neurons in "
    "the hidden layer (encoding dim) and the number of training epochs to obtain good "
    "reconstruction results. Can you improve the performance of the given model?"
)


@dataclass(frozen=True)
class Settings:
    batches: tuple[int, ...]  # the grid's batch sizes
    encs: tuple[int, ...]  # ... encoding sizes
    epochs: tuple[int, ...]  # ... epoch counts (the shorter read off the longer runs)
    grid_seeds: tuple[int, ...]  # runs per grid point
    train_subset: int | None  # None: all 60,000 training images
    baseline_epochs: int
    probe_epochs: int
    deep: Overrides  # what this profile changes of the deeper AE's recipe ({}: nothing)


LAB_GRID = {"batches": (16, 32, 64), "encs": (32, 64, 128)}
PROFILES = {
    "smoke": Settings((64,), (16, 32), (1, 2), (42,), 2000, 1, 1,
                      {"epochs": 1, "model_args.enc": 16}),
    "preview": Settings(**LAB_GRID, epochs=(3, 5), grid_seeds=(42,), train_subset=None,
                        baseline_epochs=20, probe_epochs=3, deep={"epochs": 5}),
    # The lab's grid exactly (one run per point, 40-epoch points read off the 60-epoch runs);
    # the beyond-the-lab runs as short as the preview's.
    "lab": Settings(**LAB_GRID, epochs=(40, 60), grid_seeds=(42,), train_subset=None,
                    baseline_epochs=20, probe_epochs=3, deep={"epochs": 5}),
    # One run per point leaves a point at the mercy of its initialisation: seed 42 alone put
    # enc 64 at 40 epochs 1.25x above the lab, where other seeds land 1.01-1.12x.
    "full": Settings(**LAB_GRID, epochs=(40, 60), grid_seeds=(42, 43, 44), train_subset=None,
                     baseline_epochs=20, probe_epochs=10, deep={}),
}  # fmt: skip
PROFILES["every"] = PROFILES["lab"]
# The lab's grid as the lab ran it, the beyond-the-lab runs as long as the full profile's.
PROFILES["complete"] = dataclasses.replace(PROFILES["full"], grid_seeds=(42,))
LAB_EPOCHS = (40, 60)
LAB_BASELINE = {"epochs": 20, "images": 10_000}  # the notebook's baseline: 20 epochs, 10,000
LAB_BEST_ENC32 = min(min(v) for (_, enc), v in AE_GRID.items() if enc == 32)
DEEP = "ae_deep"  # the deeper autoencoder's recipe (configs/recipes/)
# The notebook summed the test loss over 1,000 images and divided by 10,000.
TENFOLD = "the notebook summed over 1,000 test images and divided by 10,000"


class AEResult(Result):
    grid: list[dict[str, Any]]  # one row per (batch, enc, epochs): validation MSE, curve, run
    best: dict[str, Any]  # the grid point selected on validation MSE
    baseline_lab_protocol: float  # the notebook's baseline, tested on 1,000 random images
    selected_test: list[float]  # the selected config's test MSE per seed (all 10,000 images)
    baseline_test: list[float]  # the baseline's, per seed
    probe: dict[int, dict[str, Any]]  # enc -> linear-probe test accuracy and its source run
    deep: dict[str, Any]  # the deeper autoencoder at the smallest code
    epochs_grid: list[int]
    # enc -> the best linear code's MSE (principal components) on the grid's validation split
    # and on the test set: what an autoencoder of that code size has to beat
    pca: dict[int, dict[str, float]] = Field(default_factory=dict)


def _lab_point(
    batch: int, enc: int, epochs: int, grid_epochs: tuple[int, ...]
) -> tuple[float | None, int]:
    """The notebook's validation MSE for the same batch and enc, and its epochs: a profile with
    fewer epochs sets its shorter/longer point beside the lab's 40/60 (the table says so)."""
    lab_epochs = LAB_EPOCHS[grid_epochs.index(epochs)] if len(grid_epochs) == 2 else LAB_EPOCHS[-1]
    pair = AE_GRID.get((batch, enc))
    return (pair[LAB_EPOCHS.index(lab_epochs)] if pair else None), lab_epochs


def run(ctx: Context, p: Settings) -> AEResult:
    baseline, base_runs = _baseline(ctx, p)
    grid = _grid(ctx, p)
    best = min(grid, key=lambda r: r["val_mse"])
    selected = _selected(ctx, p, best)
    probe = _probe(ctx, p, grid)
    deep = _deep(ctx, p, grid)
    numbers = {
        "baseline.test_mse_lab_protocol": Number.of(
            baseline.final["test_loss"], "baseline test MSE, lab protocol", baseline, NAME
        ),
        "selected.test_mse": _per_seed(selected, "selected config, test MSE (10,000 images)"),
        "baseline.test_mse": _per_seed(base_runs, "baseline config, test MSE (10,000 images)"),
        "deep.test_mse": Number.of(
            deep["test"], f"deep AE enc {deep['enc']}, test MSE", deep.pop("_run"), NAME
        ),
    }
    selected_mse = numbers["selected.test_mse"].value
    return AEResult(
        grid=grid,
        best={k: best[k] for k in ("batch", "enc", "epochs", "val_mse", "val_mse_seeds")},
        baseline_lab_protocol=baseline.final["test_loss"],
        selected_test=selected_mse,
        baseline_test=numbers["baseline.test_mse"].value,
        probe=probe,
        deep=deep,
        epochs_grid=list(p.epochs),
        pca=_pca(ctx, p),
        numbers=numbers,
        compare=_comparisons(
            grid,
            baseline,
            selected_mse,
            numbers["baseline.test_mse"].value,
            shorter={
                "test_mse.baseline": _shorter(
                    p.baseline_epochs, LAB_BASELINE["epochs"], ctx.lab_subset(10_000),
                    LAB_BASELINE["images"],
                ),
                "test_mse.best": _shorter(
                    best["epochs"], best["lab_epochs"], p.train_subset, None
                ),
            },
        ),
    )  # fmt: skip


def _shorter(trained: int, lab: int, images: int | None, lab_images: int | None) -> str:
    """Why a test MSE trained on fewer epochs or images than the lab's is no measure of its
    number ("" when it is): 2 epochs of an autoencoder are far from its 60 (the MSE halves
    between the first and the second)."""
    parts = []
    if trained != lab:
        parts.append(f"this profile trains {epochs(trained)}, the lab {lab}")
    if images is not None and (lab_images is None or images < lab_images):
        lab_count = f"{lab_images:,}" if lab_images else "all"
        parts.append(f"on {images:,} training images, the lab on {lab_count}")
    return "; ".join(parts)


def _per_seed(runs: list[Run], label: str) -> Number:
    values = [r.final["test_loss"] for r in runs]
    return Number.of(values, label, runs[0], NAME, seeds=len(runs))


def _baseline(ctx: Context, p: Settings) -> tuple[Run, list[Run]]:
    """The notebook's baseline, on its protocol (no validation, a random 10,000 training
    images), tested on its 1,000 random test images (faithful) and on all 10,000 (corrected)."""

    def baseline(test_subset: int | None, seed: int) -> tuple[str, Overrides]:
        test = {"data.test_subset": test_subset} if test_subset else {}
        return f"baseline_test{test_subset or 'all'}/seed{seed}", {
            "model": "autoencoder",
            "model_args.enc": 32,
            "batch_size": 32,
            "epochs": p.baseline_epochs,
            "data.train_subset": ctx.lab_subset(10000),
            "data.val_fraction": 0.0,
            "seed": seed,
            **test,
        }

    faithful = ctx.train(NAME, *baseline(ctx.lab_subset(1000), 42))
    corrected = ctx.train_many(NAME, dict(baseline(None, s) for s in range(ctx.seeds)))
    return faithful, list(corrected.values())


def _subset(p: Settings) -> dict[str, Any]:
    return {"data.train_subset": p.train_subset} if p.train_subset else {}


def _grid(ctx: Context, p: Settings) -> list[dict[str, Any]]:
    """The grid, selected on validation MSE (the test set is not looked at)."""
    base = {"model": "autoencoder", "seed": 42, "data": {"val_fraction": 0.2}}
    if p.train_subset:
        base["data"]["train_subset"] = p.train_subset
    grid = {
        "batch_size": list(p.batches),
        "model_args.enc": list(p.encs),
        "epochs": list(p.epochs),
        "seed": list(p.grid_seeds),
    }
    by_point: dict[tuple[int, int, int], list[dict[str, Any]]] = {}
    for pt in study_sweep(ctx, NAME, "grid", base, grid=grid):
        key = tuple(pt["params"][k] for k in ("batch_size", "model_args.enc", "epochs"))
        by_point.setdefault(key, []).append(pt)
    table = []
    for (b, e, ep), runs in sorted(by_point.items()):
        runs.sort(key=lambda q: q["params"]["seed"])
        lab, lab_epochs = _lab_point(b, e, ep, p.epochs)
        curves = [[c["val_loss"] for c in q["curve"]][:ep] for q in runs]
        table.append(
            {
                "batch": b,
                "enc": e,
                "epochs": ep,
                "val_mse": fmean(q["value"] for q in runs),  # the mean over the grid's seeds
                "val_mse_seeds": [q["value"] for q in runs],
                "seeds": [q["params"]["seed"] for q in runs],
                "lab": lab,
                "lab_epochs": lab_epochs,
                "curve": [fmean(v) for v in zip(*curves, strict=True)],
                "run_dir": runs[0]["run_dir"],  # the first seed's, for figures and the probe
                "epochs_from": runs[0]["epochs_from"],
            }
        )
    return table


def _selected(ctx: Context, p: Settings, best: dict[str, Any]) -> list[Run]:
    """The selected config, trained again per seed and tested once on all 10,000 images."""
    recipe = {
        "model": "autoencoder",
        "model_args.enc": best["enc"],
        "batch_size": best["batch"],
        "epochs": best["epochs"],
        "data.val_fraction": 0.2,
        **_subset(p),
    }
    runs = {f"selected/seed{s}": {**recipe, "seed": s} for s in range(ctx.seeds)}
    return list(ctx.train_many(NAME, runs).values())


def _best_of(grid: list[dict[str, Any]], enc: int) -> dict[str, Any]:
    return min((r for r in grid if r["enc"] == enc), key=lambda r: r["val_mse"])


def _pca(ctx: Context, p: Settings) -> dict[int, dict[str, float]]:
    """Principal components fitted on the grid's training split (the same images, the same
    80/20 split), per encoding size and the deep model's."""
    cfg = ctx.config({"model": "autoencoder", "seed": 42, "data.val_fraction": 0.2, **_subset(p)})
    splits = prepare_splits(cfg, ctx.data, torch.device("cpu"))
    held_out = {name: splits[name].images for name in ("val", "test")}
    return pca.reconstruction_mse(splits["train"].images, held_out, sorted(p.encs))


def _probe(ctx: Context, p: Settings, grid: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """Beyond the lab: what a code is worth to a classifier (a linear probe on frozen codes)."""
    probe = {}
    for enc in p.encs:
        source = _best_of(grid, enc)
        run = ctx.train(
            NAME,
            f"probe/enc{enc}",
            {
                "model": "autoencoder_probe",
                "model_args.enc": enc,
                "init_from": source["run_dir"],
                "freeze": ["encoder"],
                "epochs": p.probe_epochs,
                "batch_size": 128,
                "data.val_fraction": 0.2,
                **_subset(p),
            },
        )
        probe[enc] = {"accuracy": run.final["test_accuracy"], "source": source["run_dir"]}
    return probe


def _widths(model: nn.Module) -> str:
    """The encoder's layer widths, '784-512-256-32'."""
    linears = [m for m in model.encoder.modules() if isinstance(m, nn.Linear)]
    return "-".join(str(n) for n in [linears[0].in_features] + [m.out_features for m in linears])


def _deep_name(deep: dict[str, Any]) -> str:
    """'784-512-256-32, linear code': what the deeper autoencoder's run built."""
    layers = deep.get("layers", f"784-512-256-{deep['enc']}")  # results saved before its layers
    return layers + (", linear code" if deep.get("linear_code") else ", ReLU code")


def _deep(ctx: Context, p: Settings, grid: list[dict[str, Any]]) -> dict[str, Any]:
    """Beyond the lab: a deeper autoencoder at the smallest code size, over seeds (its recipe:
    configs/recipes/ae_deep.toml)."""
    small = min(p.encs)
    recipe = overrides_tree(recipes.recipe(DEEP), p.deep, _subset(p))
    # A run directory keeps its config: the linear code's runs get their own
    code = "_linear" if recipe.get("model_args", {}).get("linear_code") else ""
    seeds = {f"deep_enc{small}{code}/seed{s}": {**recipe, "seed": s} for s in range(ctx.seeds)}
    runs = list(ctx.train_many(NAME, seeds).values())
    built = models.create(runs[0].config.model, **runs[0].config.model_args)
    shallow = _best_of(grid, small)
    return {
        "enc": runs[0].config.model_args["enc"],
        "layers": _widths(built),
        "linear_code": bool(runs[0].config.model_args.get("linear_code")),
        "test": [r.final["test_loss"] for r in runs],
        "epochs": runs[0].config.epochs,
        "shallow_val": shallow["val_mse"],
        "shallow_epochs": shallow["epochs"],
        "_run": runs[0],  # for the number's provenance; not saved
    }


def _comparisons(
    grid: list[dict[str, Any]],
    baseline: Run,
    best_mse: list[float],
    base_mse: list[float],
    shorter: dict[str, str],
) -> dict[str, Comparison]:
    """Each lab number against ours; `shorter`: why a test MSE is not comparable (its run
    shorter than the lab's), by key, "" where it is."""
    out = {}
    for r in grid:
        if r["lab"] is None:
            continue
        key = f"val_mse.b{r['batch']}.e{r['enc']}.ep{r['lab_epochs']}"
        if r["epochs"] != r["lab_epochs"]:
            why = f"this profile trains {epochs(r['epochs'])}, the lab {r['lab_epochs']}"
            out[key] = Comparison.not_comparable(why, faithful=fmt(r["val_mse"]))
            continue
        out[key] = compare(
            NAME,
            key,
            r["val_mse"],
            tolerance=0.2,
            relative=True,
            why=_spread_note(grid, r),
            explain_match=False,
            faithful=fmt(r["val_mse"]),
        )
    tests = {
        "test_mse.best": (fmean(best_mse), {"faithful": "= corrected"}, best_mse),
        "test_mse.baseline": (
            baseline.final["test_loss"],
            {"faithful": fmt(baseline.final["test_loss"])},
            base_mse,
        ),
    }
    for key, (ours, shown, seeds) in tests.items():
        if shorter.get(key):
            out[key] = Comparison.not_comparable(shorter[key], **shown, corrected=mean_std(seeds))
        else:
            out[key] = test_mse_comparison(key, ours, **shown, corrected=mean_std(seeds))
    return out


def test_mse_comparison(key: str, ours: float, **shown: Any) -> Comparison:
    """A test MSE against the lab's: the ratio measured, put down to the lab's /10,000 slip
    (its number about a tenth of the true one) only when the ratio is near 10."""
    return compare(NAME, key, ours, tolerance=0.3, relative=True, slip=(10.0, TENFOLD), **shown)


def _spread_note(table: list[dict[str, Any]], point: dict[str, Any]) -> str:
    """Why a grid point can miss: the lab's numbers are single runs. How much the point's
    (batch, enc) moves between its two epoch counts, in the lab's table and in ours, against
    the most any pair moves, says how much one of its numbers is worth."""

    def spread(values: list[float]) -> float:
        return max(values) / min(values) - 1

    key = (point["batch"], point["enc"])
    ours = spread([r["val_mse"] for r in table if (r["batch"], r["enc"]) == key])
    lab = spread(list(AE_GRID[key]))
    others = max(spread(list(v)) for k, v in AE_GRID.items() if k != key)
    runs = len(point.get("seeds", [])) or 1
    ours_is = "one run" if runs == 1 else f"the mean of {runs} seeds"
    return (
        f"the lab's numbers are one run per point, ours {ours_is}: between 40 and 60 epochs "
        f"this batch and enc moves by {lab:.0%} in the lab's table (any other pair at most "
        f"{others:.0%}), by {ours:.0%} in ours"
    )


def draw(result: AEResult, canvas: Canvas) -> list[Figure]:
    return [
        _figure_reconstructions(canvas, result.grid),
        _figure_curves(canvas, result.grid),
        _figure_probe(canvas, result.probe, result.grid),
    ]


def _figure_reconstructions(ctx: Canvas, table: list[dict[str, Any]]) -> Figure:
    images = ctx.data.test_images[:10]
    rows = {"input": images.numpy()}
    for enc in sorted({r["enc"] for r in table}):
        trained = load_trained(_best_of(table, enc)["run_dir"])
        rows[f"enc {enc}"] = trained.predict(images).squeeze(1).numpy()
    plot = figures.image_grid(ctx.figure_path("ae_reconstructions"), rows)
    return Figure.of(
        plot,
        "Ten test digits and their reconstructions by the best "
        "run of each encoding size (selected on validation).",
    )


def _figure_curves(ctx: Canvas, table: list[dict[str, Any]]) -> Figure:
    longest = max(r["epochs"] for r in table)
    series = {
        f"batch {r['batch']}, enc {r['enc']}": r["curve"] for r in table if r["epochs"] == longest
    }
    plot = figures.curves(
        ctx.figure_path("ae_val_curves"),
        series,
        "epoch",
        "validation MSE per pixel",
        "Autoencoder grid: validation curves",
        logy=True,
    )
    return Figure.of(
        plot,
        "Validation MSE per epoch for every batch size and "
        "encoding size (the shorter-epoch grid points are these curves read earlier).",
    )


def _figure_probe(ctx: Canvas, probe: dict[int, dict], table: list[dict]) -> Figure:
    encs = sorted(probe)
    best_mse = [min(r["val_mse"] for r in table if r["enc"] == e) for e in encs]
    plot = figures.bars(
        ctx.figure_path("ae_probe"),
        [f"enc {e}" for e in encs],
        {"linear-probe test accuracy": [probe[e]["accuracy"] for e in encs]},
        "accuracy",
        "What the code keeps: a linear classifier on frozen codes",
        ylim=(0.5, 1.0),
    )
    return Figure.of(
        plot,
        "Test accuracy of logistic regression on each encoding "
        f"size's frozen codes (best validation MSE per size: "
        f"{', '.join(fmt(m) for m in best_mse)}).",
    )


def _what_matters(grid: list[dict[str, Any]]) -> str:
    """Which of the grid's settings moves the validation MSE most, measured: for each, the
    ratio of its worst to its best level's mean MSE over the other settings."""
    names = {"enc": "the encoding size", "batch": "the batch size", "epochs": "the epoch count"}
    effects = {}
    for key in names:
        levels = sorted({r[key] for r in grid})
        if len(levels) > 1:
            means = [fmean(r["val_mse"] for r in grid if r[key] == v) for v in levels]
            effects[key] = max(means) / min(means)
    if not effects:
        return ""
    ranked = sorted(effects, key=effects.__getitem__, reverse=True)
    said = ", ".join(f"{names[k]} {effects[k]:.2f}x" for k in ranked)
    fixed = [names[k] for k in names if k not in effects]
    rest = f" ({' and '.join(fixed)} not varied in this profile)" if fixed else ""
    return (
        f"Worst over best level's mean validation MSE, over the other settings: {said}{rest}; "
        f"{names[ranked[0]]} matters most here."
    )


def _deep_paragraph(deep: dict[str, Any]) -> str:
    """The deeper autoencoder against the grid's best at its code size, each with its epochs
    (the short profiles train it for fewer), and the ratio's direction in words."""
    ours, shallow = fmean(deep["test"]), deep["shallow_val"]
    trained = f", trained for {epochs(deep['epochs'])}," if "epochs" in deep else ""
    grid_epochs = f" after {epochs(deep['shallow_epochs'])}" if "shallow_epochs" in deep else ""
    text = (
        f"Beyond the lab: a deeper autoencoder ({_deep_name(deep)}) at the same code size"
        f"{trained} reaches test MSE {mean_std(deep['test'])}, {_than(ours, shallow)} the "
        f"validation MSE of our grid's best enc-{deep['enc']} model{grid_epochs} "
        f"({fmt(shallow)}; {ours / shallow:.2f}x)"
    )
    if deep["enc"] == 32:
        text += (
            f" and {_than(ours, LAB_BEST_ENC32)} the lab's best enc-32 one ({LAB_BEST_ENC32}; "
            f"{ours / LAB_BEST_ENC32:.2f}x)"
        )
    return text + (
        ". Test and validation images come from one distribution, so the two compare only "
        "roughly; the principal components give a test-set reference. The last table gives a "
        "linear probe's accuracy on each encoding size's frozen codes."
    )


def _val_mse(point: dict[str, Any]) -> str:
    """A grid point's validation MSE: its mean ± std over the grid's seeds where it has
    several (results saved before the seeds were kept have the mean alone)."""
    seeds = point.get("val_mse_seeds", [])
    return mean_std(seeds) if len(seeds) > 1 else fmt(point["val_mse"])


def _than(ours: float, other: float) -> str:
    return "lower than" if ours < other else "no lower than"


def section(result: AEResult, figs: list[Figure]) -> Section:
    best, deep = result.best, result.deep
    printed = {k: float(lab_value(NAME, f"test_mse.{k}")) for k in ("best", "baseline")}
    paragraphs = [
        f"Selected on validation: batch {best['batch']}, encoding size {best['enc']}, "
        f"{epochs(best['epochs'])} (validation MSE {_val_mse(best)}). "
        + _what_matters(result.grid),
        f"The lab reported test losses of {printed['best']:.6f} (selected) and "
        f"{printed['baseline']:.6f} (baseline). The notebook summed the loss over 1,000 sampled "
        "test images and divided by 10,000, so both are 10x too small; the per-pixel MSE it "
        f"meant is about {10 * printed['best']:.5f} and {10 * printed['baseline']:.4f}. Ours "
        "are per-pixel MSEs on all 10,000 test images.",
        _deep_paragraph(deep),
    ]
    if result.pca:
        paragraphs.append(_against_pca(result))
    probe_table = Table(
        ["encoding size", "linear-probe test accuracy"],
        [[enc, v["accuracy"]] for enc, v in sorted(result.probe.items())],
    )
    tables = [_grid_table(result.grid), _test_table(result, printed), probe_table]
    if result.pca:
        tables.insert(2, _pca_table(result))
    return Section(EXPERIMENT.title, QUESTION, paragraphs, tables, figs)


def _grid_table(grid: list[dict[str, Any]]) -> Table:
    rows = [
        [
            r["batch"],
            r["enc"],
            r["epochs"],
            _val_mse(r),
            r["lab_epochs"],
            r["lab"],
            (r["val_mse"] / r["lab"]) if r["lab"] else None,
        ]
        for r in grid
    ]
    return Table(
        ["batch", "enc", "epochs", "val MSE (ours)", "lab epochs", "val MSE (lab)", "ours / lab"],
        rows,
        "The grid on the seeded 80/20 split; validation MSE per pixel"
        + (
            f", mean ± std over seeds {', '.join(map(str, grid[0]['seeds']))}"
            if len(grid[0].get("seeds", [])) > 1
            else ", one run (seed 42) per point"
        )
        + ". Where our epochs differ "
        "from the lab's (preview and smoke profiles), the ratio compares unequal training: only "
        "the trend is comparable.",
    )


def _against_pca(result: AEResult) -> str:
    """The autoencoders against the best linear code of their size, in words that follow the
    numbers."""
    ratios = {
        enc: _best_of(result.grid, enc)["val_mse"] / m["val"] for enc, m in result.pca.items()
    }
    worse = [enc for enc, r in ratios.items() if r > 1]
    deep = result.deep
    deep_ratio = fmean(deep["test"]) / result.pca[deep["enc"]]["test"]
    text = (
        "Against the best linear code (the training images' principal components, as many as "
        "the code is wide), the lab's autoencoder at its best grid point reaches "
        + ", ".join(f"{r:.2f}x (enc {e})" for e, r in ratios.items())
        + " the linear code's validation MSE. "
    )
    if worse:
        text += f"At enc {', '.join(map(str, worse))} it does worse than that projection. "
    else:
        text += "It beats the linear code at every size. "
    return text + (
        f"The deeper autoencoder at enc {deep['enc']} reaches {deep_ratio:.2f}x the principal "
        f"components' test MSE ({fmt(result.pca[deep['enc']]['test'])})."
    )


def _pca_table(result: AEResult) -> Table:
    rows = [
        [
            enc,
            _best_of(result.grid, enc)["val_mse"],
            m["val"],
            _best_of(result.grid, enc)["val_mse"] / m["val"],
            m["test"],
        ]
        for enc, m in sorted(result.pca.items())
    ]
    return Table(
        [
            "enc",
            "autoencoder, best val MSE",
            "linear code (PCA), val MSE",
            "autoencoder / PCA",
            "PCA, test MSE",
        ],
        rows,
        "Per-pixel MSE; the principal components are fitted on the grid's training split, the "
        "autoencoder's row is its best grid point at that code size.",
    )


def _test_table(result: AEResult, printed: dict[str, float]) -> Table:
    best = result.best
    return Table(
        ["config", "lab (as printed)", "lab (corrected /1,000)", "ours, test MSE"],
        [
            [
                f"selected: batch {best['batch']}, enc {best['enc']}, {best['epochs']} ep",
                printed["best"],
                10 * printed["best"],
                mean_std(result.selected_test),
            ],
            [
                "baseline: batch 32, enc 32, 20 ep on 10,000 images",
                printed["baseline"],
                10 * printed["baseline"],
                mean_std(result.baseline_test),
            ],
        ],
        "Test MSE per pixel on all 10,000 test images, mean ± std over seeds",
    )


EXPERIMENT = Experiment(
    name=NAME,
    title="3.1 Q1 — Autoencoder reconstruction",
    question=QUESTION,
    result_type=AEResult,
    run=run,
    section=section,
    draw=draw,
    profiles=PROFILES,
)
