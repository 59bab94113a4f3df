"""Lab 3.3 Q1: self-attention in NumPy and PyTorch, the same inputs and weights through both,
and the notebook's bug (reversed clip, wrong-axis softmax) shown beside the correct result."""

from __future__ import annotations

import shlex
from typing import Any

import numpy as np

from dfl.experiments import figures
from dfl.experiments.comparison import compare_exact
from dfl.experiments.context import Canvas, Context
from dfl.experiments.document import Figure, Section, Table, fmt
from dfl.experiments.experiment import Experiment, Number, Result
from dfl.labtools.attention_check import compare_attention, lab_bug_demo

NAME = "attention"
QUESTION = (
    "Implement self-attention in NumPy and in PyTorch. What are the dimensions of the queries, "
    "keys, values, the attention scores and the output? What do queries, keys and values "
    "represent?"
)
LAB_SIZES = {"n": 32, "d": 256, "dq": 64, "dv": 32}


class AttentionResult(Result):
    single: dict[str, Any]  # one head: every tensor's shape and NumPy-PyTorch agreement
    multi: dict[str, Any]  # four heads
    bug: dict[str, Any]  # the notebook's attention beside a correct one
    weights: list[list[float]]  # (n, n) attention weights of one head, for the heatmap


def run(ctx: Context, settings: None) -> AttentionResult:
    single = compare_attention(**LAB_SIZES, heads=1, seed=0)
    multi = compare_attention(**LAB_SIZES, heads=4, seed=0)
    bug = lab_bug_demo(**LAB_SIZES, seed=0)
    weights = np.asarray(single.pop("weights_head0")).tolist()
    multi.pop("weights_head0", None)
    identical = "yes (bug)" if bug["notebook"]["identical_rows"] else "no"
    command = ["dfl", "attention"] + [a for k, v in LAB_SIZES.items() for a in (f"--{k}", str(v))]
    return AttentionResult(
        single=single,
        multi=multi,
        bug=bug,
        weights=weights,
        numbers={
            "max_abs_diff": Number(
                value=single["max_abs_diff"],
                label="max |NumPy - PyTorch|",
                command=shlex.join(command),
            )
        },
        compare={
            "identical_rows": compare_exact(
                "attention",
                "identical_rows",
                identical,
                why="reversed clip bounds set every score to -100; the softmax divided by row "
                "sums without keepdims (wrong axis)",
                faithful=identical,
                corrected="no" if not bug["correct"]["identical_rows"] else "yes",
            )
        },
    )


def draw(result: AttentionResult, canvas: Canvas) -> list[Figure]:
    plot = figures.heatmap(
        canvas.figure_path("attention_weights"),
        result.weights,
        "key token j",
        "query token i",
        "Attention weights (one head)",
    )
    caption = (
        "Attention weights A = softmax(QK^T/sqrt(d_k)) for 32 random tokens (row i: how much "
        "token i draws from each token j)."
    )
    return [Figure.of(plot, caption)]


def section(result: AttentionResult, figs: list[Figure]) -> Section:
    single, bug = result.single, result.bug
    shapes = Table(
        ["tensor", "symbolic", "per head", "shape (1 head)", "max |NumPy − PyTorch|"],
        [
            [t["name"], t["symbol"], t["per_head"], str(t["shape"]), t["max_abs_diff"]]
            for t in single["tensors"]
        ],
    )
    multi = Table(
        ["tensor", "shape (4 heads)"],
        [[t["name"], str(t["shape"])] for t in result.multi["tensors"]],
    )

    def span(pair: list[float]) -> str:
        return f"[{fmt(pair[0])}, {fmt(pair[1])}]"

    bug_rows = [
        [
            name,
            span(v["score_range"]),
            span(v["row_sum_range"]),
            v["output_row_spread"],
            "yes" if v["identical_rows"] else "no",
        ]
        for name, v in (
            ("notebook (reversed clip + wrong axis)", bug["notebook"]),
            ("wrong axis only", bug["wrong_axis_only"]),
            ("correct (stable softmax)", bug["correct"]),
        )
    ]
    bug_table = Table(
        ["version", "score range", "weight row sums", "output row spread", "identical rows"],
        bug_rows,
        "The notebook's attention beside a correct one",
    )
    paragraphs = [
        "With n = 32 tokens of dimension d = 256, W_q and W_k map to d_k = 64 and W_v to "
        "d_v = 32: Q and K are [n, d_k], V is [n, d_v], the scores QK^T/sqrt(d_k) and the "
        "weights are [n, n], and the output AV is [n, d_v]. With h heads each head works on "
        "d_k/h and d_v/h columns and the heads' outputs are concatenated back to [n, d_v].",
        f"NumPy and PyTorch agree to {fmt(single['max_abs_diff'])} on the same inputs and "
        f"weights; every row of the weights sums to 1 (max error "
        f"{fmt(single['max_row_sum_error'])}). The softmax subtracts each row's maximum first, "
        "so it cannot overflow.",
        "What they represent: a query is what a token is looking for, a key is what a token "
        "offers to be found by, and a value is what it hands over when found. Row i of the "
        "weights says how much token i takes from every token j, and the output row is that "
        "weighted mix of values.",
        "The notebook's outputs were identical rows because its clip had its bounds reversed "
        "(np.clip(x, 100, -100) sets every score to -100, so attention is uniform) and its "
        "softmax divided by the row sums along the wrong axis. We reproduce that on purpose "
        "(`dfl attention --lab-bug`) to show it, and never use it.",
    ]
    return Section(EXPERIMENT.title, QUESTION, paragraphs, [shapes, multi, bug_table], figs)


EXPERIMENT = Experiment(
    name=NAME,
    title="3.3 Q1 — Self-attention",
    question=QUESTION,
    result_type=AttentionResult,
    run=run,
    section=section,
    draw=draw,
)
