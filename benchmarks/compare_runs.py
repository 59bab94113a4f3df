"""Compare the numbers of two reproductions, e.g. the preview profile in fp32 and in bf16:

    dfl reproduce --profile preview --precision fp32 --out runs/preview-fp32
    dfl reproduce --profile preview --out runs/preview
    python benchmarks/compare_runs.py runs/preview-fp32 runs/preview [--only cnn,vit]

For every number both results.json files hold: each side's mean (± std over seeds) and the
difference, marked "within noise" when it is no larger than twice the larger seed std.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def numbers(run: Path) -> dict[str, tuple[str, list[float]]]:
    """(label, values) of every numeric number in a reproduction, keyed experiment.key."""
    found = {}
    for experiment, entries in json.loads((run / "results.json").read_text())["numbers"].items():
        for key, entry in entries.items():
            value = entry.get("value")
            values = value if isinstance(value, list) else [value]
            if values and all(isinstance(v, int | float) for v in values):
                found[f"{experiment}.{key}"] = (entry.get("label", key), [float(v) for v in values])
    return found


def summary(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def table(a_dir: Path, b_dir: Path, only: list[str] | None = None) -> list[str]:
    """Markdown lines: every number both reproductions hold, side by side."""
    a, b = numbers(a_dir), numbers(b_dir)
    lines = [
        f"| number | {a_dir.name} | {b_dir.name} | difference | |",
        "|---|--:|--:|--:|---|",
    ]
    for key in sorted(a.keys() & b.keys()):
        if only and key.split(".")[0] not in only:
            continue
        (label, va), (_, vb) = a[key], b[key]
        (ma, sa), (mb, sb) = summary(va), summary(vb)
        noise = 2 * max(sa, sb)
        verdict = (
            "one run each: no noise estimate"
            if noise == 0
            else "within noise"
            if abs(mb - ma) <= noise
            else "outside noise"
        )
        lines.append(
            f"| {label} | {ma:.4g} ± {sa:.2g} | {mb:.4g} ± {sb:.2g} | {mb - ma:+.3g} | {verdict} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("a", type=Path, help="a reproduction directory (the reference)")
    parser.add_argument("b", type=Path, help="another reproduction directory")
    parser.add_argument("--only", help="comma-separated experiments (default: all)")
    args = parser.parse_args()
    print("\n".join(table(args.a, args.b, args.only.split(",") if args.only else None)))


if __name__ == "__main__":
    main()
