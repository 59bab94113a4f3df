"""What a newcomer reads: "1 epoch", not "1 epochs"; the lab's figures drawn as images in
Jupyter without `%matplotlib inline`, a one-epoch curve showing its point on a whole-epoch axis."""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

from dfl.experiments import cnn, figures, vit
from dfl.experiments.document import epochs


def test_epochs_are_counted_as_a_sentence_counts_them():
    assert [epochs(n) for n in (1, 2, 20)] == ["1 epoch", "2 epochs", "20 epochs"]


def test_a_one_epoch_profile_says_1_epoch_beside_the_lab_number():
    runs = {"epochs": 1, "final": [0.106]}
    detail = cnn._notebook_compare("acc", runs, "final", "why", 0.01).detail
    assert detail == "not comparable: 1 epoch in this profile, the lab 20"
    row = {"epochs": 1, "subset": 1000, "test_accuracy": 0.2, "config": [64, 6, 8, 128]}
    assert vit._config_compare(row).detail == "not comparable: 1 epoch on 1,000 images"
    row["epochs"] = 3
    assert vit._config_compare(row).detail == "not comparable: 3 epochs on 1,000 images"


def _shown_by_ipython(obj: object) -> set[str]:
    """The MIME types a fresh IPython display (no `%matplotlib inline`) shows `obj` as."""
    from IPython.core.formatters import DisplayFormatter

    data, _ = DisplayFormatter().format(obj)
    return set(data)


def test_a_one_epoch_curve_is_an_image_with_its_point_on_epoch_1(tmp_path: Path):
    plot = figures.curves(tmp_path / "c.png", {"a": [0.106], "b": [0.2]}, "epoch", "accuracy")
    fig = plot.figure
    assert "image/png" not in _shown_by_ipython(Figure())  # what it was: text only
    assert "image/png" in _shown_by_ipython(fig)
    lines = fig.axes[0].get_lines()
    assert [list(line.get_xdata()) for line in lines] == [[1], [1]]
    assert all(line.get_marker() == "o" for line in lines)
    shown = [t for t in fig.axes[0].get_xticks() if 0.5 <= t <= 1.5]
    assert shown == [1]  # a whole epoch, not 0.945, 0.960, ...
    assert fig.axes[0].get_xlim() == (0.5, 1.5)
