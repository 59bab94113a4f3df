"""notebooks/: each lab section's notebook runs top to bottom in a real Jupyter kernel (nbclient,
ipykernel) at its committed settings (the smoke profile, on the embedded MNIST), and is
committed without outputs."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from dfl.data import load_dataset

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))

# A cell draws when its source plots (`run.plot(...)`, `run.plot_reconstructions(...)`),
# displays something (`display(figure)`), or reaches for a lab run's figures or a matplotlib
# figure of its own: each such cell must show at least one image.
DRAWS = re.compile(r"\.plot\w*\(|\bdisplay\(|\.figures\b|\bFigure\(|\.imshow\(|\bplt\.")
# What Jupyter prints for a matplotlib figure it cannot draw (no `%matplotlib inline`).
UNDRAWN = re.compile(r"<(matplotlib\.figure\.)?\w*Figure size \d+(\.\d+)?x\d+")


def test_there_is_a_notebook_per_lab_section():
    assert [p.name.split("_")[0] for p in NOTEBOOKS] == ["3.1", "3.2", "3.3"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebooks_are_committed_without_outputs(path: Path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, cell.source[:60]
    assert 'PROFILE = "smoke"' in nb.cells[1].source  # small by default; one line to change


def _outputs(nb: nbformat.NotebookNode) -> list[dict]:
    return [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs]


def execute_all(notebooks: list[Path], tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The notebooks, each run top to bottom in its own kernel and directory, all at once:
    path -> (the executed notebook, its directory, the error or None).

    At once, because a notebook's kernel start, imports, figures and reports are one core's
    work, and its small trainings (most of its time: 3.2's CNN study, 3.3's ViT study) use a
    second core poorly. The kernels split the cores as dfl splits them among trainings side by
    side (dfl/runtime/core_share.py, with a share directory of their own). Measured on the same
    2 busy cores: 88 s and 157 s at once, against 509 s one after the other at a thread per
    core each (CPU time 2.5 and 3 min against 8: threads that wait spin)."""
    base = tmp_path_factory.getbasetemp()
    clients: dict[Path, tuple[NotebookClient, Path]] = {}
    for path in notebooks:
        directory = tmp_path_factory.mktemp(path.stem.split("_")[0])
        nb = nbformat.read(path, as_version=4)
        # The kernel starts in its own directory: the runs land there, not in the checkout.
        resources = {"metadata": {"path": str(directory)}}
        client = NotebookClient(nb, timeout=900, kernel_name="python3", resources=resources)
        clients[path] = (client, directory)

    async def run_all() -> list:
        runs = (client.async_execute() for client, _ in clients.values())
        return await asyncio.gather(*runs, return_exceptions=True)

    with pytest.MonkeyPatch.context() as env:
        env.setenv("DFL_DATA_DIR", str(base / "dfl-cache"))  # the session's cache (conftest)
        env.setenv("DFL_SHARE_CORES", "1")
        share = base / "notebook-kernels"  # their core share, apart from other dfl trainings
        share.mkdir(exist_ok=True)
        env.setenv("TMPDIR", str(share))
        load_dataset("mnist", download=False)  # made into the cache once, not by three kernels
        errors = asyncio.run(run_all())
    return {
        path: (client.nb, directory, error if isinstance(error, BaseException) else None)
        for (path, (client, directory)), error in zip(clients.items(), errors, strict=True)
    }


@pytest.mark.mnist
@pytest.mark.slow
@pytest.mark.longest
def test_every_notebook_runs_top_to_bottom(tmp_path_factory: pytest.TempPathFactory):
    """All three at once, in one test: one test worker runs them (`make test` runs two)."""
    failed = {}
    for path, (nb, directory, error) in execute_all(NOTEBOOKS, tmp_path_factory).items():
        try:
            if error is not None:  # CellExecutionError names the cell that failed
                raise error
            check_executed(path, nb, directory)
        except Exception as e:
            failed[path.name] = e
    assert not failed, "\n".join(f"{name}: {e}" for name, e in failed.items())


def check_executed(path: Path, nb: nbformat.NotebookNode, directory: Path) -> None:
    outputs = _outputs(nb)
    assert not [o for o in outputs if o.output_type == "error"]
    # The lab's numbers beside ours, as a table, and figures shown inline.
    shown = [
        o.get("data", {}) for o in outputs if o.output_type in ("execute_result", "display_data")
    ]
    assert any("| lab number |" in d.get("text/markdown", "") for d in shown)
    assert sum("image/png" in d for d in shown) >= 2
    _assert_every_drawing_cell_shows_an_image(nb)
    assert (directory / "runs" / "notebooks-smoke" / "report.html").exists()
    printed = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    if path.name.startswith("3.1"):  # a misspelled key: the CLI's one line, as a ConfigError
        assert "config key 'optim.lrr': unknown key" in printed
    if path.name.startswith("3.3"):
        assert "ShapeError patch 5 does not divide the 28x28 image" in printed


def _assert_every_drawing_cell_shows_an_image(nb: nbformat.NotebookNode) -> None:
    """Each cell that draws shows an image (image/png), each figure it shows is drawn, and no
    cell anywhere shows a figure as the text `<Figure size 600x360 with 1 Axes>`."""
    drawing = [c for c in nb.cells if c.cell_type == "code" and DRAWS.search(c.source)]
    assert drawing, "no cell draws: the rule below would check nothing"
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        for out in cell.outputs:
            data = out.get("data", {})
            text = out.get("text", "") + data.get("text/plain", "")
            assert "image/png" in data or not UNDRAWN.search(text), (
                f"a figure shown as text, not drawn: {text[:80]!r} in cell {cell.source[:60]!r}"
            )
    for cell in drawing:
        rich = [o.get("data", {}) for o in cell.outputs if "data" in o]
        images = [d for d in rich if "image/png" in d]
        assert images, f"a cell that draws shows no image: {cell.source[:60]!r}"
        # Every figure it shows is an image (the comparison table, Markdown, is no figure).
        assert all("image/png" in d or "text/markdown" in d for d in rich), cell.source[:60]
        assert all(d["image/png"] for d in images), cell.source[:60]  # no empty PNG


def test_the_drawing_rule_catches_a_figure_jupyter_could_not_draw():
    """The check above fails on what a bare matplotlib figure shows without `%matplotlib
    inline`, and passes the same cell once it carries its image."""
    cell = nbformat.v4.new_code_cell("run.plot()")
    nb = nbformat.v4.new_notebook(cells=[cell])
    text = {"text/plain": "<Figure size 600x360 with 1 Axes>"}
    cell.outputs = [nbformat.v4.new_output("execute_result", data=text, execution_count=1)]
    with pytest.raises(AssertionError, match="a figure shown as text"):
        _assert_every_drawing_cell_shows_an_image(nb)
    cell.outputs = []
    with pytest.raises(AssertionError, match="a cell that draws shows no image"):
        _assert_every_drawing_cell_shows_an_image(nb)
    png = {**text, "image/png": "iVBORw0KGgo="}
    cell.outputs = [nbformat.v4.new_output("execute_result", data=png, execution_count=1)]
    _assert_every_drawing_cell_shows_an_image(nb)
    printed = nbformat.v4.new_output("stream", name="stdout", text="<Figure size 800x200>\n")
    cell.outputs.append(printed)  # print(fig): the figure's text, never drawn
    with pytest.raises(AssertionError, match="a figure shown as text"):
        _assert_every_drawing_cell_shows_an_image(nb)
