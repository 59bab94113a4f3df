"""`dfl shapes SPEC|MODEL`: argparse wiring and output; the work is in `dfl.labtools.shapes`."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

from dfl.cli import add_override_argument, command
from dfl.errors import ShapeError

if TYPE_CHECKING:  # the work's modules import torch: `dfl --help` does not wait for it
    from dfl.models.layers import Shape


def _input_shape(text: str) -> Shape:
    """argparse type: "1,28,28" -> (1, 28, 28)."""
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"'{text}' is not a comma-separated shape like 1,28,28"
        ) from None
    if any(v < 1 for v in shape):
        raise argparse.ArgumentTypeError(f"'{text}': every size must be positive")
    return shape


@command("shapes", "check a model's shapes: output, parameters and multiply-adds per layer")
def add_shapes_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "spec",
        metavar="SPEC|MODEL",
        help="a registered model (`dfl models`), a TOML config with model/model_args "
        "(as `dfl train --config`), or a TOML file with `layers = [...]`",
    )
    add_override_argument(p, "model_args.enc=64")
    p.add_argument(
        "--input",
        type=_input_shape,
        help="one sample's shape, C,H,W (default 1,28,28)",
    )
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(run=run_shapes)


def run_shapes(args: argparse.Namespace) -> int:
    from dfl.labtools.shapes import DEFAULT_INPUT, format_summary, model_from_spec, model_summary

    if args.input is None:
        args.input = DEFAULT_INPUT
    try:
        label, model = model_from_spec(args.spec, args.overrides, args.input)
    except ShapeError as e:
        # The layers before the one that does not fit, as a table: where the shapes went
        # (the error line follows on stderr).
        if e.fitted is not None and len(e.fitted) and not args.json:
            print(format_summary("the layers that fit", model_summary(e.fitted, args.input)))
        raise
    try:
        summary = model_summary(model, args.input)
    except ShapeError as e:
        raise ShapeError(f"{label}: {e}") from None
    if args.json:
        print(json.dumps({"model": label, **summary.as_dict()}))
    else:
        print(format_summary(label, summary))
    return 0
