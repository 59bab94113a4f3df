"""Lab 3.3 Q2: Vision Transformers on MNIST.

Faithful: the notebook's seven configurations (dim, depth, heads, mlp_dim) with its protocol:
Adam 1e-3, ExponentialLR 0.95 per epoch, batch 128, full data, no validation; per
configuration test accuracy and loss, train accuracy (the gap shows overfitting), loss curves,
parameters, multiply-adds and seconds per epoch. Beyond: a modern ViT (patch 4, per-head
scale, augmentation, one-cycle schedule) selected on validation, over seeds, with attention
rollout maps of what it looks at.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from dfl import models
from dfl.data.batches import to_input
from dfl.experiments import TITLES
from dfl.experiments.base import Canvas, Context, Overrides, number
from dfl.experiments.lab_numbers import VIT_CONFIGS, lab_value
from dfl.models.vit import attention_rollout
from dfl.report import figures
from dfl.report.document import Figure, Section, Table, fmt, mean_std
from dfl.shapes import model_summary
from dfl.train import WEIGHTS

NAME = "vit"
TITLE = TITLES[NAME]
QUESTION = (
    "Train Vision Transformers of several sizes on MNIST and discuss performance, overfitting, "
    "training dynamics and computational cost."
)
BASE = (64, 6, 8, 128)

PROFILE = {  # preview: the base config briefly on all data, the others on a subset for 1 epoch;
    # lab: the base config on the lab's protocol (20 epochs, all data); every: all seven
    "smoke": {
        "base_epochs": 1,
        "base_subset": 2000,
        "other_epochs": 1,
        "other_subset": 1000,
        "others": [(32, 6, 8, 64)],
        "beyond_epochs": 1,
        "beyond_subset": 2000,
    },
    "preview": {
        "base_epochs": 2,
        "base_subset": None,
        "other_epochs": 1,
        "other_subset": 6000,
        "others": [c for c in VIT_CONFIGS if c != BASE],
        "beyond_epochs": 2,
        "beyond_subset": 12000,
    },
    "lab": {
        "base_epochs": 20,
        "base_subset": None,
        "other_epochs": 20,
        "other_subset": None,
        "others": [],
        "beyond_epochs": 2,
        "beyond_subset": 12000,
    },
    "every": {
        "base_epochs": 20,
        "base_subset": None,
        "other_epochs": 20,
        "other_subset": None,
        "others": [c for c in VIT_CONFIGS if c != BASE],
        "beyond_epochs": 2,
        "beyond_subset": 12000,
    },
    "full": {
        "base_epochs": 20,
        "base_subset": None,
        "other_epochs": 20,
        "other_subset": None,
        "others": [c for c in VIT_CONFIGS if c != BASE],
        "beyond_epochs": 60,
        "beyond_subset": None,
        # No torch.compile (measured with alternating repeats, benchmarks/RESULTS.md): since
        # the ViTs' token-wise linear layers run through oneDNN (`TokenLinear`), compiling
        # trains both ViTs slower on CPU (notebook 0.78-0.93x, modern 0.69-0.74x).
    },
}


def _key(cfg: tuple[int, int, int, int]) -> str:
    return "-".join(map(str, cfg))


def _epochs_subset(cfg: tuple[int, int, int, int], p: dict[str, Any]) -> tuple[int, int | None]:
    if cfg == BASE:
        return p["base_epochs"], p["base_subset"]
    return p["other_epochs"], p["other_subset"]


def _lab_overrides(cfg: tuple[int, int, int, int], p: dict[str, Any]) -> Overrides:
    """The notebook's protocol for one of its seven configurations."""
    dim, depth, heads, mlp = cfg
    epochs, subset = _epochs_subset(cfg, p)
    return {
        "model": "vit_lab",
        "model_args": {"dim": dim, "depth": depth, "heads": heads, "mlp_dim": mlp},
        "batch_size": 128,
        "epochs": epochs,
        "schedule.name": "exponential",
        "schedule.gamma": 0.95,
        "data.val_fraction": 0.0,
        "test_every_epoch": True,
        "seed": 0,
        **({"data.train_subset": subset} if subset else {}),
    }


def _beyond_overrides(seed: int, p: dict[str, Any]) -> Overrides:
    """A modern ViT, selected on validation (best epoch), tested once."""
    return {
        "model": "vit",
        "batch_size": 128,
        "epochs": p["beyond_epochs"],
        "optim.name": "adamw",
        "optim.lr": 0.002,
        "optim.weight_decay": 0.05,
        "schedule.name": "onecycle",
        "data.val_fraction": 0.1,
        "restore_best": True,
        "data.augment_shift": 2,
        "data.augment_rotate": 10,
        "seed": seed,
        **({"data.train_subset": p["beyond_subset"]} if p["beyond_subset"] else {}),
    }


def run(ctx: Context) -> dict[str, Any]:
    p = PROFILE[ctx.profile]
    configs = [BASE, *p["others"]]
    lab_runs = [(f"lab/{_key(cfg)}", _lab_overrides(cfg, p)) for cfg in configs]
    beyond_runs = [(f"beyond/seed{s}", _beyond_overrides(s, p)) for s in range(ctx.seeds)]
    # All of them are independent: with --jobs they train side by side.
    results = ctx.train_many(NAME, lab_runs + beyond_runs)
    lab, beyond = results[: len(configs)], results[len(configs) :]
    rows = []
    for cfg, run in zip(configs, lab, strict=True):
        dim, depth, heads, mlp = cfg
        epochs, subset = _epochs_subset(cfg, p)
        model = models.create("vit_lab", dim=dim, depth=depth, heads=heads, mlp_dim=mlp)
        summary = model_summary(model, (1, 28, 28))
        rows.append(
            {
                "config": list(cfg),
                "epochs": epochs,
                "subset": subset,
                "test_accuracy": run.final["test_accuracy"],
                "test_loss": run.final["test_loss"],
                "train_accuracy": run.history[-1]["train_accuracy"],
                "train_loss_curve": [h["train_loss"] for h in run.history],
                "test_loss_curve": [h["test_loss"] for h in run.history],
                "params": summary.params,
                "macs": summary.macs,
                "seconds_per_epoch": sum(h["seconds"] for h in run.history) / len(run.history),
                "lab": VIT_CONFIGS[cfg],
                "run_dir": str(run.run_dir),
                "_run": run,
            }
        )
    beyond_acc = [r.final["test_accuracy"] for r in beyond]

    base_row = rows[0]
    compare = {}
    for r in rows:
        same = r["epochs"] == 20 and r["subset"] is None
        compare[f"acc.{_key(tuple(r['config']))}"] = {
            "faithful": fmt(r["test_accuracy"]),
            "corrected": None,
            "verdict": (
                (
                    "reproduced"
                    if abs(r["test_accuracy"] - r["lab"]) <= 0.005
                    else f"differs by {r['test_accuracy'] - r['lab']:+.4f}"
                )
                if same
                else f"not comparable: {r['epochs']} epoch(s)"
                + (f" on {r['subset']:,} images" if r["subset"] else "")
            ),
        }
    compare.update(_writeup_compare(base_row, beyond_acc))
    numbers = {
        f"lab.{_key(tuple(r['config']))}.test_accuracy": number(
            r["test_accuracy"], f"ViT {r['config']} test accuracy", r["_run"], NAME
        )
        for r in rows
    }
    numbers["beyond.test_accuracy"] = number(
        beyond_acc, "modern ViT, test accuracy", beyond[0], NAME, seeds=len(beyond)
    )
    for r in rows:
        r.pop("_run")
    return {
        "rows": rows,
        "beyond": beyond_acc,
        "beyond_epochs": p["beyond_epochs"],
        "rollout_from": str(beyond[0].run_dir),
        "numbers": numbers,
        "compare": compare,
    }


# The write-up's ViT numbers, in no printed output.
WRITEUP = {k: lab_value(NAME, f"writeup.{k}") for k in ("acc", "loss")}


def _writeup_compare(base: dict[str, Any], beyond_acc: list[float]) -> dict[str, Any]:
    """The write-up's 0.9834 / 0.0746 against our base configuration: no notebook output has
    them, and the base configuration (its first run printed 98.23%, loss 0.0828) is the run
    they most likely come from, so only a base run on the lab's protocol compares."""
    same = base["epochs"] == 20 and base["subset"] is None
    why = (
        "the write-up's number is in no printed notebook output; set beside the base "
        "configuration (64, 6, 8, 128), whose first run printed 0.9823 / 0.0828"
    )
    acc, loss = base["test_accuracy"], base["test_loss"]
    loss_within = abs(loss / WRITEUP["loss"] - 1) <= 0.2
    return {
        "writeup.acc": {
            "faithful": fmt(acc),
            "corrected": mean_std(beyond_acc),
            "verdict": _verdict(same, abs(acc - WRITEUP["acc"]) <= 0.005, acc - WRITEUP["acc"]),
            "why": why,
        },
        "writeup.loss": {
            "faithful": fmt(loss),
            "corrected": None,
            # The test loss rises after epoch 8-14 while accuracy holds: a loose tolerance.
            "verdict": _verdict(same, loss_within, loss - WRITEUP["loss"]),
            "why": why,
        },
    }


def _verdict(same_protocol: bool, within: bool, difference: float) -> str:
    if not same_protocol:
        return "not comparable: the base configuration trained shorter or on fewer images"
    return "reproduced" if within else f"differs by {difference:+.4f}"


def draw(result: dict[str, Any], canvas: Canvas) -> list[dict[str, str]]:
    return [
        _figure_curves(canvas, result["rows"]),
        _figure_rollout(canvas, Path(result["rollout_from"])),
    ]


def _discussion(rows: list[dict[str, Any]]) -> list[str]:
    """The lab's four points (performance, overfitting, training dynamics, cost), each stated
    from the measured rows."""
    name = lambda r: _key(tuple(r["config"]))  # noqa: E731
    best = max(rows, key=lambda r: r["test_accuracy"])
    worst = min(rows, key=lambda r: r["test_accuracy"])
    costly = max(rows, key=lambda r: r["macs"])
    cheap = min(rows, key=lambda r: r["macs"])
    gaps = [r["train_accuracy"] - r["test_accuracy"] for r in rows]
    # Where the test loss bottomed out, against where it ended.
    turns = [
        (min(range(len(t)), key=t.__getitem__) + 1, min(t), t[-1])
        for t in (r["test_loss_curve"] for r in rows)
    ]
    rising = [(ep, lo, end) for ep, lo, end in turns if end > 1.05 * lo]
    # Per 1,000 training images: the quick profile trains some configurations on a subset.
    per_k = {name(r): 1000 * r["seconds_per_epoch"] / (r["subset"] or 60000) for r in rows}
    fast, slow = min(per_k, key=per_k.get), max(per_k, key=per_k.get)
    if len(rows) == 1:  # the lab profile: the base configuration only
        return [
            f"Performance: {name(best)} ({best['params']:,} parameters, {best['macs']:,} "
            f"multiply-adds per image) reaches {fmt(best['test_accuracy'])} test accuracy, "
            f"{fmt(gaps[0])} below its train accuracy; {per_k[fast]:.2f} s per 1,000 training "
            "images. The other six configurations: `dfl reproduce --profile every`."
        ]
    return [
        f"Performance: test accuracy ranges from {fmt(worst['test_accuracy'])} ({name(worst)}, "
        f"{worst['params']:,} parameters) to {fmt(best['test_accuracy'])} ({name(best)}, "
        f"{best['params']:,} parameters)"
        + (
            f": {best['params'] / worst['params']:.0f}x the parameters buys "
            f"{best['test_accuracy'] - worst['test_accuracy']:.4f}."
            if best["params"] > worst["params"]
            else ": the smaller model is the better one here."
        ),
        f"Overfitting: train accuracy minus test accuracy ends between {fmt(min(gaps))} and "
        f"{fmt(max(gaps))}"
        + (" (above test accuracy in every configuration)" if min(gaps) > 0 else "")
        + (
            f", and in {len(rising)} of {len(rows)} the test loss ends above its minimum "
            f"(reached at epoch {min(t[0] for t in rising)}-{max(t[0] for t in rising)}; "
            f"the final test loss is {min(e / lo for _, lo, e in rising):.2f}-"
            f"{max(e / lo for _, lo, e in rising):.2f}x that minimum) while the train loss "
            "keeps falling: they grow more confident, on the digits they get wrong too."
            if rising
            else "."
        ),
        "Training dynamics: the exponential schedule shrinks the step by 5% per epoch "
        f"({0.95 ** (max(r['epochs'] for r in rows) - 1):.2f}x the first step by the last "
        "epoch), so late epochs refine rather than explore; the curves below show the train "
        "loss falling throughout and the test loss bottoming out early.",
        f"Computational cost: multiply-adds per image range from {cheap['macs']:,} "
        f"({name(cheap)}) to {costly['macs']:,} ({name(costly)}), "
        f"{costly['macs'] / cheap['macs']:.0f}x; training seconds per 1,000 images from "
        f"{per_k[fast]:.2f} ({fast}) to {per_k[slow]:.2f} ({slow}), "
        f"{per_k[slow] / per_k[fast]:.1f}x (wall time on the machine the report's environment "
        "names, with other runs possibly sharing it).",
    ]


def _figure_curves(ctx: Canvas, rows: list[dict]) -> dict[str, str]:
    series = {}
    for r in rows:
        if len(r["train_loss_curve"]) > 1:
            series[f"{_key(tuple(r['config']))} train"] = r["train_loss_curve"]
            series[f"{_key(tuple(r['config']))} test"] = r["test_loss_curve"]
    if not series:  # one-epoch profiles: plot the single points anyway
        series = {f"{_key(tuple(r['config']))} test": r["test_loss_curve"] for r in rows}
    path = figures.curves(
        ctx.figure_path("vit_loss_curves"),
        series,
        "epoch",
        "cross-entropy",
        "ViT (notebook form): train and test loss",
        logy=True,
    )
    return {
        "path": path,
        "caption": "Train and test loss per epoch for the notebook's ViT "
        "configurations (dim-depth-heads-mlp_dim).",
    }


@torch.no_grad()
def _figure_rollout(ctx: Canvas, run_dir) -> dict[str, str]:
    model = models.create("vit")
    model.load_state_dict(load_file(str(run_dir / WEIGHTS)))
    images = ctx.data.test_images[:8]
    maps = attention_rollout(model.eval(), to_input(images))  # (8, 28, 28)
    path = figures.image_grid(
        ctx.figure_path("vit_rollout"),
        {"test digits": images.numpy(), "attention rollout from the class token": maps.numpy()},
    )
    return {
        "path": path,
        "caption": "Attention rollout of the modern ViT: where the class "
        "token's prediction draws from, averaged over heads and chained through layers.",
    }


def section(result: dict[str, Any]) -> Section:
    rows = result["rows"]
    table = Table(
        [
            "dim-depth-heads-mlp",
            "epochs",
            "train images",
            "test accuracy",
            "lab",
            "test loss",
            "train accuracy",
            "parameters",
            "multiply-adds",
            "s / epoch",
        ],
        [
            [
                _key(tuple(r["config"])),
                r["epochs"],
                r["subset"] or 60000,
                r["test_accuracy"],
                r["lab"],
                r["test_loss"],
                r["train_accuracy"],
                r["params"],
                r["macs"],
                r["seconds_per_epoch"],
            ]
            for r in rows
        ],
        "The notebook's configurations on its protocol (Adam 1e-3, ExponentialLR "
        "0.95, batch 128, no validation)",
    )
    paragraphs = [
        *_discussion(rows),
        f"Beyond the lab: a ViT with 4x4 patches (49 tokens instead of 16), per-head scaling, "
        f"AdamW, a one-cycle schedule and random shifts and rotations, its epoch selected on a "
        f"validation split, reaches {mean_std(result['beyond'])} test accuracy after "
        f"{result['beyond_epochs']} epochs.",
        "The write-up's 0.9834 / 0.0746 appears in no printed notebook output; the notebook's "
        "own base-configuration result was 0.9822.",
    ]
    figs = [Figure(f["path"], f["caption"]) for f in result["figures"]]
    return Section(TITLE, QUESTION, paragraphs, [table], figs)
