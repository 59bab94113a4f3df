"""dfl from Python: train a model, load a run, look at it. The same machinery as `dfl train`:
the same config validation, run directories, resume and checkpoints, and the same errors,
raised as `DflError` subclasses with the CLI's one-line message (a notebook sees
`ConfigError: config key 'optim.lrr' ...`, never a `sys.exit`).

    import dfl
    run = dfl.train("cnn_lab", epochs=2, **{"data.train_subset": 2000})
    run.final["test_accuracy"], run.plot()
    model = dfl.load(run.run_dir).model
"""

from __future__ import annotations

import functools
import io
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from dfl.config import TrainConfig, UserKeys, build_config, merge, set_dotted
from dfl.errors import ConfigError, UnloadableRun
from dfl.training.run_dir import CONFIG, load_saved_config, read_history, read_status

# The common overrides by name, as the CLI's flags name them (dfl train --lr ...).
NAMED = {
    "epochs": "epochs",
    "batch_size": "batch_size",
    "lr": "optim.lr",
    "seed": "seed",
    "device": "device",
    "precision": "precision",
    "threads": "threads",
}


class InlineFigure(Figure):
    """A matplotlib figure that Jupyter shows as an image by itself: every figure dfl hands to
    a user is one (`Run.plot`, `Run.plot_reconstructions`, the lab's figures, drawn by
    dfl.experiments.figures).

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


@dataclass(frozen=True, repr=False)
class Run:
    """A training run as its directory holds it: the config it trained with, its status
    (completed, paused, failed, pruned, running), one record per epoch and its final metrics."""

    run_dir: Path
    config: TrainConfig
    # A plain str ("completed"), whether the run came from `train` or from `load`: the trainer
    # and status.json's reader give a RunStatus, which is turned into its value here.
    status: str
    history: list[dict[str, Any]] = field(default_factory=list)
    final: dict[str, Any] = field(default_factory=dict)
    reason: str | None = None  # why it failed or stopped early

    def __post_init__(self) -> None:
        object.__setattr__(self, "status", str(self.status))  # RunStatus -> its str value

    def __repr__(self) -> str:
        """One line: `Run('runs/train/mlp-...', model='mlp', status='completed', epochs=2,
        test_accuracy=0.9712)` (the config, history and final metrics are its attributes)."""
        parts = [
            repr(str(self.run_dir)),
            f"model={self.config.model!r}",
            f"status={self.status!r}",
            f"epochs={len(self.history)}",
        ]
        metric = next((k for k in ("test_accuracy", "test_loss") if k in self.final), None)
        if metric is not None and isinstance(self.final[metric], int | float):
            parts.append(f"{metric}={self.final[metric]:.4g}")
        if self.reason:
            reason = self.reason if len(self.reason) <= 60 else self.reason[:59] + "…"
            parts.append(f"reason={reason!r}")
        return f"Run({', '.join(parts)})"

    @functools.cached_property
    def trained(self) -> Any:
        """The model with its trained weights and its input pipeline (`Trained`):
        `run.trained.predict(images)`."""
        from dfl.training.trained import load_trained

        return load_trained(self.run_dir)

    @property
    def model(self) -> Any:
        """The trained `torch.nn.Module`, on the CPU in eval mode."""
        return self.trained.model

    def plot(self, metrics: list[str] | None = None) -> InlineFigure:
        """A matplotlib figure of the per-epoch curves (default: every loss and accuracy the
        run recorded), losses and accuracies on their own axes. Each epoch is a marker on a
        short run, so a one-epoch run shows its one point."""
        if not self.history:
            raise ConfigError(f"{self.run_dir} has no finished epoch yet: nothing to plot")
        recorded = [k for k in self.history[0] if k.endswith(("_loss", "_accuracy"))]
        metrics = metrics or recorded
        unknown = sorted(set(metrics) - set(recorded))
        if unknown:
            raise ConfigError(
                f"{self.run_dir} recorded no {', '.join(unknown)} (it has {', '.join(recorded)})"
            )
        kinds = [k for k in ("_loss", "_accuracy") if any(m.endswith(k) for m in metrics)]
        epochs = [h["epoch"] for h in self.history]
        marker = "o" if len(epochs) <= 30 else None
        fig = InlineFigure(figsize=(6 * len(kinds), 3.6))
        for ax, kind in zip(fig.subplots(1, len(kinds), squeeze=False)[0], kinds, strict=True):
            for m in (m for m in metrics if m.endswith(kind)):
                ax.plot(epochs, [h[m] for h in self.history], label=m, marker=marker, ms=4)
            ax.set(xlabel="epoch", ylabel=kind.strip("_"), title=self.run_dir.name)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))  # whole epochs
            if len(epochs) == 1:  # one point: an axis around it, not matplotlib's ±5%
                ax.set_xlim(epochs[0] - 0.5, epochs[0] + 0.5)
            ax.grid(alpha=0.3)
            ax.legend()
        return fig

    def plot_reconstructions(self, images: Any) -> InlineFigure:
        """An autoencoder run's reconstructions: `images` (uint8 (N, H, W), a tensor or an
        array: a few test digits) on the top row, the model's outputs for them
        (`run.trained.predict`) below."""
        import torch

        images = torch.as_tensor(images)
        if len(images) == 0:
            raise ConfigError("plot_reconstructions takes at least one image (got none)")
        rebuilt = self.trained.predict(images)
        if tuple(rebuilt.shape) != (len(images), 1, *images.shape[1:]):
            raise ConfigError(
                f"{self.run_dir} is not an autoencoder: model '{self.config.model}' maps "
                f"{tuple(images.shape)} images to outputs of shape {tuple(rebuilt.shape)}"
            )
        n = len(images)
        fig = InlineFigure(figsize=(max(n, 2), 2.2))
        axes = fig.subplots(2, n, squeeze=False)
        rows = (("input", images.numpy()), ("reconstruction", rebuilt[:, 0].numpy()))
        for row, (label, shown) in enumerate(rows):
            for ax, image in zip(axes[row], shown, strict=True):
                ax.imshow(image, cmap="gray")
                ax.axis("off")
            axes[row][0].set_title(label, fontsize=8, loc="left")
        return fig


def train(
    model_or_config: str | Path | TrainConfig | dict[str, Any],
    *,
    out: str | Path | None = None,
    resume: bool = False,
    **overrides: Any,
) -> Run:
    """Train one model, as `dfl train` does, and return its run.

    `model_or_config` is a registered model's name (`dfl.models.list()`), a TOML config file,
    a `TrainConfig`, or a dict of config keys. `overrides` set config keys: the common ones by
    name (`epochs`, `batch_size`, `lr`, `seed`, `device`, `precision`, `threads`) and any other
    by its dotted key, as `--set` takes it: `dfl.train("mlp", lr=3e-4, **{"data.train_subset":
    2000, "model_args.hidden": [128]})`. A key given twice (`lr` and `optim.lr`) is refused.

    The run is written to `out` (default `runs/train/MODEL-TIME`); `resume=True` continues an
    unfinished run there from its newest checkpoint, or returns a finished one as it is.
    Progress shows as a bar (a widget in Jupyter). Ctrl-C (a notebook's interrupt) stops the
    run and keeps its checkpoints: train again with `resume=True` to go on from the newest.

    Raises `ConfigError` for a bad key or value (naming the key), `DataError` for data that
    cannot be read, `TrainingDiverged` for a NaN loss, and other `DflError`s with one-line
    messages."""
    from dfl.training.trainer import fit

    config_file, tree = _starting_point(model_or_config)
    cfg = build_config(config_file, merge(tree, _overrides(overrides)))
    run_dir = out if out is not None else _default_out(cfg)  # fit refuses "" as it is
    result = fit(cfg, run_dir, resume=resume)
    return Run(result.run_dir, cfg, str(result.status), result.history, result.final, result.reason)


def load(run_dir: str | Path) -> Run:
    """The run in `run_dir`, finished or not (a paused run resumes with `dfl.train(...,
    resume=True)`); `UnloadableRun` when it is not a dfl run directory."""
    run_dir = Path(run_dir)
    cfg = load_saved_config(run_dir) if run_dir.is_dir() else None
    if cfg is None:
        raise UnloadableRun(f"{run_dir} is not a dfl run directory (it has no {CONFIG})")
    status = read_status(run_dir) or {"status": "running"}
    return Run(
        run_dir,
        cfg,
        status["status"],
        read_history(run_dir),
        status.get("final", {}),
        status.get("reason"),
    )


def _starting_point(what: Any) -> tuple[Path | None, dict[str, Any]]:
    """(config file, config tree) for a model name, a file, a TrainConfig or a dict."""
    if isinstance(what, TrainConfig):
        return None, what.model_dump(mode="json")
    if isinstance(what, dict):
        tree: dict[str, Any] = {}
        for key, value in what.items():
            set_dotted(tree, key, value)
        return None, tree
    if isinstance(what, Path) or (isinstance(what, str) and what.endswith(".toml")):
        return Path(what), {}
    if isinstance(what, str):
        return None, {"model": what}
    raise ConfigError(
        f"dfl.train takes a model name, a config file, a TrainConfig or a dict of config keys, "
        f"not {type(what).__name__}"
    )


def _overrides(given: dict[str, Any]) -> dict[str, Any]:
    """The config tree of `train`'s keyword arguments; a key set twice (`lr=` and
    `optim.lr=`, `data=` and `data.train_subset=`) is refused."""
    keys = UserKeys()
    for name, value in given.items():
        keys.set(NAMED.get(name, name), value, f"{name}=")
    return keys.tree


def _default_out(cfg: TrainConfig) -> Path:
    return Path("runs/train") / f"{cfg.model}-{time.strftime('%Y%m%d-%H%M%S')}"
