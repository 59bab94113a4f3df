"""`dfl attention`: argparse wiring and the text it prints; the numbers come from
`dfl.labtools.attention_check`."""

from __future__ import annotations

import argparse

from dfl.cli import command, whole_number

# The precisions dfl.labtools.attention_check has a tolerance for, named here so that the parser
# does not import torch (tests/test_cli.py holds them equal).
DTYPES = ["float32", "float64"]


@command("attention", "self-attention in NumPy and PyTorch: shapes, agreement, the lab's bug")
def add_attention_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--n", type=whole_number(1), default=32, help="tokens (default 32)")
    p.add_argument("--d", type=whole_number(1), default=256, help="input width d (default 256)")
    p.add_argument(
        "--dq", type=whole_number(1), default=64, help="query/key width d_q, all heads (default 64)"
    )
    p.add_argument(
        "--dv", type=whole_number(1), default=32, help="value width d_v, all heads (default 32)"
    )
    p.add_argument(
        "--heads", type=whole_number(1), default=1, help="heads h; must divide --dq and --dv"
    )
    p.add_argument(
        "--seed",
        type=whole_number(0),
        default=0,
        help="seed of the random inputs and weights (>= 0)",
    )
    p.add_argument("--causal", action="store_true", help="query i attends to keys 0..i only")
    p.add_argument(
        "--pad", type=int, default=0, help="mark the last PAD tokens as padding keys (default 0)"
    )
    p.add_argument(
        "--dtype",
        choices=DTYPES,
        default="float32",
        help="PyTorch precision (NumPy is float64; default float32)",
    )
    p.add_argument(
        "--lab-bug",
        action="store_true",
        help="also run the notebook's attention (reversed clip, wrong-axis softmax) beside "
        "the correct one and show why its output rows are identical",
    )
    p.set_defaults(run=run_attention)


def run_attention(args: argparse.Namespace) -> int:
    from dfl.labtools.attention_check import compare_attention, lab_bug_demo

    sizes = {"n": args.n, "d": args.d, "dq": args.dq, "dv": args.dv}
    r = compare_attention(
        **sizes,
        heads=args.heads,
        seed=args.seed,
        causal=args.causal,
        pad=args.pad,
        dtype=args.dtype,
    )
    print(format_comparison(r))
    if args.lab_bug:
        print()
        print(format_lab_bug(lab_bug_demo(**sizes, seed=args.seed)))
    return 0


def shape_text(shape: list[int]) -> str:
    return "[" + ", ".join(map(str, shape)) + "]"


def format_comparison(r: dict) -> str:
    c = r["config"]
    lines = [
        f"self-attention: n={c['n']} d={c['d']} d_q={c['dq']} d_v={c['dv']} h={c['heads']} "
        f"(d_k = d_q/h = {c['d_k']}){' causal' if c['causal'] else ''}"
        f"{' pad=' + str(c['pad']) if c['pad'] else ''}; NumPy float64 vs PyTorch {c['dtype']}",
        "",
        f"{'tensor':<8}  {'form':<14}  {'shape':<14}  {'per head':<22}  max |NumPy - PyTorch|",
    ]
    for row in r["tensors"]:
        per_head = row["per_head"]
        if per_head.startswith("["):
            per_head = f"{per_head} = {shape_text(row['shape'][1:])}"
        lines.append(
            f"{row['name']:<8}  {row['symbol']:<14}  {shape_text(row['shape']):<14}  "
            f"{per_head:<22}  {row['max_abs_diff']:.2e}"
        )
    verdict = "agree" if r["agree"] else "DISAGREE"
    lines += [
        "",
        f"max |NumPy - PyTorch| = {r['max_abs_diff']:.2e}: {verdict} (tolerance "
        f"{r['tolerance']:g})",
        f"weights rows sum to 1: {'yes' if r['rows_sum_to_one'] else 'NO'} "
        f"(max |row sum - 1| = {r['max_row_sum_error']:.1e})",
    ]
    if "causal_future_weight" in r:
        lines.append(f"causal: max weight on a future key = {r['causal_future_weight']:.1e}")
    if "padding_weight" in r:
        lines.append(f"padding: max weight on a padding key = {r['padding_weight']:.1e}")
    return "\n".join(lines)


def format_lab_bug(bug: dict) -> str:
    columns = [("notebook", "notebook"), ("wrong axis only", "wrong_axis_only")]
    columns.append(("correct", "correct"))

    def cell(d: dict, key: str) -> str:
        v = d[key]
        if isinstance(v, list):
            return f"{v[0]:.4g} .. {v[1]:.4g}"
        if isinstance(v, bool):
            return "yes" if v else "no"
        return f"{v:.3g}"

    labels = [
        ("score_range", "scores (as softmax sees them)"),
        ("weight_range", "weights min .. max"),
        ("row_sum_range", "weights row sums"),
        ("output_row_spread", "output max row spread"),
        ("identical_rows", "all output rows identical"),
    ]
    header = f"{'the notebook bug, single head':<30}" + "".join(f"  {t:<20}" for t, _ in columns)
    lines = [header.rstrip()]
    for key, label in labels:
        cells = "".join(f"  {cell(bug[k], key):<20}" for _, k in columns)
        lines.append(f"{label:<30}{cells}".rstrip())
    lines += [
        "",
        "np.clip(scores, 100, -100) has its bounds reversed: NumPy returns min(max(s, 100), -100)",
        "= -100 for every score, so the softmax is uniform (1/n) and every output row is the",
        "mean of V: the identical rows the notebook printed. Its softmax also divides by",
        "np.sum(e, axis=1) without keepdims, so entry (i, j) is divided by row j's sum; equal",
        "scores hide that, but with the clip fixed the rows no longer sum to 1 (middle column).",
    ]
    return "\n".join(lines)
