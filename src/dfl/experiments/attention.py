"""Lab 3.3 Q1: self-attention in NumPy and PyTorch, the same inputs and weights through both,
and the notebook's bug (reversed clip, wrong-axis softmax) shown beside the correct result."""

from __future__ import annotations

from typing import Any

import numpy as np

from dfl.attention_cli import compare_attention, lab_bug_demo
from dfl.experiments import TITLES
from dfl.experiments.base import Canvas, Context
from dfl.report import figures
from dfl.report.document import Figure, Section, Table, fmt

NAME = "attention"
TITLE = TITLES[NAME]
QUESTION = (
    "Implement self-attention in NumPy and in PyTorch. What are the dimensions of the queries, "
    "keys, values, the attention scores and the output? What do queries, keys and values "
    "represent?"
)
LAB_SIZES = {"n": 32, "d": 256, "dq": 64, "dv": 32}


def run(ctx: Context) -> dict[str, Any]:
    single = compare_attention(**LAB_SIZES, heads=1, seed=0)
    multi = compare_attention(**LAB_SIZES, heads=4, seed=0)
    bug = lab_bug_demo(**LAB_SIZES, seed=0)
    weights = np.asarray(single.pop("weights_head0")).tolist()  # (n, n), for the heatmap
    multi.pop("weights_head0", None)
    identical = "yes (bug)" if bug["notebook"]["identical_rows"] else "no"
    return {
        "single": single,
        "multi": multi,
        "bug": bug,
        "weights": weights,
        "numbers": {
            "max_abs_diff": {
                "value": single["max_abs_diff"],
                "label": "max |NumPy - PyTorch|",
                "command": "dfl attention --n 32 --d 256 --dq 64 --dv 32",
            }
        },
        "compare": {
            "identical_rows": {
                "faithful": identical,
                "corrected": "no" if not bug["correct"]["identical_rows"] else "yes",
                "verdict": "bug reproduced, then fixed",
                "why": "reversed clip bounds set every score to -100; the softmax divided by row "
                "sums without keepdims (wrong axis)",
            }
        },
    }


def draw(result: dict[str, Any], canvas: Canvas) -> list[dict[str, str]]:
    path = figures.heatmap(
        canvas.figure_path("attention_weights"),
        result["weights"],
        "key token j",
        "query token i",
        "Attention weights (one head)",
    )
    return [
        {
            "path": path,
            "caption": "Attention weights A = softmax(QK^T/sqrt(d_k)) for 32 "
            "random tokens (row i: how much token i draws from each token j).",
        }
    ]


def section(result: dict[str, Any]) -> Section:
    single, bug = result["single"], result["bug"]
    shapes = Table(
        ["tensor", "symbolic", "per head", "shape (1 head)", "max |NumPy − PyTorch|"],
        [
            [t["name"], t["symbol"], t["per_head"], str(t["shape"]), t["max_abs_diff"]]
            for t in single["tensors"]
        ],
    )
    multi = Table(
        ["tensor", "shape (4 heads)"],
        [[t["name"], str(t["shape"])] for t in result["multi"]["tensors"]],
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
    figs = [Figure(f["path"], f["caption"]) for f in result["figures"]]
    return Section(TITLE, QUESTION, paragraphs, [shapes, multi, bug_table], figs)
