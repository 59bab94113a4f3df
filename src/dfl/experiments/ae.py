"""Lab 3.1 Q1: image reconstruction with a dense autoencoder, and what tuning buys.

Faithful: the notebook's baseline (enc 32, batch 32, 20 epochs, random 10,000 train / 1,000
test images) and its grid batch x enc x epochs on the seeded 80/20 split of all 60,000
training images, selected on validation MSE. The notebook's two test figures were divided by
10,000 instead of 1,000 (10x too small); ours are per-pixel MSE, correctly normalised, on the
full 10,000 test images. Beyond: a linear probe on the codes per encoding size, and a deeper
autoencoder at the smallest code size.
"""

from __future__ import annotations

from statistics import fmean
from typing import Any

import torch
from safetensors.torch import load_file

from dfl import models
from dfl.data.batches import to_input
from dfl.experiments import TITLES
from dfl.experiments.base import Canvas, Context, number, study_sweep
from dfl.experiments.lab_numbers import AE_GRID
from dfl.report import figures
from dfl.report.document import Figure, Section, Table, fmt, mean_std
from dfl.train import WEIGHTS

NAME = "ae"
TITLE = TITLES[NAME]
QUESTION = (
    "Conduct image reconstruction on MNIST using an autoencoder. Tune the number of neurons in "
    "the hidden layer (encoding dim) and the number of training epochs to obtain good "
    "reconstruction results. Can you improve the performance of the given model?"
)

PROFILE = {
    "smoke": {
        "batches": [64],
        "encs": [16, 32],
        "epochs": [1, 2],
        "grid_seeds": [42],
        "train_subset": 2000,
        "baseline_epochs": 1,
        "probe_epochs": 1,
        "deep_epochs": 1,
    },
    "preview": {
        "batches": [16, 32, 64],
        "encs": [32, 64, 128],
        "epochs": [3, 5],
        "grid_seeds": [42],
        "train_subset": None,
        "baseline_epochs": 20,
        "probe_epochs": 3,
        "deep_epochs": 5,
    },
    # The lab's grid exactly (one run per point, 40-epoch points read off the 60-epoch runs);
    # the beyond-the-lab runs as short as the preview's.
    "lab": {
        "batches": [16, 32, 64],
        "encs": [32, 64, 128],
        "epochs": [40, 60],
        "grid_seeds": [42],
        "train_subset": None,
        "baseline_epochs": 20,
        "probe_epochs": 3,
        "deep_epochs": 5,
    },
    "full": {
        "batches": [16, 32, 64],
        "encs": [32, 64, 128],
        "epochs": [40, 60],
        # One run per point leaves a point at the mercy of its initialisation: seed 42 alone
        # put enc 64 at 40 epochs 1.25x above the lab, where other seeds land 1.01-1.12x.
        "grid_seeds": [42, 43, 44],
        "train_subset": None,
        "baseline_epochs": 20,
        "probe_epochs": 10,
        "deep_epochs": 60,
    },
}
PROFILE["every"] = PROFILE["lab"]
LAB_EPOCHS = (40, 60)
LAB_BEST_ENC32 = min(min(v) for (_, enc), v in AE_GRID.items() if enc == 32)  # 0.012707


def _lab_point(
    batch: int, enc: int, epochs: int, grid_epochs: list[int]
) -> tuple[float | None, int]:
    """The notebook's validation MSE for the same batch and enc, and its epochs: a profile with
    fewer epochs sets its shorter/longer point beside the lab's 40/60 (the table says so)."""
    lab_epochs = LAB_EPOCHS[grid_epochs.index(epochs)] if len(grid_epochs) == 2 else LAB_EPOCHS[-1]
    pair = AE_GRID.get((batch, enc))
    return (pair[LAB_EPOCHS.index(lab_epochs)] if pair else None), lab_epochs


def run(ctx: Context) -> dict[str, Any]:
    p = PROFILE[ctx.profile]
    subset = {"data.train_subset": p["train_subset"]} if p["train_subset"] else {}

    # The notebook's baseline, on its protocol (no validation, a random 10,000 training images),
    # tested on its 1,000 random test images (faithful) and on all 10,000 (corrected).
    def baseline_run(test_subset: int | None, seed: int):
        test = {"data.test_subset": test_subset} if test_subset else {}
        return ctx.train(
            NAME,
            f"baseline_test{test_subset or 'all'}/seed{seed}",
            {
                "model": "autoencoder",
                "model_args.enc": 32,
                "batch_size": 32,
                "epochs": p["baseline_epochs"],
                "data.train_subset": ctx.lab_subset(10000),
                "data.val_fraction": 0.0,
                "seed": seed,
                **test,
            },
        )

    baseline = baseline_run(ctx.lab_subset(1000), 42)
    base_runs = [baseline_run(None, s) for s in range(ctx.seeds)]

    # The grid, selected on validation MSE (the test set is not looked at).
    base = {"model": "autoencoder", "seed": 42, "data": {"val_fraction": 0.2}}
    if p["train_subset"]:
        base["data"]["train_subset"] = p["train_subset"]
    grid = {
        "batch_size": p["batches"],
        "model_args.enc": p["encs"],
        "epochs": p["epochs"],
        "seed": p["grid_seeds"],
    }
    by_point: dict[tuple[int, int, int], list[dict[str, Any]]] = {}
    for pt in study_sweep(ctx, NAME, "grid", base, grid=grid):
        key = tuple(pt["params"][k] for k in ("batch_size", "model_args.enc", "epochs"))
        by_point.setdefault(key, []).append(pt)
    table = []
    for (b, e, ep), runs in sorted(by_point.items()):
        runs.sort(key=lambda q: q["params"]["seed"])
        lab, lab_epochs = _lab_point(b, e, ep, p["epochs"])
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
    best = min(table, key=lambda r: r["val_mse"])

    # The selected config, trained again per seed and tested once on all 10,000 test images.
    def tested(key: str, enc: int, batch: int, epochs: int, seed: int):
        return ctx.train(
            NAME,
            f"{key}/seed{seed}",
            {
                "model": "autoencoder",
                "model_args.enc": enc,
                "batch_size": batch,
                "epochs": epochs,
                "data.val_fraction": 0.2,
                "seed": seed,
                **subset,
            },
        )

    seeds = range(ctx.seeds)
    best_runs = [tested("selected", best["enc"], best["batch"], best["epochs"], s) for s in seeds]
    best_mse = [r.final["test_loss"] for r in best_runs]
    base_mse = [r.final["test_loss"] for r in base_runs]

    # Beyond the lab: what a code is worth to a classifier, and a deeper net at enc 32.
    probe = {}
    for enc in p["encs"]:
        source = min((r for r in table if r["enc"] == enc), key=lambda r: r["val_mse"])
        run = ctx.train(
            NAME,
            f"probe/enc{enc}",
            {
                "model": "autoencoder_probe",
                "model_args.enc": enc,
                "init_from": source["run_dir"],
                "freeze": ["encoder"],
                "epochs": p["probe_epochs"],
                "batch_size": 128,
                "data.val_fraction": 0.2,
                **subset,
            },
        )
        probe[enc] = {"accuracy": run.final["test_accuracy"], "source": source["run_dir"]}
    small = min(p["encs"])
    deep_runs = [
        ctx.train(
            NAME,
            f"deep_enc{small}/seed{s}",
            {
                "model": "autoencoder_deep",
                "model_args.enc": small,
                "batch_size": 64,
                "epochs": p["deep_epochs"],
                "data.val_fraction": 0.2,
                "restore_best": True,
                "seed": s,
                **subset,
            },
        )
        for s in seeds
    ]
    shallow_small = min((r for r in table if r["enc"] == small), key=lambda r: r["val_mse"])
    deep_mse = [r.final["test_loss"] for r in deep_runs]

    numbers = {
        "baseline.test_mse_lab_protocol": number(
            baseline.final["test_loss"], "baseline test MSE, lab protocol", baseline, NAME
        ),
        "selected.test_mse": number(
            best_mse,
            "selected config, test MSE (10,000 images)",
            best_runs[0],
            NAME,
            seeds=len(best_runs),
        ),
        "baseline.test_mse": number(
            base_mse,
            "baseline config, test MSE (10,000 images)",
            base_runs[0],
            NAME,
            seeds=len(base_runs),
        ),
        "deep.test_mse": number(deep_mse, f"deep AE enc {small}, test MSE", deep_runs[0], NAME),
    }
    compare = {}
    for r in table:
        if r["lab"] is not None:
            compare[f"val_mse.b{r['batch']}.e{r['enc']}.ep{r['lab_epochs']}"] = _compare_val(
                r["val_mse"], r["lab"], r["epochs"], r["lab_epochs"], _spread_note(table, r)
            )
    compare["test_mse.best"] = {
        "faithful": "= corrected",
        "corrected": mean_std(best_mse),
        "verdict": "differs ~10x",
        "why": "the notebook summed over 1,000 test images and divided by 10,000",
    }
    compare["test_mse.baseline"] = {
        "faithful": fmt(baseline.final["test_loss"]),
        "corrected": mean_std(base_mse),
        "verdict": "differs ~10x",
        "why": "the notebook summed over 1,000 test images and divided by 10,000",
    }
    return {
        "grid": table,
        "best": {k: best[k] for k in ("batch", "enc", "epochs", "val_mse")},
        "baseline_lab_protocol": baseline.final["test_loss"],
        "selected_test": best_mse,
        "baseline_test": base_mse,
        "probe": probe,
        "deep": {"enc": small, "test": deep_mse, "shallow_val": shallow_small["val_mse"]},
        "epochs_grid": p["epochs"],
        "numbers": numbers,
        "compare": compare,
    }


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


def _compare_val(
    ours: float, lab: float, epochs: int, lab_epochs: int, why: str = ""
) -> dict[str, Any]:
    if epochs != lab_epochs:
        return {
            "faithful": fmt(ours),
            "corrected": None,
            "verdict": f"not comparable: this profile trains {epochs} epochs, the lab {lab_epochs}",
        }
    within = abs(ours - lab) / lab <= 0.2
    return {
        "faithful": fmt(ours),
        "corrected": None,
        "verdict": "reproduced (within 20%)" if within else f"differs ({ours / lab:.2f}x)",
        "why": "" if within else why,
    }


def draw(result: dict[str, Any], canvas: Canvas) -> list[dict[str, str]]:
    table = result["grid"]
    return [
        _figure_reconstructions(canvas, table),
        _figure_curves(canvas, table),
        _figure_probe(canvas, {int(k): v for k, v in result["probe"].items()}, table),
    ]


def _figure_reconstructions(ctx: Canvas, table: list[dict[str, Any]]) -> dict[str, str]:
    images = ctx.data.test_images[:10]
    x = to_input(images)
    rows = {"input": images.numpy()}
    for enc in sorted({r["enc"] for r in table}):
        r = min((r for r in table if r["enc"] == enc), key=lambda r: r["val_mse"])
        model = models.create("autoencoder", enc=enc)
        model.load_state_dict(load_file(f"{r['run_dir']}/{WEIGHTS}"))
        with torch.no_grad():
            rows[f"enc {enc}"] = model.eval()(x).squeeze(1).numpy()
    path = figures.image_grid(ctx.figure_path("ae_reconstructions"), rows)
    return {
        "path": path,
        "caption": "Ten test digits and their reconstructions by the best "
        "run of each encoding size (selected on validation).",
    }


def _figure_curves(ctx: Canvas, table: list[dict[str, Any]]) -> dict[str, str]:
    longest = max(r["epochs"] for r in table)
    series = {
        f"batch {r['batch']}, enc {r['enc']}": r["curve"] for r in table if r["epochs"] == longest
    }
    path = figures.curves(
        ctx.figure_path("ae_val_curves"),
        series,
        "epoch",
        "validation MSE per pixel",
        "Autoencoder grid: validation curves",
        logy=True,
    )
    return {
        "path": path,
        "caption": "Validation MSE per epoch for every batch size and "
        "encoding size (the shorter-epoch grid points are these curves read earlier).",
    }


def _figure_probe(ctx: Canvas, probe: dict[int, dict], table: list[dict]) -> dict[str, str]:
    encs = sorted(probe)
    best_mse = [min(r["val_mse"] for r in table if r["enc"] == e) for e in encs]
    path = figures.bars(
        ctx.figure_path("ae_probe"),
        [f"enc {e}" for e in encs],
        {"linear-probe test accuracy": [probe[e]["accuracy"] for e in encs]},
        "accuracy",
        "What the code keeps: a linear classifier on frozen codes",
        ylim=(0.5, 1.0),
    )
    return {
        "path": path,
        "caption": "Test accuracy of logistic regression on each encoding "
        f"size's frozen codes (best validation MSE per size: "
        f"{', '.join(fmt(m) for m in best_mse)}).",
    }


def section(result: dict[str, Any]) -> Section:
    grid = result["grid"]
    rows = [
        [
            r["batch"],
            r["enc"],
            r["epochs"],
            mean_std(r["val_mse_seeds"]) if len(r.get("val_mse_seeds", [])) > 1 else r["val_mse"],
            r["lab_epochs"],
            r["lab"],
            (r["val_mse"] / r["lab"]) if r["lab"] else None,
        ]
        for r in grid
    ]
    grid_table = Table(
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
    best = result["best"]
    test_table = Table(
        ["config", "lab (as printed)", "lab (corrected /1,000)", "ours, test MSE"],
        [
            [
                f"selected: batch {best['batch']}, enc {best['enc']}, {best['epochs']} ep",
                0.000227,
                0.00227,
                mean_std(result["selected_test"]),
            ],
            [
                "baseline: batch 32, enc 32, 20 ep on 10,000 images",
                0.001470,
                0.0147,
                mean_std(result["baseline_test"]),
            ],
        ],
        "Test MSE per pixel on all 10,000 test images, mean ± std over seeds",
    )
    probe_table = Table(
        ["encoding size", "linear-probe test accuracy"],
        [
            [enc, v["accuracy"]]
            for enc, v in sorted(result["probe"].items(), key=lambda kv: int(kv[0]))
        ],
    )
    deep = result["deep"]
    deep_mean = sum(deep["test"]) / len(deep["test"])
    paragraphs = [
        f"Selected on validation: batch {best['batch']}, encoding size {best['enc']}, "
        f"{best['epochs']} epochs (validation MSE {fmt(best['val_mse'])}). The encoding size "
        "dominates: each doubling of the code cuts the error by a large factor, while batch "
        "size and the last epochs matter little.",
        "The lab reported test losses of 0.000227 (selected) and 0.001470 (baseline). The "
        "notebook summed the loss over 1,000 sampled test images and divided by 10,000, so both "
        "are 10x too small; the per-pixel MSE it meant is about 0.00227 and 0.0147. Ours are "
        "per-pixel MSEs on all 10,000 test images.",
        f"Beyond the lab: a deeper autoencoder (784-512-256-{deep['enc']}) at the same code size "
        f"reaches test MSE {mean_std(deep['test'])}, against {fmt(deep['shallow_val'])} "
        f"validation MSE for the best lab model at enc {deep['enc']} in our grid "
        f"({deep['shallow_val'] / deep_mean:.2f}x) and the lab's best enc-32 validation MSE of "
        f"{LAB_BEST_ENC32} ({LAB_BEST_ENC32 / deep_mean:.2f}x). A linear probe on the frozen "
        "codes shows what reconstruction quality buys for classification: the probe's accuracy "
        "per encoding size is in the last table.",
    ]
    figs = [Figure(f["path"], f["caption"]) for f in result["figures"]]
    return Section(TITLE, QUESTION, paragraphs, [grid_table, test_table, probe_table], figs)
