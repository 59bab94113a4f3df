"""A report as plain data: sections of paragraphs, tables and figures. Experiments build it
from saved results; `render.py` turns the same document into Markdown and into one
self-contained HTML file, so the two can never disagree."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

MISSING = "missing"


@dataclass
class Table:
    columns: list[str]
    rows: list[list[Any]]
    caption: str = ""


@dataclass
class Figure:
    path: str  # relative to the run directory (figures/NAME.png)
    caption: str
    # The matplotlib figure itself, when it was drawn in this process (a notebook shows it).
    image: Any = field(default=None, repr=False, compare=False)

    @classmethod
    def of(cls, plot: Any, caption: str) -> Figure:
        """A figure from `figures.Plot` (its saved path and the matplotlib figure)."""
        return cls(plot.path, caption, plot.figure)

    def _repr_png_(self) -> bytes | None:  # Jupyter shows the figure for the object
        if self.image is None:
            return None
        import io

        buf = io.BytesIO()
        self.image.savefig(buf, format="png", dpi=110, bbox_inches="tight")
        return buf.getvalue()


@dataclass
class Section:
    title: str
    question: str = ""  # the lab's question, quoted
    paragraphs: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    missing: str | None = None  # why this part has no results (shown, never left blank)


@dataclass
class Document:
    title: str
    summary: list[str]
    sections: list[Section]
    environment: Table | None = None


def fmt(value: Any, digits: int = 4) -> str:
    """Numbers as people read them; None and NaN show as missing, never as 0 or blank."""
    if value is None:
        return MISSING
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return MISSING
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
            return f"{value:.{digits - 1}e}"
        return f"{value:.{digits}g}" if abs(value) >= 1 else f"{value:.{digits}f}"
    return str(value)


def epochs(n: int) -> str:
    """ "1 epoch", "20 epochs": a count of epochs as a sentence says it."""
    return f"{n} epoch{'' if n == 1 else 's'}"


def mean_std(values: list[float]) -> str:
    """ "0.9812 ± 0.0011 (n=3)" — the spread a reader needs to judge a difference."""
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return MISSING
    mean = sum(values) / len(values)
    if len(values) == 1:
        return f"{fmt(mean)} (n=1)"
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    return f"{fmt(mean)} ± {_spread(std, mean)} (n={len(values)})"


def _spread(std: float, mean: float) -> str:
    """The std at the mean's decimals ("0.9946 ± 0.0001", not "± 1.155e-04"); one significant
    digit where that would round it to zero."""
    if 1e-3 <= abs(mean) < 1 and round(std, 4) > 0:
        return f"{std:.4f}"
    if 1e-3 <= abs(mean) < 1 or std == 0:
        return f"{std:.0e}" if std else "0"
    return fmt(std)
