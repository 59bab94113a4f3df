"""The report as a reader meets it: Markdown and HTML from one document, every user string
escaped, and the HTML checked in a real headless browser."""

import contextlib
import io
from pathlib import Path

import pytest

from conftest import check_page
from dfl.experiments import figures
from dfl.experiments.document import Document, Figure, Section, Table, fmt, mean_std
from dfl.report.render import to_html, to_markdown

EVIL = '<script>alert("run name")</script>'


def make_report(root: Path) -> Path:
    plot = figures.curves(
        root / "figures" / "curve.png", {"loss": [1.0, 0.5, 0.25]}, "epoch", "loss"
    )
    doc = Document(
        f"report for {EVIL}",
        [f"run {EVIL} & friends"],
        [
            Section(
                "A section",
                "the question?",
                [f"config value {EVIL}"],
                [Table(["name", "value"], [[EVIL, 0.5], ["missing one", None]])],
                [Figure.of(plot, "a curve")],
            ),
            Section("Not run", missing="not implemented yet"),
        ],
    )
    out = root / "report.html"
    out.write_text(to_html(doc, root))
    (root / "report.md").write_text(to_markdown(doc))
    return out


def test_numbers_are_formatted_and_missing_is_never_zero():
    assert fmt(None) == "missing" and fmt(float("nan")) == "missing"
    assert fmt(0.000227) == "2.270e-04" and fmt(12345) == "12,345"
    assert mean_std([0.9, 0.92]).startswith("0.9100 ± 0.0141")
    assert mean_std([]) == "missing"


def test_html_escapes_user_strings(tmp_path: Path):
    html = make_report(tmp_path).read_text()
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "data:image/png;base64," in html  # self-contained: the figure is inlined
    assert "Missing: not implemented yet" in html


def test_report_renders_in_headless_chromium(tmp_path: Path, browser):
    page = check_page(browser, make_report(tmp_path), tmp_path / "screenshot.png")
    assert page["images"] and not page["broken"]
    assert page["errors"] == []
    assert page["scripts"] == 0  # the run name stayed text
    assert EVIL in page["text"]
    assert (tmp_path / "screenshot.png").stat().st_size > 10_000


def test_json_files_hold_no_bare_nan(tmp_path: Path):
    """NaN and infinities (a std over one seed, a diverged metric) are written as null: Python
    reads a bare NaN, but it is not JSON and other readers refuse it."""
    import json

    from dfl.runtime.atomic import atomic_write_json

    path = tmp_path / "results.json"
    atomic_write_json(path, {"std": float("nan"), "runs": [float("inf"), 0.5], "n": (1, 2.0)})

    def refuse(constant: str) -> None:
        raise AssertionError(f"bare {constant} in {path}")

    assert json.loads(path.read_text(), parse_constant=refuse) == {
        "std": None, "runs": [None, 0.5], "n": [1, 2.0]
    }  # fmt: skip


DAMAGES = {
    "reproduce.json not JSON": ("reproduce.json", lambda t: "{bad", "reproduce.json is damaged"),
    "reproduce.json a list": ("reproduce.json", lambda t: "[1]", "the whole file"),
    "wall time as text": (
        "reproduce.json",
        lambda t: t.replace('"wall_s": ', '"wall_s": "x", "was": '),
        "wall_s",
    ),
}


@pytest.fixture(scope="module")
def small_reproduction(tmp_path_factory) -> Path:
    from conftest import write_idx_dataset
    from dfl.reproduce import reproduce

    root = tmp_path_factory.mktemp("damaged")
    data = write_idx_dataset(root / "digits", 64, 16)
    reproduce(root / "r", "smoke", str(data), only=["conv", "attention"], at_once=1)
    return root


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_damaged_reproduce_json_is_one_line_everywhere(damage, small_reproduction, tmp_path):
    """Hand-edited or cut short: `dfl report` and `dfl reproduce` say which file and how to
    recover in one line (exit 2), where they gave a JSONDecodeError or a TypeError."""
    import shutil

    from dfl.cli import main

    out = tmp_path / "r"
    shutil.copytree(small_reproduction / "r", out)
    name, damaged, message = DAMAGES[damage]
    (out / name).write_text(damaged((out / name).read_text()))
    data = str(small_reproduction / "digits")
    for argv in (
        ["report", str(out)],
        ["reproduce", "--profile", "smoke", "--only", "conv", "--dataset", data, "--out", str(out)],
    ):
        with contextlib.redirect_stderr(io.StringIO()) as err:
            assert main(argv) == 2
        lines = err.getvalue().splitlines()
        assert len(lines) == 1 and message in lines[0] and "delete it" in lines[0], lines


@pytest.mark.parametrize("text", ["{bad", '{"lab": [1]}', '{"lab": [{"experiment": 3}]}', "[]"])
def test_a_damaged_results_json_is_one_line_in_the_lab_table(text, small_reproduction, tmp_path):
    import shutil

    from dfl.cli import main

    out = tmp_path / "r"
    shutil.copytree(small_reproduction / "r", out)
    (out / "results.json").write_text(text)
    with contextlib.redirect_stderr(io.StringIO()) as err:
        assert main(["report", str(out), "--lab-table"]) == 2
    assert "results.json is missing or damaged" in err.getvalue()
    assert len(err.getvalue().splitlines()) == 1
    with contextlib.redirect_stderr(io.StringIO()) as err:  # no reproduction to write it from
        assert main(["report", str(tmp_path), "--lab-table"]) == 2
    assert "holds no reproduction" in err.getvalue()


def test_the_out_path_is_quoted_not_read_as_markdown(small_reproduction, tmp_path):
    """A folder named `my *runs* dir` is shown as code, quoted for a shell (it was pasted
    raw: Markdown made 'runs' italic and the suggested command split at the spaces)."""
    import shutil

    from dfl.report.build import build_report

    out = tmp_path / "my *runs* dir"
    shutil.copytree(small_reproduction / "r", out)
    build_report(out)
    assert f"saved under `'{out}'`" in (out / "report.md").read_text()


def test_a_report_of_no_reproduction_names_the_reproductions_beside_it(
    small_reproduction, tmp_path, digits
):
    """`dfl report runs/lab` after only a smoke run said "not a directory"; a training run's
    directory was told to run `dfl reproduce` into it."""
    import shutil

    from dfl.cli import main

    shutil.copytree(small_reproduction / "r", tmp_path / "smoke")
    run = tmp_path / "train" / "run"  # as runs/train/MODEL-TIME lies beside runs/lab
    argv = ["train", "mlp", "--dataset", str(digits), "--epochs", "1", "--out", str(run)]
    assert main([*argv, "--set", "model_args.hidden=[4]"]) == 0
    beside = f"(reproductions there: {tmp_path / 'smoke'})"
    for where, said in (
        (tmp_path / "lab", "is not a directory: name the --out of a `dfl reproduce` "),
        (run, "is a training run (dfl train), which has no report: "),
    ):
        with contextlib.redirect_stderr(io.StringIO()) as err:
            assert main(["report", str(where)]) == 2
        assert said in err.getvalue() and err.getvalue().rstrip().endswith(beside), err.getvalue()
    assert not (run / "report.md").exists()
