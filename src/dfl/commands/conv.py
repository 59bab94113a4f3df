"""`dfl conv`: argparse wiring and output; the arithmetic is in `dfl.labtools.conv_arithmetic`."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

from dfl.cli import command

if TYPE_CHECKING:  # the arithmetic's module imports torch: `dfl --help` does not wait for it
    from dfl.labtools.conv_arithmetic import Pair


def _int_pair(text: str) -> int | Pair:
    """argparse type: "2" or "2,1" (rows, columns)."""
    try:
        parts = [int(p) for p in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"'{text}' is not an integer or a rows,columns pair"
        ) from None
    if len(parts) == 1:
        return parts[0]
    if len(parts) == 2:
        return parts[0], parts[1]
    raise argparse.ArgumentTypeError(f"'{text}' has {len(parts)} numbers; give 1 or 2")


@command("conv", "compute a 2-D convolution by hand: output, size formula, every window")
def add_conv_arguments(p: argparse.ArgumentParser) -> None:
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", help='the input matrix, rows split by ";": "2 5 4 1; 3 1 2 0"')
    source.add_argument("--input-file", help="the input matrix from a text/CSV file, a row a line")
    kernel = p.add_mutually_exclusive_group(required=True)
    kernel.add_argument("--kernel", help='the kernel, rows split by ";": "1 0; 0 1"')
    kernel.add_argument("--kernel-file", help="the kernel from a text/CSV file, a row a line")
    p.add_argument("--stride", type=_int_pair, default=1, help="S, or rows,columns (default 1)")
    p.add_argument("--padding", type=_int_pair, default=0, help="zero padding P (default 0)")
    p.add_argument("--dilation", type=_int_pair, default=1, help="kernel dilation D (default 1)")
    p.add_argument("--explain", action="store_true", help="show every window's products")
    p.add_argument("--json", action="store_true", help="print the full result as JSON")
    p.set_defaults(run=run_conv)


def run_conv(args: argparse.Namespace) -> int:
    from dfl.labtools.conv_arithmetic import (
        convolve2d,
        format_result,
        parse_matrix,
        read_matrix_file,
    )

    if args.input is not None:
        matrix = parse_matrix(args.input, "--input")
    else:
        matrix = read_matrix_file(args.input_file, "input")
    if args.kernel is not None:
        kernel = parse_matrix(args.kernel, "--kernel")
    else:
        kernel = read_matrix_file(args.kernel_file, "kernel")
    result = convolve2d(matrix, kernel, args.stride, args.padding, args.dilation)
    print(json.dumps(result) if args.json else format_result(result, args.explain))
    return 0
