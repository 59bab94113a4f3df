"""notebooks/: each lab section's notebook runs top to bottom in a real Jupyter kernel (nbclient,
ipykernel) at its committed settings (the smoke profile, on the embedded MNIST), and is
committed without outputs."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))


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


@pytest.mark.mnist
@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_top_to_bottom(path: Path, tmp_path: Path):
    nb = nbformat.read(path, as_version=4)
    # The kernel starts in tmp_path: the runs land there, not in the checkout.
    client = NotebookClient(
        nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()  # raises CellExecutionError, naming the cell, when one fails
    outputs = _outputs(nb)
    assert not [o for o in outputs if o.output_type == "error"]
    # The lab's numbers beside ours, as a table, and figures shown inline.
    shown = [
        o.get("data", {}) for o in outputs if o.output_type in ("execute_result", "display_data")
    ]
    assert any("| lab number |" in d.get("text/markdown", "") for d in shown)
    assert sum("image/png" in d for d in shown) >= 2
    assert (tmp_path / "runs" / "notebooks-smoke" / "report.html").exists()
    printed = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    if path.name.startswith("3.1"):  # a misspelled key: the CLI's one line, as a ConfigError
        assert "config key 'optim.lrr': unknown key" in printed
    if path.name.startswith("3.3"):
        assert "ShapeError patch 5 does not divide the 28x28 image" in printed
