"""Lab 3.1 Q2: a stacked autoencoder classifier, greedy layer-wise pretraining, fine-tuning.

Faithful: the notebook's three runs on its protocol (every phase draws fresh random 6,000
train / 1,000 test images, no validation). What the lab never measured, we do: accuracy
before fine-tuning (after pretraining + classifier) and after it, and the same network trained
end to end from random initialisation with the same total epoch budget. Corrected: the same
comparison on the full data, selecting the epoch on a validation split and testing once on all
10,000 test images, over several seeds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from statistics import fmean
from typing import Any

from safetensors.torch import load_file

from dfl.experiments import TITLES
from dfl.experiments.base import Canvas, Context, number
from dfl.report import figures
from dfl.report.document import Figure, Section, Table, mean_std
from dfl.train import WEIGHTS

NAME = "sae"
TITLE = TITLES[NAME]
QUESTION = (
    "Conduct image classification on MNIST using a stacked autoencoder. Are you able to obtain "
    "a better result by changing the size of the network architecture? What are the results "
    "before and after fine-tuning? What is the benefit of pretraining the network layer by layer?"
)


@dataclass(frozen=True)
class Variant:
    key: str
    label: str
    sizes: tuple[int, ...]
    batch: int
    pretrain: int  # epochs per layer
    classifier: int
    finetune: int
    lab: float | None = None  # the notebook's accuracy after fine-tuning

    @property
    def budget(self) -> int:
        """Total epochs of all phases: what the random-init network gets, end to end."""
        return self.pretrain * (len(self.sizes) - 1) + self.classifier + self.finetune


LAB_VARIANTS = [
    Variant("baseline", "784-256-64, batch 128, 10/10/20", (784, 256, 64), 128, 10, 10, 20, 0.926),
    Variant("long", "784-256-64, batch 64, 60/60/60", (784, 256, 64), 64, 60, 60, 60, 0.949),
    Variant("128", "784-128-64, batch 64, 60/60/60", (784, 128, 64), 64, 60, 60, 60, 0.954),
]

PROFILE = {  # epoch scale per lab variant (1.0 = the lab's epochs) and the full-data variant
    "smoke": {
        "lab": {"baseline": 0.1},
        "full": Variant("full", "784-256-64, batch 64, 1/1/1", (784, 256, 64), 64, 1, 1, 1),
    },
    "quick": {  # the baseline exactly; the 60/60/60 runs at a third of their epochs
        "lab": {"baseline": 1.0, "long": 1 / 3, "128": 1 / 3},
        "full": Variant("full", "784-256-64, batch 64, 3/3/6", (784, 256, 64), 64, 3, 3, 6),
    },
    "full": {
        "lab": {"baseline": 1.0, "long": 1.0, "128": 1.0},
        "full": Variant("full", "784-256-64, batch 64, 20/20/60", (784, 256, 64), 64, 20, 20, 60),
    },
}


def _scaled(v: Variant, scale: float) -> Variant:
    if scale == 1.0:
        return v
    s = lambda e: max(1, round(e * scale))  # noqa: E731
    return Variant(
        v.key,
        f"{v.label} (epochs x{scale:.2g})",
        v.sizes,
        v.batch,
        s(v.pretrain),
        s(v.classifier),
        s(v.finetune),
        v.lab,
    )


def _data_args(ctx: Context, protocol: str, seed: int, phase: int) -> list[str]:
    if protocol == "lab":  # a fresh random draw per phase, as the notebook did
        return [
            f"data.train_subset={ctx.lab_subset(6000)}",
            f"data.test_subset={ctx.lab_subset(1000)}",
            "data.val_fraction=0.0",
            f"data.subset_seed={seed * 100 + phase}",
        ]
    return ["data.val_fraction=0.2", "restore_best=true", *ctx.smoke_cap()]


def run_variant(ctx: Context, v: Variant, protocol: str, seed: int) -> dict[str, Any]:
    """Pretrain layer by layer, train the classifier, fine-tune; and a random-init twin."""
    base = [
        'model="stacked_autoencoder"',
        f"model_args.sizes={list(v.sizes)}",
        f"batch_size={v.batch}",
        'optim.name="sgd"',
        f"seed={seed}",
    ]
    root = f"{protocol}/{v.key}/seed{seed}"
    layers = len(v.sizes) - 1
    previous = None
    for k in range(layers):  # greedy: layer k rebuilds its input, every other part frozen
        others = [f"encoders.{j}" for j in range(layers) if j != k]
        others += [f"decoders.{j}" for j in range(layers) if j != k] + ["classifier"]
        args = [
            *base,
            'objective="layerwise"',
            f"layer={k}",
            "optim.lr=0.1",
            f"epochs={v.pretrain}",
            f"freeze={others}",
            "evaluate_test=false",
            *_data_args(ctx, protocol, seed, k),
        ]
        if previous:
            args.append(f'init_from="{previous.run_dir}"')
        previous = ctx.train(NAME, f"{root}/pretrain{k}", args)
        if k == 0:
            first_layer_mse = previous.history[-1]["train_loss"]
    # Classifier phase: the notebook froze only the bottom layer here.
    clf = ctx.train(
        NAME,
        f"{root}/classifier",
        [
            *base,
            "optim.lr=1.0",
            f"epochs={v.classifier}",
            'freeze=["encoders.0"]',
            f'init_from="{previous.run_dir}"',
            *_data_args(ctx, protocol, seed, layers),
        ],
    )
    ft = ctx.train(
        NAME,
        f"{root}/finetune",
        [
            *base,
            "optim.lr=1.0",
            f"epochs={v.finetune}",
            f'init_from="{clf.run_dir}"',
            *_data_args(ctx, protocol, seed, layers + 1),
        ],
    )
    scratch = ctx.train(
        NAME,
        f"{root}/random_init",
        [*base, "optim.lr=1.0", f"epochs={v.budget}", *_data_args(ctx, protocol, seed, layers + 2)],
    )
    metric = "val_accuracy" if protocol != "lab" else "train_accuracy"
    return {
        "first_layer_mse": first_layer_mse,
        "before": clf.final["test_accuracy"],
        "after": ft.final["test_accuracy"],
        "random": scratch.final["test_accuracy"],
        "curve_pretrained": [r[metric] for r in clf.history + ft.history],
        "curve_random": [r[metric] for r in scratch.history],
        "curve_metric": metric,
        "runs": {"finetune": str(ft.run_dir), "random_init": str(scratch.run_dir)},
        "_ft": ft,
        "_scratch": scratch,
    }


def _summarise(runs: list[dict[str, Any]]) -> dict[str, list[float]]:
    return {k: [r[k] for r in runs] for k in ("before", "after", "random", "first_layer_mse")}


def run(ctx: Context) -> dict[str, Any]:
    prof = PROFILE[ctx.profile]
    seeds = range(ctx.seeds)
    lab = {}
    numbers = {}
    for v in (_scaled(v, prof["lab"][v.key]) for v in LAB_VARIANTS if v.key in prof["lab"]):
        runs = [run_variant(ctx, v, "lab", s) for s in seeds]
        lab[v.key] = {
            "label": v.label,
            "lab": v.lab,
            "scale": prof["lab"][v.key],
            **_summarise(runs),
            "run_dirs": [r["runs"] for r in runs],
        }
        numbers[f"lab.{v.key}.after"] = number(
            lab[v.key]["after"],
            f"SAE {v.label}: test accuracy after fine-tuning (1,000 images)",
            runs[0]["_ft"],
            NAME,
            seeds=len(runs),
        )
    fv = prof["full"]
    full_runs = [run_variant(ctx, fv, "full", s) for s in seeds]
    full = {"label": fv.label, **_summarise(full_runs), "run_dirs": [r["runs"] for r in full_runs]}
    numbers["full.after"] = number(
        full["after"],
        "SAE on full data, after fine-tuning",
        full_runs[0]["_ft"],
        NAME,
        seeds=len(full_runs),
    )
    numbers["full.random"] = number(
        full["random"],
        "same network, random init, same budget",
        full_runs[0]["_scratch"],
        NAME,
        seeds=len(full_runs),
    )

    full["curves"] = {
        k: full_runs[0][k] for k in ("curve_pretrained", "curve_random", "curve_metric")
    }
    full["features_from"] = str(full_runs[0]["_ft"].run_dir)
    compare = {
        f"acc.{key}": {
            "faithful": mean_std(entry["after"]),
            "corrected": mean_std(full["after"]) if key == "baseline" else None,
            "verdict": _verdict(entry["after"], entry["lab"])
            if entry["scale"] == 1.0
            else f"not comparable: epochs x{entry['scale']:.2g} in this profile",
            "why": "1,000-image test subsets move in steps of 0.001 and differ per draw",
        }
        for key, entry in lab.items()
    }
    images = ctx.data.train_images.float().div(255).flatten(1)
    mean_image_mse = float(((images - images.mean(0)) ** 2).mean())
    return {
        "lab": lab,
        "full": full,
        "numbers": numbers,
        "compare": compare,
        "mean_image_mse": mean_image_mse,
    }


def _verdict(values: list[float], lab: float | None, tolerance: float = 0.015) -> str:
    mean = fmean(values)
    if lab is None:
        return "measured"
    return "reproduced" if abs(mean - lab) <= tolerance else f"differs by {mean - lab:+.3f}"


def draw(result: dict[str, Any], canvas: Canvas) -> list[dict[str, str]]:
    full = result["full"]
    return [
        _figure_before_after(canvas, result["lab"], full),
        _figure_curves(canvas, full),
        _figure_features(canvas, Path(full["features_from"])),
    ]


def _figure_before_after(ctx: Canvas, lab: dict, full: dict) -> dict[str, str]:
    groups = [f"lab: {v['label']}" for v in lab.values()] + [f"full data: {full['label']}"]
    entries = [*lab.values(), full]
    series = {
        "before fine-tuning": [fmean(e["before"]) for e in entries],
        "after fine-tuning": [fmean(e["after"]) for e in entries],
        "random init, same budget": [fmean(e["random"]) for e in entries],
    }
    low = min(min(s) for s in series.values())
    path = figures.bars(
        ctx.figure_path("sae_before_after"),
        groups,
        series,
        "test accuracy",
        "Stacked autoencoder: before / after fine-tuning vs random init",
        ylim=(max(0.0, low - 0.05), 1.0),
    )
    return {
        "path": path,
        "caption": "Test accuracy after pretraining + classifier (before "
        "fine-tuning), after fine-tuning, and for the same network trained from random "
        "initialisation with the same total number of epochs (means over seeds).",
    }


def _figure_curves(ctx: Canvas, full: dict) -> dict[str, str]:
    curves = full["curves"]
    path = figures.curves(
        ctx.figure_path("sae_curves"),
        {
            "pretrained: classifier then fine-tune": curves["curve_pretrained"],
            "random init": curves["curve_random"],
        },
        "epoch (after pretraining)",
        curves["curve_metric"].replace("_", " "),
        f"Full data, {full['label']}, seed 0",
    )
    return {
        "path": path,
        "caption": "Validation accuracy per epoch: the pretrained network "
        "(classifier phase then fine-tuning) against the randomly initialised one.",
    }


def _figure_features(ctx: Canvas, run_dir) -> dict[str, str]:
    weights = load_file(str(run_dir / WEIGHTS))["encoders.0.0.weight"][:16]  # (16, 784)
    images = weights.reshape(-1, 28, 28).numpy()
    path = figures.image_grid(
        ctx.figure_path("sae_features"),
        {"first-layer features (fine-tuned)": images[:8], "": images[8:16]},
        cmap="RdBu",
    )
    return {"path": path, "caption": "Sixteen first-layer encoder weights as 28x28 images."}


def section(result: dict[str, Any]) -> Section:
    lab, full = result["lab"], result["full"]
    rows = [
        [
            f"lab protocol: {v['label']}",
            v["lab"],
            mean_std(v["before"]),
            mean_std(v["after"]),
            mean_std(v["random"]),
        ]
        for v in lab.values()
    ]
    rows.append(
        [
            f"full data: {full['label']}",
            "n/a",  # the lab never trained on the full data
            mean_std(full["before"]),
            mean_std(full["after"]),
            mean_std(full["random"]),
        ]
    )
    table = Table(
        [
            "run",
            "lab (after FT)",
            "before fine-tuning",
            "after fine-tuning",
            "random init, same epochs",
        ],
        rows,
        "Test accuracy, mean ± std over seeds. Lab protocol: 1,000 random test images; "
        "full data: all 10,000, epoch selected on a 20% validation split.",
    )
    gain_ft = fmean(full["after"]) - fmean(full["before"])
    gain_pre = fmean(full["after"]) - fmean(full["random"])
    verdict = (
        "Here pretraining helped"
        if gain_pre > 0
        else "Here pretraining did not help: the randomly initialised network, given the same "
        "epochs end to end, is as good or better"
    )
    paragraphs = [
        f"Before fine-tuning (pretraining, then the classifier phase with the bottom layer "
        f"frozen) the full-data test accuracy is {fmean(full['before']):.4f}; fine-tuning every "
        f"layer brings it to {fmean(full['after']):.4f} ({gain_ft:+.4f}). Against the same sigmoid "
        f"network trained from random initialisation with the same total epochs, layer-wise "
        f"pretraining gives {gain_pre:+.4f}. {verdict}.",
        f"Why: with the lab's settings (plain SGD at learning rate 0.1, sigmoid units) the first "
        f"autoencoder layer ends its pretraining at reconstruction MSE "
        f"{fmean(full['first_layer_mse']):.4f}, where always answering the mean training image "
        f"scores {result['mean_image_mse']:.4f}: its code carries little class information, so "
        "the classifier on top learns little until fine-tuning trains the whole network. "
        "Greedy pretraining earned its reputation for deep sigmoid networks before ReLUs, "
        "good initialisation and adaptive optimisers made end-to-end training work.",
        "The notebook measured neither number. Its runs used 1,000-image test subsets, so their "
        "accuracies move in steps of 0.001 and differ between draws; our lab-protocol rows are "
        "means over seeds for that reason.",
    ]
    figs = [Figure(f["path"], f["caption"]) for f in result["figures"]]
    return Section(TITLE, QUESTION, paragraphs, [table], figs)
