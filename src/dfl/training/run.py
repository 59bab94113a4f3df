"""A training run, start to end, and the one type that describes one: `fit` trains a config in
its run directory (trainer.py's loop, run_dir.py's files) and returns a `Run`, the same `Run`
that `dfl.train` and `dfl.load` return (dfl.api) and that sweeps, experiments and the CLI read.

A module apart from the trainer: a `Run` loads its trained model (trained.py), which is built
as the trainer builds it, so the trainer cannot import this module.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dfl import models
from dfl.arguments import checked
from dfl.config import TrainConfig, config_to_toml
from dfl.data import Dataset, load_dataset
from dfl.errors import ConfigError, DflError, one_line, option, out_of_memory
from dfl.runtime.atomic import atomic_write_bytes
from dfl.runtime.interrupts import deferred_interrupt
from dfl.runtime.run_lock import claim_run_dir, unwritable
from dfl.training import layerwise
from dfl.training.run_dir import (
    CONFIG,
    STATUS,
    DamagedHistory,
    RunStatus,
    check_same_config,
    finished_history,
    read_final_weights,
    read_history,
    read_status,
    refuse_foreign_files,
    write_status,
)
from dfl.training.trainer import (
    Callback,
    Outcome,
    StopRun,
    Trainer,
    check_freeze,
    resolve_device,
    resolve_precision,
)

if TYPE_CHECKING:
    from dfl.training.inline_figure import InlineFigure


@dataclass(frozen=True, repr=False)
class Run:
    """A training run as its directory holds it: the config it trained with, its status
    (completed, paused, failed, pruned, running), one record per epoch and its final metrics."""

    run_dir: Path
    config: TrainConfig
    # A plain str ("completed"), whether the run came from `fit` or from `load`: the trainer
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

    @checked("Run.plot")
    def plot(self, metrics: Sequence[str] | None = None) -> InlineFigure:
        """A matplotlib figure of the per-epoch curves (default: every loss and accuracy the
        run recorded), losses and accuracies on their own axes. Each epoch is a marker on a
        short run, so a one-epoch run shows its one point."""
        from matplotlib.ticker import MaxNLocator

        from dfl.training.inline_figure import InlineFigure

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
        from dfl.training.inline_figure import InlineFigure
        from dfl.training.trained import as_images

        images = as_images(images, "plot_reconstructions")
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


def default_run_dir(model: str, root: Path = Path("runs/train")) -> Path:
    """Where a run given no directory goes: ROOT/MODEL-DATE-TIME, with -2, -3, ... when that
    is taken (runs started within one second would otherwise meet in one directory)."""
    stem = f"{model}-{time.strftime('%Y%m%d-%H%M%S')}"
    taken = {p.name for p in root.glob(f"{stem}*")} if root.is_dir() else set()
    return root / next(
        name for name in (stem, *(f"{stem}-{k}" for k in range(2, len(taken) + 3)))
        if name not in taken
    )  # fmt: skip


def _same_precision(old: str, new: str, cfg: TrainConfig) -> bool:
    """'auto' is the same as what it resolves to for this model and device, so a run made
    with fp32 (the default before 'auto') resumes under 'auto' where auto picks fp32 too."""
    if old == new or "auto" not in (old, new):
        return old == new
    model, device = models.create(cfg.model, **cfg.model_args), resolve_device(cfg.device)
    return resolve_precision(old, device, model) == resolve_precision(new, device, model)


def fit(
    cfg: TrainConfig,
    run_dir: str | Path,
    *,
    dataset: Dataset | None = None,
    resume: bool = False,
    callbacks: Iterable[Callback] = (),
    log: Callable[[str], None] | None = None,
    epoch_bar: bool = True,
    until_epoch: int | None = None,
) -> Run:
    """Train `cfg` in `run_dir`. With `resume`, a completed run is returned as it is and an
    unfinished one continues from its newest checkpoint, ending as an uninterrupted run would.
    The run holds `run_dir` exclusively while it lives (dfl/runtime/run_lock.py); a run that cannot
    start leaves nothing behind: no directory it created, no file it wrote."""
    run_dir = _run_dir(run_dir)
    if cfg.pretrain:  # a folder of phase runs, one after another; the last one's is the result
        if callbacks or until_epoch:
            raise ConfigError("a layer-wise pretrained run is not paused or watched by a sweep")
        return _fit_phases(cfg, run_dir, dataset, resume, log, epoch_bar)
    with claim_run_dir(run_dir) as claim:
        ready = _start(cfg, run_dir, claim, dataset, resume, callbacks, log, until_epoch)
        if isinstance(ready, Run):
            return ready
        trainer, status_of = ready
        with _paused_when_stopped([(trainer, status_of)]):
            outcome = _train_alone(trainer, epoch_bar, until_epoch)
        return _record(trainer, status_of, outcome)


@contextlib.contextmanager
def _paused_when_stopped(runs: list[tuple[Trainer, Callable[..., None]]]) -> Iterator[None]:
    """Ctrl-C, SIGTERM or a reader gone while `runs` train: each one still running is recorded
    paused, as a run stopped at `until_epoch` is (it said running with no process behind it;
    paused, `dfl.load` gives its newest checkpoint's model), and the interrupt goes on. A
    SIGKILL leaves it running: `--resume` continues either."""
    try:
        yield
    except KeyboardInterrupt:  # ReaderGone is one
        for trainer, status_of in runs:
            with contextlib.suppress(Exception):  # recording must not mask the interrupt
                if read_status(trainer.run_dir)["status"] == RunStatus.RUNNING:
                    # no epoch count: the newest checkpoint may be behind the history
                    status_of(RunStatus.PAUSED, reason="interrupted; resume to go on")
        raise


def _fit_phases(
    cfg: TrainConfig,
    run_dir: Path,
    dataset: Dataset | None,
    resume: bool,
    log: Callable[[str], None] | None,
    epoch_bar: bool,
) -> Run:
    """A layer-wise pretrained run (dfl/training/layerwise.py): its config in `run_dir`, so
    `dfl train --out RUN --resume` finds it, then each phase's run in turn in its folder."""
    named = layerwise.phases(cfg, run_dir)
    layerwise.check_folder(run_dir, [CONFIG, *named])
    # The later phases' freeze lists, before the first phase trains (not after two).
    assert cfg.pretrain is not None
    check_freeze(cfg, cfg.pretrain.classifier_freeze, "pretrain.classifier_freeze")
    check_freeze(cfg, cfg.freeze, "freeze")
    if (run_dir / CONFIG).exists():  # another config into the same folder is refused
        check_same_config(run_dir, cfg, lambda old, new: _same_precision(old, new, cfg))
        layerwise.rebase_phases(run_dir, named)
    fresh = not run_dir.exists()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(run_dir / CONFIG, config_to_toml(cfg).encode())
    except OSError as e:
        raise unwritable(run_dir, e) from None
    try:
        for name, phase in named.items():
            if log:
                log(f"{name}: {phase.epochs} epoch{'' if phase.epochs == 1 else 's'}")
            run = fit(phase, run_dir / name, dataset=dataset, resume=resume, log=log,
                      epoch_bar=epoch_bar)  # fmt: skip
    except BaseException:
        if fresh and [p.name for p in run_dir.iterdir()] == [CONFIG]:  # nothing started
            shutil.rmtree(run_dir)
        raise
    return run


def fit_group(
    cfgs: list[TrainConfig],
    run_dirs: list[str | Path],
    *,
    fuse: str = "auto",
    dataset: Dataset | None = None,
    resume: bool = False,
    log: Callable[[str], None] | None = None,
    epoch_bar: bool = True,
) -> list[Run]:
    """Train each config in its run directory, as `fit` would one by one; runs that differ
    only in their seed, learning rate or weight decay train as one fused model
    (dfl/training/fused.py) with `fuse` "on", or
    with "auto" where that was measured to pay. Every run is recorded however the others end;
    the first that failed then raises its error. Layer-wise pretrained runs train one after
    another (each is several runs of its own), never fused."""
    if any(cfg.pretrain for cfg in cfgs):
        if fuse == "on":
            raise ConfigError("--fuse on: layer-wise pretrained runs train one seed at a time")
        ended: list[Run | Exception] = []
        for cfg, run_dir in zip(cfgs, run_dirs, strict=True):
            try:
                ended.append(fit(cfg, run_dir, dataset=dataset, resume=resume, log=log,
                                 epoch_bar=epoch_bar))  # fmt: skip
            except Exception as e:  # recorded in its folder; the later runs still train
                ended.append(e)
    else:
        ended = fit_each(
            cfgs, run_dirs, fuse=fuse, dataset=dataset, resume=resume, log=log,
            epoch_bar=epoch_bar, start_errors=False,
        )  # fmt: skip
    for run in ended:
        if isinstance(run, BaseException):
            raise run
    return ended  # type: ignore[return-value]


def fit_each(
    cfgs: list[TrainConfig],
    run_dirs: list[str | Path],
    *,
    fuse: str = "auto",
    dataset: Dataset | None = None,
    resume: bool = False,
    callbacks: list[Iterable[Callback]] | None = None,
    log: Callable[[str], None] | None = None,
    epoch_bar: bool = True,
    until_epoch: int | None = None,
    start_errors: bool = True,
) -> list[Run | Exception]:
    """`fit_group`, with each run's own `callbacks`, that gives each run's end: its `Run`, or
    the error that ended it or, with `start_errors`, kept it from starting (a sweep's trials
    fail one by one; without it, a run that cannot start raises before any trains)."""
    from dfl.training.fused import fuse_blocker, fuse_pays, train_fused

    run_dirs = [_run_dir(d) for d in run_dirs]
    if any(cfg.pretrain for cfg in cfgs):
        raise ConfigError("layer-wise pretrained runs train one at a time (fit), not as a group")
    if len(set(run_dirs)) != len(run_dirs):
        raise DflError("two runs of the group share a run directory")
    blocker = fuse_blocker(cfgs)
    if fuse == "on" and blocker:
        raise ConfigError(f"--fuse on: these runs cannot train as one: {blocker}")
    callbacks = callbacks or [()] * len(cfgs)
    with contextlib.ExitStack() as claims:
        if dataset is None:
            dataset = load_dataset(cfgs[0].data.dataset, cfgs[0].data.data_dir)
        ended: list[Run | Exception | None] = []
        pending = []
        for cfg, run_dir, calls in zip(cfgs, run_dirs, callbacks, strict=True):
            claim = claims.enter_context(claim_run_dir(run_dir))
            try:
                ready = _start(cfg, run_dir, claim, dataset, resume, calls, log, until_epoch)
            except Exception as e:
                if not start_errors:
                    raise
                claim.give_back()  # as a lone run that cannot start: nothing left behind
                ready = e
            ended.append(None if isinstance(ready, tuple) else ready)
            pending += [ready] if isinstance(ready, tuple) else []
        trainers = [trainer for trainer, _ in pending]
        fused = fuse != "off" and len(trainers) > 1 and not blocker
        if fused and fuse == "auto":
            fused = fuse_pays(trainers[0].cfg, trainers[0].model)
        with _paused_when_stopped(pending):
            if fused:
                if log:
                    log(f"training {len(trainers)} runs as one fused model")
                try:
                    outcomes = train_fused(trainers, epoch_bar, until_epoch)
                except Exception as e:  # the group's own step failed (out of memory): each run's
                    outcomes = [e] * len(trainers)
                done = [
                    _ended(trainer, status_of, o)
                    for (trainer, status_of), o in zip(pending, outcomes, strict=True)
                ]
            else:  # each recorded as soon as it ends, as `fit` one after another would
                done = [
                    _ended(t, status_of, _train_alone(t, epoch_bar, until_epoch))
                    for t, status_of in pending
                ]
        finished = iter(done)
        return [next(finished) if r is None else r for r in ended]


def _ended(trainer: Trainer, status_of: Callable[..., None], outcome: Outcome) -> Run | Exception:
    """`_record`, giving the error a failed run raises rather than raising it."""
    try:
        return _record(trainer, status_of, outcome)
    except Exception as e:
        return e


def _run_dir(run_dir: str | Path) -> Path:
    if isinstance(run_dir, str) and not run_dir.strip():
        raise DflError(f"the run directory is empty (give a directory with {option('out')})")
    return Path(run_dir)


def _start(
    cfg: TrainConfig,
    run_dir: Path,
    claim: Any,
    dataset: Dataset | None,
    resume: bool,
    callbacks: Iterable[Callback],
    log: Callable[[str], None] | None,
    until_epoch: int | None,
) -> Run | tuple[Trainer, Callable[..., None]]:
    """Check `run_dir` (held by `claim`) against `cfg`, and either return the run it already
    holds (a completed one resumed, or one paused at or past `until_epoch`) or build its
    `Trainer` and mark it running; returns the trainer and its status writer."""
    status = read_status(run_dir)
    if status is None:
        refuse_foreign_files(run_dir)
    if status is not None and not resume:
        raise DflError(
            f"{run_dir} already holds a run ({status['status']}); pass {option('resume')} to "
            f"continue or reuse it, or choose another {option('out')}"
        )
    if status is not None:
        check_same_config(run_dir, cfg, lambda old, new: _same_precision(old, new, cfg))
        if status["status"] == RunStatus.COMPLETED:
            if not until_epoch:  # reused whole, it hands on its weights: refused if damaged
                read_final_weights(run_dir)
            history = finished_history(run_dir)
            return Run(run_dir, cfg, status["status"], history, status.get("final", {}))
        if until_epoch:
            with contextlib.suppress(DamagedHistory):  # the checkpoint holds the curve
                history = read_history(run_dir)
                if len(history) >= until_epoch:
                    return Run(run_dir, cfg, status["status"], history, status.get("final", {}))
    # Everything that can be wrong with the config or the data fails here, before
    # anything is written into the run directory.
    data = dataset if dataset is not None else load_dataset(cfg.data.dataset, cfg.data.data_dir)
    if status is not None and status.get("data", data.fingerprint) != data.fingerprint:
        raise DflError(
            f"{run_dir} was trained on other data (fingerprint {status['data']}, this data "
            f"{data.fingerprint}): resume it on the data it started with, or use another "
            f"{option('out')}"
        )
    with deferred_interrupt():  # torch imports torch._dynamo for the first optimiser
        trainer = Trainer(cfg, run_dir, data, callbacks, log)
    try:
        for name in (CONFIG, STATUS):
            claim.new_file(run_dir / name)
        atomic_write_bytes(run_dir / CONFIG, config_to_toml(cfg).encode())
        status_of = functools.partial(write_status, run_dir, data=data.fingerprint)
        status_of(RunStatus.RUNNING, pid=os.getpid(), started=time.time())
    except OSError as e:
        raise unwritable(run_dir, e) from None
    claim.started = True
    return trainer, status_of


def _train_alone(trainer: Trainer, epoch_bar: bool, until_epoch: int | None = None) -> Outcome:
    """How `trainer`'s run ended: its status, or the exception that ended it."""
    try:
        return trainer.run(epoch_bar, until_epoch)
    except Exception as e:
        return e


def _record(trainer: Trainer, status_of: Callable[..., None], outcome: Outcome) -> Run:
    """Record in status.json (through `status_of`, which adds the data's fingerprint) how the
    run ended: `outcome` is its status, or the exception that ended it (raised on, after
    recording, unless it was a StopRun)."""
    run = functools.partial(Run, trainer.run_dir, trainer.cfg)
    if isinstance(outcome, StopRun):
        status_of(outcome.status, reason=outcome.reason, epochs_run=len(trainer.history))
        return run(outcome.status, trainer.history, {}, outcome.reason)
    if isinstance(outcome, BaseException):
        e = outcome
        memory = out_of_memory(e)
        reason = str(e) if isinstance(e, DflError) else f"{type(e).__name__}: {e}"
        if memory:
            reason = (
                f"out of memory in epoch {len(trainer.history) + 1} ({one_line(e)}); lower "
                "batch_size or the model's size, then resume (the checkpoints are kept)"
            )
        with contextlib.suppress(OSError):
            status_of(RunStatus.FAILED, reason=reason)
        if memory:
            raise DflError(f"{trainer.run_dir}: {reason}", exit_code=1) from None
        raise e
    if outcome == RunStatus.PAUSED:
        status_of(RunStatus.PAUSED, epochs_run=len(trainer.history))
    else:
        status_of(RunStatus.COMPLETED, final=trainer.final)
    return run(outcome, trainer.history, trainer.final)
