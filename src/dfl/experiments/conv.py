"""Lab 3.2 Q1: convolution arithmetic. No training: the lab's matrix, kernel and stride through
`dfl.labtools.conv_arithmetic` (whose result equals torch's conv2d, a tested property)."""

from __future__ import annotations

import shlex
from typing import Any

import numpy as np

from dfl.experiments.comparison import compare_exact
from dfl.experiments.context import Context
from dfl.experiments.document import Figure, Section, Table
from dfl.experiments.experiment import Experiment, Number, Result
from dfl.labtools.conv_arithmetic import convolve2d

NAME = "conv"
QUESTION = (
    "Q1.1: Calculate the output of a convolution of X = [[2,5,4,1],[3,1,2,0],[4,5,7,1],[1,2,3,4]] "
    "with the 2x2 kernel K = [[1,0],[0,1]], no padding and stride 2. Q1.2: How do you in general "
    "determine the dimensionality of the output of a convolutional layer?"
)
X = [[2, 5, 4, 1], [3, 1, 2, 0], [4, 5, 7, 1], [1, 2, 3, 4]]
K = [[1, 0], [0, 1]]


class ConvResult(Result):
    lab: dict[str, Any]  # convolve2d's answer for the lab's X, K and stride
    uneven: dict[str, Any]  # a 5x5 input at stride 2: the formula's floor at work


def run(ctx: Context, settings: None) -> ConvResult:
    lab = convolve2d(np.array(X), np.array(K), stride=2)
    # The formula's corner case, for the report: a stride that does not divide evenly.
    uneven = convolve2d(np.arange(25).reshape(5, 5), np.array(K), stride=2)
    output = str(lab["output"])
    sizes = [d["output"] for d in lab["dimensions"]]  # per axis; the lab's one number is both
    command = [
        "dfl", "conv", "--input", "2 5 4 1; 3 1 2 0; 4 5 7 1; 1 2 3 4",
        "--kernel", "1 0; 0 1", "--stride", "2", "--explain",
    ]  # fmt: skip
    return ConvResult(
        lab=lab,
        uneven={"dimensions": uneven["dimensions"], "output": uneven["output"]},
        numbers={
            "output": Number(
                value=lab["output"], label="conv(X, K), stride 2", command=shlex.join(command)
            )
        },
        compare={
            "output": compare_exact(
                NAME,
                "output",
                lab["output"],
                why="the write-up's first sentence ('a 1x1 matrix with value 1') is wrong; its "
                "worked result is right",
                faithful=output,
                corrected=output,
            ),
            "size": compare_exact(
                NAME, "size", sizes[0] if len(set(sizes)) == 1 else sizes, faithful=sizes[0]
            ),
        },
    )


def section(result: ConvResult, figs: list[Figure]) -> Section:
    lab = result.lab
    windows = Table(
        ["output cell", "input rows", "input columns", "products", "sum"],
        [
            [str(w["out"]), str(w["rows"]), str(w["columns"]), str(w["products"]), w["sum"]]
            for w in lab["windows"]
        ],
        "Every window of the kernel over X (stride 2)",
    )
    dims = [*lab["dimensions"], *result.uneven["dimensions"]]
    formula = Table(
        ["case", "axis", "W", "K", "P", "S", "O = floor((W - K_eff + 2P)/S) + 1", "never covered"],
        [
            [
                "lab" if i < 2 else "5x5, stride 2",
                d["axis"],
                d["size"],
                d["kernel"],
                d["padding"],
                d["stride"],
                d["formula"],
                str(d["uncovered"]) or "none",
            ]
            for i, d in enumerate(dims)
        ],
    )
    paragraphs = [
        f"Q1.1: the output is {lab['output']}. Deep-learning convolution is cross-correlation: "
        "the kernel slides over the input without being flipped; each output is the sum of the "
        "element-wise products of the kernel and the window it covers. The write-up's first "
        "sentence ('a 1x1 matrix with the value 1') is wrong; its later result is right.",
        "Q1.2: per spatial dimension, O = floor((W - K_eff + 2P) / S) + 1 with K_eff = "
        "D(K - 1) + 1 for dilation D. Here (4 - 2 + 0)/2 + 1 = 2, so the output is 2x2. When "
        "W - K_eff + 2P is not divisible by S the floor drops the last rows or columns: the "
        "5x5 example leaves its last row and column unread. The number of output channels is "
        "the number of kernels. `dfl shapes` applies the same formula layer by layer to find "
        "a layer that cannot fit before anything trains.",
    ]
    return Section(EXPERIMENT.title, QUESTION, paragraphs, [windows, formula])


EXPERIMENT = Experiment(
    name=NAME,
    title="3.2 Q1 — Convolution arithmetic",
    question=QUESTION,
    result_type=ConvResult,
    run=run,
    section=section,
)
