"""Convolution arithmetic (lab 3.2 Q1), by hand in NumPy so every number can be shown.

Deep-learning "convolution" is cross-correlation: the kernel slides over the (zero-padded)
input without being flipped, and each output is the sum of one window's element-wise products.
Per dimension the output size is O = floor((W − K_eff + 2P) / S) + 1 with K_eff = D(K − 1) + 1,
computed by the one copy of that formula, `conv_output_size` in `dfl.models.layers`. When
(W − K_eff + 2P) is not divisible by S the floor drops the last rows/columns: `convolve2d`
says which input rows/columns no window ever reads.

`dfl conv --input "2 5 4 1; 3 1 2 0; 4 5 7 1; 1 2 3 4" --kernel "1 0; 0 1" --stride 2`
prints [[3, 4], [6, 11]] and (4 − 2 + 0)/2 + 1 = 2 for rows and columns.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from dfl.errors import DflError
from dfl.models.layers import conv_output_size
from dfl.models.registry import MAX_SIZE  # a stride, padding or dilation past it overflows

Pair = tuple[int, int]  # (rows, columns)
# What a by-hand calculation shows: beyond this many padded input cells (so windows, at stride
# 1) the listing is unreadable, and the padding alone could fill the memory.
MAX_CELLS = 10_000
MAX_FILE_BYTES = 1 << 20  # far more than MAX_CELLS numbers take as text


# ---------------------------------------------------------------------------------------------
# Reading matrices


def parse_matrix(text: str, what: str = "matrix") -> np.ndarray:
    """ "2 5 4 1; 3 1 2 0" -> 2x4 array. Rows end at ';' or a newline; values are separated by
    spaces or commas. Blank lines and '#' comments are skipped, so a CSV file reads the same."""
    rows: list[list[float]] = []
    for line in re.split(r"[;\n]", text):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        values = [v for v in re.split(r"[,\s]+", line) if v]
        try:
            rows.append([float(v) for v in values])
        except ValueError:
            bad = next(v for v in values if not _is_number(v))
            raise DflError(f"{what}: '{bad}' in row {len(rows) + 1} is not a number") from None
        if not np.isfinite(rows[-1]).all():  # inf, nan, 1e400: no arithmetic to show
            bad = next(v for v in values if not np.isfinite(float(v)))
            raise DflError(f"{what}: '{bad}' in row {len(rows)} is not a finite number")
    if not rows:
        raise DflError(f'{what} is empty (example: "2 5 4 1; 3 1 2 0")')
    for i, row in enumerate(rows, start=1):
        if len(row) != len(rows[0]):
            raise DflError(
                f"{what} is ragged: row {i} has {len(row)} values but row 1 has {len(rows[0])}"
            )
    return np.array(rows, dtype=np.float64)


def read_matrix_file(path: str | Path, what: str = "matrix") -> np.ndarray:
    """A matrix from a text file: one row per line, values separated by spaces or commas."""
    path = Path(path)
    try:
        with path.open("rb") as f:  # at most a byte past the limit: /dev/zero is no matrix
            data = f.read(MAX_FILE_BYTES + 1)
        if len(data) > MAX_FILE_BYTES:
            raise DflError(
                f"{what} file {path} is over {MAX_FILE_BYTES:,} bytes; a matrix worked by hand "
                f"has at most {MAX_CELLS:,} cells"
            )
        text = data.decode("utf-8-sig")  # -sig: a spreadsheet's CSV starts with a BOM
    except FileNotFoundError:
        raise DflError(f"{what} file {path} does not exist") from None
    except IsADirectoryError:
        raise DflError(f"{what} file {path} is a directory; name a text or CSV file") from None
    except UnicodeDecodeError:
        raise DflError(f"{what} file {path} is not text: give numbers, a row a line") from None
    return parse_matrix(text, f"{what} file {path}")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


# ---------------------------------------------------------------------------------------------
# The arithmetic


def _pair(value: int | Pair, name: str, minimum: int) -> Pair:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or any(int(v) != v or not minimum <= v <= MAX_SIZE for v in pair):
        raise DflError(
            f"{name} must be an integer from {minimum} to {MAX_SIZE:,} (or a rows,columns "
            f"pair), got {value}"
        )
    return int(pair[0]), int(pair[1])


def dimension_arithmetic(
    axis: str, size: int, kernel: int, stride: int, padding: int, dilation: int
) -> dict[str, Any]:
    """One dimension's output size with the numbers filled in, and what the floor drops."""
    effective = dilation * (kernel - 1) + 1  # the span of a dilated kernel
    if effective > size + 2 * padding:
        dilated = f" (dilation {dilation} spreads it to {effective})" if dilation > 1 else ""
        raise DflError(
            f"the kernel's {kernel} {axis}{dilated} do not fit in the padded input's "
            f"{size + 2 * padding} {axis} ({size} + 2·{padding} padding)"
        )
    output = conv_output_size(size, kernel, stride, padding, dilation)
    span = size - effective + 2 * padding  # what the stride divides
    remainder = span % stride
    fraction = f"({size} − {effective} + {2 * padding})/{stride}"
    formula = f"{fraction} + 1 = {output}"
    if remainder:
        formula = f"floor({fraction}) + 1 = floor({span}/{stride}) + 1 = {output}"
    if dilation > 1:
        formula = f"K_eff = {dilation}·({kernel} − 1) + 1 = {effective}; " + formula
    # Padded positions some window reads, mapped back to input indices (dilation gaps and a
    # stride larger than the kernel leave holes too, not only the floor).
    read = {o * stride + t * dilation - padding for o in range(output) for t in range(kernel)}
    uncovered = [i for i in range(size) if i not in read]
    return {
        "axis": axis,
        "size": size,
        "kernel": kernel,
        "effective_kernel": effective,
        "stride": stride,
        "padding": padding,
        "dilation": dilation,
        "output": output,
        "remainder": remainder,
        "formula": formula,
        "uncovered": uncovered,
    }


def convolve2d(
    matrix: np.ndarray,
    kernel: np.ndarray,
    stride: int | Pair = 1,
    padding: int | Pair = 0,
    dilation: int | Pair = 1,
) -> dict[str, Any]:
    """Cross-correlate `matrix` with `kernel` (no flip, as torch's conv2d does).

    Returns a JSON-ready dict: input, kernel, settings, `output` (nested lists), `dimensions`
    (per axis: the formula with its numbers, the remainder and the uncovered input indices)
    and `windows` (per output element: the input rows/columns it reads, the element-wise
    products and their sum), so a report can show any of it later.
    """
    matrix, kernel = np.asarray(matrix, dtype=np.float64), np.asarray(kernel, dtype=np.float64)
    if matrix.ndim != 2 or kernel.ndim != 2 or 0 in matrix.shape or 0 in kernel.shape:
        raise DflError("input and kernel must be non-empty 2-D matrices")
    sh, sw = _pair(stride, "stride", 1)
    ph, pw = _pair(padding, "padding", 0)
    dh, dw = _pair(dilation, "dilation", 1)
    padded_cells = (matrix.shape[0] + 2 * ph) * (matrix.shape[1] + 2 * pw)
    if padded_cells > MAX_CELLS:
        raise DflError(
            f"the padded input would hold {padded_cells:,} cells; `dfl conv` shows every window "
            f"by hand and takes at most {MAX_CELLS:,}: give a smaller input or padding"
        )
    rows = dimension_arithmetic("rows", matrix.shape[0], kernel.shape[0], sh, ph, dh)
    cols = dimension_arithmetic("columns", matrix.shape[1], kernel.shape[1], sw, pw, dw)

    padded = np.pad(matrix, ((ph, ph), (pw, pw)))
    output = np.zeros((rows["output"], cols["output"]))
    windows = []
    with np.errstate(over="ignore", invalid="ignore"):  # an overflow is refused below
        for i in range(rows["output"]):
            for j in range(cols["output"]):
                r_idx = i * sh + dh * np.arange(kernel.shape[0])  # padded coordinates
                c_idx = j * sw + dw * np.arange(kernel.shape[1])
                window = padded[np.ix_(r_idx, c_idx)]
                products = window * kernel
                output[i, j] = products.sum()
                windows.append(
                    {
                        "out": [i, j],
                        "rows": (r_idx - ph).tolist(),  # input coordinates; outside = padding
                        "columns": (c_idx - pw).tolist(),
                        "values": _plain(window),
                        "products": _plain(products),
                        "sum": _plain(output[i, j]),
                    }
                )
    if not np.isfinite(output).all():
        raise DflError(
            "the products or sums overflow (past 1.8e308, the largest float64): give smaller "
            "numbers"
        )
    return {
        "input": _plain(matrix),
        "kernel": _plain(kernel),
        "stride": [sh, sw],
        "padding": [ph, pw],
        "dilation": [dh, dw],
        "output": _plain(output),
        "dimensions": [rows, cols],
        "windows": windows,
    }


def _plain(a: np.ndarray | float) -> Any:
    """Nested lists of numbers, whole numbers as ints: [[3, 4], [6, 11]], not [[3.0, 4.0], ...]."""
    if isinstance(a, np.ndarray):
        return [_plain(v) for v in a]
    v = float(a)
    return int(v) if v.is_integer() else v


# ---------------------------------------------------------------------------------------------
# Text


def format_result(result: dict[str, Any], explain: bool = False) -> str:
    """The output, each dimension's formula, what the floor drops, and (explain) every window."""
    (h, w), (kh, kw) = _dims(result["input"]), _dims(result["kernel"])
    settings = ", ".join(
        f"{name} {_pair_text(result[name])}" for name in ("stride", "padding", "dilation")
    )
    lines = [f"input {h}x{w}, kernel {kh}x{kw}, {settings}", "O = floor((W − K_eff + 2P)/S) + 1"]
    for d in result["dimensions"]:
        lines.append(f"  {d['axis']:<8} {d['formula']}")
        if d["remainder"]:
            lines.append(
                f"  {'':<8} {d['size']} − {d['effective_kernel']} + {2 * d['padding']} = "
                f"{d['size'] - d['effective_kernel'] + 2 * d['padding']} is not divisible by "
                f"{d['stride']}: the floor leaves the last {d['remainder']} of the "
                f"{d['size'] + 2 * d['padding']} padded {d['axis']} unread"
            )
        if d["uncovered"]:
            lines.append(f"  {'':<8} input {d['axis']} never covered: {d['uncovered']}")
        elif d["remainder"]:
            lines.append(
                f"  {'':<8} every input {d['axis'][:-1]} is still read: only padding is left"
            )
    oh, ow = _dims(result["output"])
    lines.append(f"output {oh}x{ow}: {result['output']}")
    if explain:
        lines.append("windows (rows and columns in input coordinates; outside = zero padding):")
        for win in result["windows"]:
            terms = " + ".join(
                f"{_num(v)}·{_num(k)}"
                for v_row, k_row in zip(win["values"], result["kernel"], strict=True)
                for v, k in zip(v_row, k_row, strict=True)
            )
            i, j = win["out"]
            lines.append(
                f"  out[{i}][{j}]  rows {win['rows']} cols {win['columns']}: "
                f"{terms} = {_num(win['sum'])}"
            )
    return "\n".join(lines)


def _dims(matrix: list[list[Any]]) -> Pair:
    return len(matrix), len(matrix[0])


def _pair_text(pair: list[int]) -> str:
    return str(pair[0]) if pair[0] == pair[1] else f"{pair[0]},{pair[1]}"


def _num(v: float) -> str:
    return f"{v:g}"
