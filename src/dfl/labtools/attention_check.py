"""NumPy and PyTorch self-attention on the same inputs and weights, side by side, and the
lab notebook's attention bug beside the correct one.

`compare_attention` and `lab_bug_demo` return plain dicts (JSON-ready) so a report can reuse
the numbers; `dfl attention` (`dfl.commands.attention`) only formats them.
"""

from __future__ import annotations

import numpy as np
import torch

from dfl.errors import ConfigError
from dfl.models.attention import (
    AttentionArrays,
    attention_numpy,
    attention_torch,
    lab_bug_attention,
)

TOLERANCE = {"float32": 1e-4, "float64": 1e-10}  # NumPy computes in float64

# (name, symbolic shape, per-head shape); d_k = d_q / h. Heads are a leading axis, kept for h=1.
TENSORS = [
    ("X", "[n, d]", ""),
    ("W_q", "[d, d_q]", ""),
    ("W_k", "[d, d_q]", ""),
    ("W_v", "[d, d_v]", ""),
    ("Q", "[h, n, d_k]", "[n, d_k]"),
    ("K", "[h, n, d_k]", "[n, d_k]"),
    ("V", "[h, n, d_v/h]", "[n, d_v/h]"),
    ("scores", "[h, n, n]", "[n, n]"),
    ("weights", "[h, n, n]", "[n, n]"),
    ("output", "[n, d_v]", "heads concatenated"),
]


def random_problem(
    n: int, d: int, dq: int, dv: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """X ~ N(0, 1) of (n, d) and W ~ N(0, 1/d): the 1/sqrt(d) keeps Q, K entries near unit
    variance, so the scaled scores are O(1) and the softmax is neither one-hot nor flat."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d))
    w_q, w_k = (rng.standard_normal((d, dq)) / np.sqrt(d) for _ in range(2))
    w_v = rng.standard_normal((d, dv)) / np.sqrt(d)
    return x, w_q, w_k, w_v


# The largest array the check builds: NumPy keeps several of them in float64 and PyTorch its
# own, so 4M numbers is a few hundred MB at most, and 2,048 tokens of one head still fit.
MAX_ELEMENTS = 1 << 22


def check_sizes(n: int, d: int, dq: int, dv: int, heads: int, pad: int) -> None:
    for flag, value in (("--n", n), ("--d", d), ("--dq", dq), ("--dv", dv), ("--heads", heads)):
        if value < 1:
            raise ConfigError(f"{flag} must be at least 1, not {value}")
    for flag, value in (("--dq", dq), ("--dv", dv)):
        if value % heads:
            raise ConfigError(f"{flag} {value} is not divisible by --heads {heads}")
    if not 0 <= pad < n:
        raise ConfigError(f"--pad must be in 0..{n - 1} (at least one real token), not {pad}")
    arrays = {  # the largest arrays the check builds, by the flags that size them
        "the scores, --heads x --n x --n": heads * n * n,
        "the input, --n x --d": n * d,
        "the weights, --d x max(--dq, --dv)": d * max(dq, dv),
        "the queries or values, --n x max(--dq, --dv)": n * max(dq, dv),
    }
    name, largest = max(arrays.items(), key=lambda item: item[1])
    if largest > MAX_ELEMENTS:
        raise ConfigError(
            f"these sizes need an array of {largest:,} numbers ({name}); the check takes at "
            f"most {MAX_ELEMENTS:,}: make those smaller"
        )


def compare_attention(
    *,
    n: int = 32,
    d: int = 256,
    dq: int = 64,
    dv: int = 32,
    heads: int = 1,
    seed: int = 0,
    causal: bool = False,
    pad: int = 0,
    dtype: str = "float32",
) -> dict:
    """Run NumPy (float64) and PyTorch (`dtype`) attention on one random problem; return every
    tensor's shape and max |NumPy - PyTorch|, and whether each weights row sums to 1."""
    check_sizes(n, d, dq, dv, heads, pad)
    x, w_q, w_k, w_v = random_problem(n, d, dq, dv, seed)
    pad_mask = np.arange(n) >= n - pad if pad else None  # the last `pad` tokens are padding
    ours = attention_numpy(x, w_q, w_k, w_v, heads=heads, causal=causal, pad_mask=pad_mask)
    t = {"x": x, "w_q": w_q, "w_k": w_k, "w_v": w_v}
    t = {k: torch.from_numpy(v).to(getattr(torch, dtype)) for k, v in t.items()}
    theirs = attention_torch(
        **t,
        heads=heads,
        causal=causal,
        pad_mask=None if pad_mask is None else torch.from_numpy(pad_mask),
    )
    pairs = {
        "X": (x, t["x"]),
        "W_q": (w_q, t["w_q"]),
        "W_k": (w_k, t["w_k"]),
        "W_v": (w_v, t["w_v"]),
        **{
            label: (getattr(ours, field), getattr(theirs, field))
            for label, field in [
                ("Q", "q"),
                ("K", "k"),
                ("V", "v"),
                ("scores", "scores"),
                ("weights", "weights"),
                ("output", "output"),
            ]
        },
    }
    rows = []
    for name, symbol, per_head in TENSORS:
        a, b = pairs[name]
        diff = float(np.abs(a - b.double().numpy()).max())
        rows.append(
            {"name": name, "symbol": symbol, "per_head": per_head, "shape": list(a.shape)}
            | {"max_abs_diff": diff}
        )
    max_diff = max(r["max_abs_diff"] for r in rows)
    row_sum_error = float(np.abs(ours.weights.sum(-1) - 1).max())
    result = {
        "config": {"n": n, "d": d, "dq": dq, "dv": dv, "heads": heads, "seed": seed}
        | {"causal": causal, "pad": pad, "dtype": dtype, "d_k": dq // heads},
        "tensors": rows,
        "max_abs_diff": max_diff,
        "tolerance": TOLERANCE[dtype],
        "agree": max_diff <= TOLERANCE[dtype],
        "max_row_sum_error": row_sum_error,
        "rows_sum_to_one": row_sum_error < 1e-9,
        "weights_head0": ours.weights[0].tolist(),  # (n, n), for a heatmap
    }
    if causal:
        above = np.triu(np.ones((n, n), dtype=bool), k=1)
        result["causal_future_weight"] = float(np.abs(ours.weights[..., above]).max())
    if pad:
        result["padding_weight"] = float(np.abs(ours.weights[..., n - pad :]).max())
    return result


def describe_weights(a: AttentionArrays) -> dict:
    """What the output rows and weights rows look like: the numbers that expose the bug."""
    out, w = a.output, a.weights[0]
    spread = float(np.ptp(out, axis=0).max())  # the largest difference between two rows
    sums = w.sum(-1)
    return {
        "score_range": [float(a.scores.min()), float(a.scores.max())],
        "weight_range": [float(w.min()), float(w.max())],
        "row_sum_range": [float(sums.min()), float(sums.max())],
        "output_row_spread": spread,
        "identical_rows": spread <= 1e-12 * max(1.0, float(np.abs(out).max())),
    }


def lab_bug_demo(*, n: int = 32, d: int = 256, dq: int = 64, dv: int = 32, seed: int = 0) -> dict:
    """The notebook's attention (reversed clip, wrong-axis softmax) next to the correct one on
    the same single-head problem, and the wrong axis alone (clip fixed)."""
    check_sizes(n, d, dq, dv, 1, 0)
    problem = random_problem(n, d, dq, dv, seed)
    return {
        "notebook": describe_weights(lab_bug_attention(*problem)),
        "wrong_axis_only": describe_weights(lab_bug_attention(*problem, fix_clip=True)),
        "correct": describe_weights(attention_numpy(*problem)),
    }
