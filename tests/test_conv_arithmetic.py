"""Convolution arithmetic (lab 3.2 Q1): the lab's example, agreement with torch's conv2d over
random shapes, the rows/columns a stride never reaches, and clear errors."""

import json
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from dfl.cli import main
from dfl.errors import DflError
from dfl.labtools.conv_arithmetic import convolve2d, format_result, parse_matrix, read_matrix_file

LAB_INPUT = "2 5 4 1; 3 1 2 0; 4 5 7 1; 1 2 3 4"
LAB_KERNEL = "1 0; 0 1"


def test_the_lab_example():
    result = convolve2d(parse_matrix(LAB_INPUT), parse_matrix(LAB_KERNEL), stride=2)
    assert result["output"] == [[3, 4], [6, 11]]
    for dim in result["dimensions"]:
        assert dim["formula"] == "(4 − 2 + 0)/2 + 1 = 2"
        assert dim["remainder"] == 0 and dim["uncovered"] == []
    # Window (1, 1) reads input rows/columns 2..3: 7·1 + 1·0 + 3·0 + 4·1.
    last = result["windows"][-1]
    assert last["rows"] == [2, 3] and last["columns"] == [2, 3]
    assert last["products"] == [[7, 0], [0, 4]] and last["sum"] == 11
    json.dumps(result)  # a report can store it as it is


@st.composite
def conv_cases(draw):
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    ph, pw = draw(st.integers(0, 2)), draw(st.integers(0, 2))
    dh, dw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    # The input is at least as large as the dilated kernel after padding, so there is an output.
    h = draw(st.integers(max(1, dh * (kh - 1) + 1 - 2 * ph), 12))
    w = draw(st.integers(max(1, dw * (kw - 1) + 1 - 2 * pw), 12))
    values = st.floats(-10, 10, allow_nan=False, allow_infinity=False)
    matrix = draw(arrays(np.float64, (h, w), elements=values))
    kernel = draw(arrays(np.float64, (kh, kw), elements=values))
    return matrix, kernel, (sh, sw), (ph, pw), (dh, dw)


@settings(max_examples=80, deadline=None)
@given(conv_cases())
def test_matches_torch_conv2d(case):
    matrix, kernel, stride, padding, dilation = case
    result = convolve2d(matrix, kernel, stride, padding, dilation)
    x = torch.from_numpy(matrix)[None, None]
    k = torch.from_numpy(kernel)[None, None]
    expected = F.conv2d(x, k, stride=stride, padding=padding, dilation=dilation)[0, 0]
    assert [d["output"] for d in result["dimensions"]] == list(expected.shape)
    np.testing.assert_allclose(np.array(result["output"], dtype=float), expected.numpy(), atol=1e-9)

    # The uncovered rows (columns) are exactly those whose values cannot change the output:
    # per axis, a 1-D convolution's gradient is zero there.
    for axis, dim in enumerate(result["dimensions"]):
        line = torch.ones(1, 1, matrix.shape[axis], dtype=torch.float64, requires_grad=True)
        taps = torch.ones(1, 1, kernel.shape[axis], dtype=torch.float64)
        F.conv1d(line, taps, None, stride[axis], padding[axis], dilation[axis]).sum().backward()
        assert dim["uncovered"] == torch.nonzero(line.grad[0, 0] == 0).flatten().tolist()


def test_stride_that_does_not_divide_shows_the_floor_and_the_uncovered_rows():
    matrix = np.arange(25.0).reshape(5, 5)
    result = convolve2d(matrix, np.ones((2, 2)), stride=2)
    rows = result["dimensions"][0]
    assert rows["output"] == 2 and rows["remainder"] == 1
    assert rows["formula"] == "floor((5 − 2 + 0)/2) + 1 = floor(3/2) + 1 = 2"
    assert rows["uncovered"] == [4]
    text = format_result(result)
    assert "3 is not divisible by 2" in text and "input rows never covered: [4]" in text


def test_a_stride_longer_than_the_kernel_skips_rows_even_when_it_divides():
    rows = convolve2d(np.ones((4, 1)), np.ones((1, 1)), stride=3)["dimensions"][0]
    assert rows["remainder"] == 0 and rows["output"] == 2 and rows["uncovered"] == [1, 2]


def test_dilation_is_in_the_formula():
    cols = convolve2d(np.ones((3, 7)), np.ones((1, 3)), dilation=(1, 2))["dimensions"][1]
    assert cols["effective_kernel"] == 5 and cols["output"] == 3
    assert cols["formula"].startswith("K_eff = 2·(3 − 1) + 1 = 5; (7 − 5 + 0)/1 + 1 = 3")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kernel": np.ones((3, 3))}, r"kernel's 3 rows do not fit.*padded input's 2 rows"),
        ({"kernel": np.ones((2, 2)), "dilation": 2}, r"dilation 2 spreads it to 3"),
        (
            {"kernel": np.ones((1, 1)), "stride": 0},
            r"stride must be an integer from 1 to 2,147,483,647",
        ),
        (
            {"kernel": np.ones((1, 1)), "stride": (1, -1)},
            r"stride must be an integer from 1 to 2,147,483,647",
        ),
        (
            {"kernel": np.ones((1, 1)), "dilation": 0},
            r"dilation must be an integer from 1 to 2,147,483,647",
        ),
        (
            {"kernel": np.ones((1, 1)), "padding": -1},
            r"padding must be an integer from 0 to 2,147,483,647",
        ),
        ({"kernel": np.ones((1, 1)), "dilation": 10**23}, r"from 1 to 2,147,483,647 .*, got 1000"),
    ],
)
def test_errors_are_clear(kwargs, message):
    with pytest.raises(DflError, match=message):
        convolve2d(np.ones((2, 2)), **kwargs)


def test_parsing_matrices(tmp_path):
    assert parse_matrix("1, 2; 3 4").tolist() == [[1, 2], [3, 4]]
    path = tmp_path / "m.csv"
    path.write_text("# a comment\n1,2,3\n\n4 5 6\n")
    assert read_matrix_file(path).tolist() == [[1, 2, 3], [4, 5, 6]]
    with pytest.raises(DflError, match="ragged: row 2 has 3 values but row 1 has 2"):
        parse_matrix("1 2; 3 4 5")
    with pytest.raises(DflError, match="'x' in row 2 is not a number"):
        parse_matrix("1 2; 3 x")
    with pytest.raises(DflError, match="empty"):
        parse_matrix(" ; ")
    with pytest.raises(DflError, match="does not exist"):
        read_matrix_file(tmp_path / "missing.txt")
    with pytest.raises(DflError, match="'1e400' in row 1 is not a finite number"):
        parse_matrix("1e400 1")  # JSON output has no infinity
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's overflow warnings leaked to the terminal
        with pytest.raises(DflError, match=r"overflow .* give smaller numbers"):
            convolve2d(parse_matrix("1e308 1e308"), parse_matrix("1e308 -1e308"))
    path.write_bytes(b"\xef\xbb\xbf1,2\n3,4\n")  # a spreadsheet's CSV opens with a BOM
    assert read_matrix_file(path).tolist() == [[1, 2], [3, 4]]
    path.write_bytes(b"\xff\xfe\x00\x81")
    with pytest.raises(DflError, match="is not text"):
        read_matrix_file(path)
    with pytest.raises(DflError, match="is a directory"):
        read_matrix_file(tmp_path)
    with pytest.raises(DflError, match=r"/dev/zero is over 1,048,576 bytes; a matrix worked"):
        read_matrix_file("/dev/zero")  # read up to the limit, not until the memory is full


def test_padding_that_would_fill_the_memory_is_refused():
    with pytest.raises(DflError, match="4,000,008,000,004 cells"):
        convolve2d(np.ones((2, 2)), np.ones((1, 1)), padding=1_000_000)


def test_cli_prints_the_lab_example(capsys):
    code = main(
        ["conv", "--input", LAB_INPUT, "--kernel", LAB_KERNEL, "--stride", "2", "--explain"]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "output 2x2: [[3, 4], [6, 11]]" in out
    assert out.count("(4 − 2 + 0)/2 + 1 = 2") == 2  # rows and columns
    assert "out[1][1]  rows [2, 3] cols [2, 3]: 7·1 + 1·0 + 3·0 + 4·1 = 11" in out


def test_cli_reads_files_and_prints_json(tmp_path, capsys):
    (tmp_path / "x.txt").write_text(LAB_INPUT.replace(";", "\n"))
    (tmp_path / "k.csv").write_text("1,0\n0,1\n")
    x_file, k_file = str(tmp_path / "x.txt"), str(tmp_path / "k.csv")
    code = main(
        ["conv", "--input-file", x_file, "--kernel-file", k_file, "--stride", "2", "--json"]
    )
    assert code == 0
    assert json.loads(capsys.readouterr().out)["output"] == [[3, 4], [6, 11]]


def test_cli_errors_are_one_line_exit_2(capsys):
    code = main(["conv", "--input", "1 2; 3 4", "--kernel", "1 1 1; 1 1 1; 1 1 1"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "do not fit" in err
