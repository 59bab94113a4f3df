"""The few plot shapes the report needs, drawn with matplotlib's Agg backend (no display) and
saved as PNG files under the reproduction's figures/ folder."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from dfl.runtime.atomic import atomic_file
from dfl.training.inline_figure import InlineFigure


class Plot(NamedTuple):
    path: str  # the saved PNG, relative to the reproduction (figures/NAME.png)
    figure: Figure  # the same figure, to show inline in a notebook


def _subplots(*grid: int, figsize: tuple[float, float], **kw: Any) -> tuple[Figure, Any]:
    """A figure of its own, outside pyplot's global state: nothing to close, no display
    needed, and a notebook shows it when it is returned (an `InlineFigure`: Jupyter shows it
    as an image without `%matplotlib inline`, see dfl.training.inline_figure)."""
    fig = InlineFigure(figsize=figsize)
    return fig, fig.subplots(*grid, **kw)


def _save(fig: Figure, path: Path) -> Plot:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as f:  # a full disk leaves the old figure, not half a new one
        fig.savefig(f, format="png", dpi=110, bbox_inches="tight")  # fits every label
    return Plot(str(Path("figures") / path.name), fig)


def curves(
    path: Path,
    series: dict[str, Sequence[float]],
    xlabel: str,
    ylabel: str,
    title: str = "",
    logy: bool = False,
) -> Plot:
    """One line per named series against epoch 1..N (whole epochs on the axis; a marker on
    each point of a short series, so one epoch still shows). The legend sits outside the axes,
    where it covers no line and no label."""
    fig, ax = _subplots(figsize=(7, 4))
    longest = max((len(ys) for ys in series.values()), default=0)
    for name, ys in series.items():
        marker = "o" if longest <= 12 else None
        ms = 3 if longest > 1 else 6  # a lone point is all there is: big enough to see
        ax.plot(range(1, len(ys) + 1), ys, label=name, linewidth=1.4, marker=marker, ms=ms)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    if longest == 1:  # one epoch: an axis around it, not matplotlib's ±5% of fractions
        ax.set_xlim(0.5, 1.5)
    if logy:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    _legend_outside(ax)
    return _save(fig, path)


def trend(
    path: Path,
    xs: Sequence[float],
    series: dict[str, Sequence[Sequence[float]]],
    xlabel: str,
    ylabel: str,
    title: str = "",
    logx: bool = False,
) -> Plot:
    """One line per named series through the mean of its values at each x, with a bar for
    their standard deviation (the seeds' spread): `series[name][i]` holds the values at
    `xs[i]`. The x axis is labelled at the measured points only."""
    fig, ax = _subplots(figsize=(7, 4))
    for name, per_x in series.items():
        means = [float(np.mean(v)) for v in per_x]
        stds = [float(np.std(v, ddof=1)) if len(v) > 1 else 0.0 for v in per_x]
        ax.errorbar(xs, means, yerr=stds, label=name, marker="o", ms=4, capsize=3, linewidth=1.4)
    if logx:
        ax.set_xscale("log")
    ax.set_xticks(list(xs), [f"{x:,.0f}" for x in xs])
    ax.minorticks_off()
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    _legend_outside(ax)
    return _save(fig, path)


def _legend_outside(ax: Any) -> None:
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)


def bars(
    path: Path,
    groups: list[str],
    series: dict[str, Sequence[float]],
    ylabel: str,
    title: str = "",
    errors: dict[str, Sequence[float]] | None = None,
    ylim: tuple[float, float] | None = None,
) -> Plot:
    """Grouped bars: one group per label, one bar per series (with optional error bars). Long
    group labels are wrapped onto lines of their own, so neighbours never run together."""
    fig, ax = _subplots(figsize=(max(7.0, 1.2 * len(groups)), 4))
    width = 0.8 / max(1, len(series))
    x = np.arange(len(groups))
    for i, (name, values) in enumerate(series.items()):
        err = (errors or {}).get(name)
        ax.bar(x + i * width, values, width, label=name, yerr=err, capsize=3)
    wrapped = [textwrap.fill(g, 14) for g in groups]
    ax.set_xticks(x + width * (len(series) - 1) / 2, wrapped, fontsize=8)
    ax.set(ylabel=ylabel, title=title)
    if ylim:
        ax.set_ylim(*ylim)
    ax.grid(axis="y", alpha=0.3)
    _legend_outside(ax)
    return _save(fig, path)


def image_grid(
    path: Path,
    rows: dict[str, np.ndarray],
    title: str = "",
    cmap: str = "gray",
    symmetric: bool = False,
) -> Plot:
    """Rows of small images (each array (N, H, W)), one labelled row per entry. A row with no
    images stays an empty, labelled row (say, a model that misclassified nothing). With
    `symmetric`, each image's colour scale is centred on zero (weights: sign shows)."""
    n = max(1, *(len(v) for v in rows.values()))
    fig, axes = _subplots(len(rows), n, figsize=(n * 0.9, len(rows) * 1.0), squeeze=False)
    for r, (label, images) in enumerate(rows.items()):
        for c in range(n):
            ax = axes[r][c]
            ax.axis("off")
            if c < len(images):
                bound = float(np.abs(images[c]).max()) or 1.0
                scale = {"vmin": -bound, "vmax": bound} if symmetric else {}
                ax.imshow(images[c], cmap=cmap, **scale)
        axes[r][0].set_title(label, fontsize=7, loc="left")
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def scatter(
    path: Path,
    points: dict[str, tuple[Sequence[float], Sequence[float]]],
    xlabel: str,
    ylabel: str,
    title: str = "",
    logx: bool = False,
    labels: dict[str, Sequence[str]] | None = None,
) -> Plot:
    """Points per series; `labels` names each point of a series beside it."""
    fig, ax = _subplots(figsize=(8, 5) if labels else (7, 4))
    for name, (xs, ys) in points.items():
        ax.scatter(xs, ys, label=name, s=18)
        for x, y, text in zip(xs, ys, (labels or {}).get(name, ()), strict=False):
            if text:
                ax.annotate(text, (x, y), xytext=(4, 3), textcoords="offset points", fontsize=7)
    if logx:
        ax.set_xscale("log")
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    _legend_outside(ax)
    return _save(fig, path)


def heatmap(
    path: Path,
    matrix: np.ndarray,
    xlabel: str,
    ylabel: str,
    title: str = "",
    annotate: bool = False,
    log: bool = False,
    cmap: str = "viridis",
) -> Plot:
    """One matrix as a colour map (a confusion matrix, attention weights), numbers optional."""
    matrix = np.asarray(matrix, dtype=float)
    fig, ax = _subplots(figsize=(5.5, 4.6))
    if annotate:  # a small matrix: a tick, and a number, on every row and column
        ax.set_xticks(range(matrix.shape[1]))
        ax.set_yticks(range(matrix.shape[0]))
    shown = np.log1p(matrix) if log else matrix
    image = ax.imshow(shown, cmap=cmap)
    fig.colorbar(image, ax=ax, fraction=0.046, label="log(1 + count)" if log else None)
    if annotate:
        for (i, j), v in np.ndenumerate(matrix):
            if v:
                ax.text(
                    j,
                    i,
                    f"{v:g}",
                    ha="center",
                    va="center",
                    fontsize=6,
                    color="white" if shown[i, j] > shown.max() / 2 else "black",
                )
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    return _save(fig, path)


def overlapping_ticks(fig: Figure) -> list[tuple[str, str]]:
    """Pairs of tick labels whose drawn boxes overlap (the smear of crowded axis labels), as
    matplotlib lays them out: empty when every label can be read."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    pairs = []
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            labels = [t for t in axis.get_ticklabels() if t.get_visible() and t.get_text()]
            boxes = [t.get_window_extent(renderer) for t in labels]
            for i in range(len(labels)):
                for j in range(i + 1, len(labels)):
                    if boxes[i].overlaps(boxes[j]):
                        pairs.append((labels[i].get_text(), labels[j].get_text()))
    return pairs
