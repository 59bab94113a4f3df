"""The figure type of every figure dfl hands to a user (`Run.plot`, `Run.plot_reconstructions`,
the lab's figures drawn by dfl.experiments.figures). A module of its own so that matplotlib is
imported only when a figure is drawn, not by every training (run.py)."""

from __future__ import annotations

import io

from matplotlib.figure import Figure


class InlineFigure(Figure):
    """A matplotlib figure that Jupyter shows as an image by itself.

    Why: dfl draws outside pyplot (no global state, nothing to close, no display needed), and
    IPython only knows how to show a bare `matplotlib.figure.Figure` once `%matplotlib inline`
    (or a pyplot import under the inline backend) has registered a formatter for it; before
    that, a cell that returns one shows the text `<Figure size 600x360 with 1 Axes>` and no
    image. `_repr_png_` is the method IPython's display looks for on any object, so this one
    shows with or without the magic (with it, IPython's own formatter draws the figure instead:
    one image either way)."""

    def _repr_png_(self) -> bytes:
        buf = io.BytesIO()
        self.savefig(buf, format="png", dpi=110, bbox_inches="tight")  # fits every label
        return buf.getvalue()
