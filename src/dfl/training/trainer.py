"""THE training loop. It knows nothing about any particular model: the registry builds the
model, an objective supplies the step, callbacks watch each epoch (a sweep's pruner, a
figure saver). Everything a run produces lands in its run directory:

    config.toml     the resolved config: `dfl train --config RUN/config.toml` repeats the run
    metrics.jsonl   one line per epoch (train/val loss and accuracy, lr, seconds, samples/s),
                    rewritten with each checkpoint
    status.json     running | paused | completed | failed | pruned, with reason and final metrics
    checkpoints/    the last two checkpoints, written atomically (see checkpoint.py)
    model.safetensors  the final weights (the best validation epoch's with restore_best)

How those files are written and read back is run_dir.py's; what a checkpoint saves and a
resume sets is checkpoint.py's; the best epoch and early stopping are best.py's. `fit`, which
claims the run directory, runs a `Trainer` and records how it ended, is run.py's.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from dfl import models
from dfl.config import TrainConfig
from dfl.data import Dataset, random_subset, train_val_split
from dfl.data.batches import Split, affine_draws, model_input
from dfl.errors import ConfigError, TrainingDiverged, UnloadableRun, one_line, option, out_of_memory
from dfl.models.registry import described
from dfl.objectives import Objective, objective_for
from dfl.runtime.context import RunContext, run_context
from dfl.runtime.interrupts import say
from dfl.runtime.onednn import cpu_swaps
from dfl.training import checkpoint
from dfl.training.best import Best
from dfl.training.device_step import DeviceStep
from dfl.training.run_dir import (
    CHECKPOINTS,
    METRICS,
    WEIGHTS,
    RunStatus,
    read_final_weights,
    write_metrics,
)

Callback = Callable[[dict[str, Any]], None]
Outcome = RunStatus | BaseException  # how a run ended: its status, or what stopped it
NONFINITE_CHECK_EVERY = 25  # steps between checks: each check waits for the device


class StopRun(Exception):
    """Raised by a callback to end a run early with a status (e.g. "pruned" by a sweep)."""

    def __init__(self, status: RunStatus | str, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = RunStatus(status), reason


# ---------------------------------------------------------------------------------------------
# Setup: device, precision, seeds, data


def resolve_device(name: str) -> torch.device:
    """auto: cuda > mps > cpu. Asking for an absent device is an error, not a silent fallback."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    available = {
        "cpu": True,
        "cuda": torch.cuda.is_available(),
        "mps": torch.backends.mps.is_available(),
    }.get(name)
    if available is None:
        raise ConfigError(f"device must be auto, cpu, cuda or mps, not {name!r}")
    if not available:
        raise ConfigError(
            f"device '{name}' is not available on this machine (use {option('device', 'auto')})"
        )
    return torch.device(name)


def native_bf16(device: torch.device) -> bool:
    """Whether this CPU computes bf16 in hardware (AVX512-BF16 or AMX), where oneDNN's bf16
    kernels beat fp32; elsewhere bf16 is emulated and slower."""
    if device.type != "cpu":
        return False
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN
        return False


def is_convolutional(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


def resolve_precision(precision: str, device: torch.device, model: nn.Module) -> str:
    """'auto' is bf16 autocast for convolutional models on a CPU with native bf16, and fp32
    everywhere else. Measured (benchmarks/RESULTS.md): bf16 trains the exploration CNN about
    2x faster with quick-profile accuracies within seed noise of fp32, but the notebook ViT
    at most 1.1x and the modern ViT 0.5x (their matmuls are too small for the bf16 units), the
    dense autoencoders' steps from 0.7x (enc 32) to 1.3x, and the stacked autoencoder's quick
    experiment 1.04x end to end with one number outside seed noise, so they keep fp32's
    precision. On CUDA bf16 steps the graphed CNNs and ViTs 1.15-1.24x faster (benchmarks/GPU.md)
    but its accuracies there have not been compared with fp32's, so CUDA keeps fp32."""
    if precision != "auto":
        return precision
    return "bf16" if native_bf16(device) and is_convolutional(model) else "fp32"


def autocast_for(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("precision 'fp16' needs a CUDA device (use bf16 on CPU)")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    # A CUDA graph cannot hold autocast's cache of cast weights (PyTorch's graph notes); the
    # casts are then part of every step, replayed with it.
    return torch.autocast(device.type, dtype=dtype, cache_enabled=device.type != "cuda")


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def global_rng_state(device: torch.device) -> torch.Tensor:
    """The state of the generator dropout draws from on `device`."""
    return torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.get_rng_state()


def set_global_rng_state(device: torch.device, state: torch.Tensor) -> None:
    if device.type == "cuda":
        torch.cuda.set_rng_state(state, device)
    else:
        torch.set_rng_state(state)


def subset_seed(cfg: TrainConfig) -> int:
    """The seed that draws a run's lab-faithful subsets (data.train_subset, data.test_subset):
    data.subset_seed, or without one the run's own seed."""
    return cfg.seed if cfg.data.subset_seed is None else cfg.data.subset_seed


def _subset(
    x: torch.Tensor, y: torch.Tensor, size: int | None, seed: int, split: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """The lab's random subset of `size` images (None: all of them), its config key named
    where the data holds fewer (random_subset's own check knows no key)."""
    if not size:
        return x, y
    if size > len(y):
        raise ConfigError(
            f"config key 'data.{split}_subset': {size:,} images, but the dataset has "
            f"{len(y):,} {split} images"
        )
    idx = random_subset(len(y), size, seed)
    return x[idx], y[idx]


def prepare_splits(cfg: TrainConfig, data: Dataset, device: torch.device) -> dict[str, Split]:
    """train / val / test on the device. Faithful runs draw the lab's random subsets first;
    the validation split is carved out of (the subset of) the training images, seeded by
    `data.split_seed` so every run of an experiment sees the same split."""
    d = cfg.data
    seed = subset_seed(cfg)
    train_x, train_y = _subset(data.train_images, data.train_labels, d.train_subset, seed, "train")
    test_x, test_y = _subset(data.test_images, data.test_labels, d.test_subset, seed + 1, "test")
    splits = {"test": Split.of(test_x, test_y, device)}
    if d.val_fraction > 0:
        tr, va = train_val_split(len(train_y), d.val_fraction, d.split_seed)
        splits["train"] = Split.of(train_x[tr], train_y[tr], device)
        splits["val"] = Split.of(train_x[va], train_y[va], device)
    else:
        splits["train"] = Split.of(train_x, train_y, device)
    check_splits(cfg, splits, len(train_y))
    return splits


def check_splits(cfg: TrainConfig, splits: dict[str, Split], n_train: int) -> None:
    """Every split has images and training has at least one batch, or the first epoch would
    divide by zero: said here with the keys to change, before the run directory is touched."""
    d, train = cfg.data, splits["train"]
    used = f"{n_train} training image{'s' if n_train != 1 else ''}" + (
        f" (data.train_subset={d.train_subset})" if d.train_subset else ""
    )
    if "val" in splits and len(splits["val"]) == 0:
        raise ConfigError(
            f"data.val_fraction={d.val_fraction:g} of {used} leaves no validation image; "
            "use more training images or set data.val_fraction=0"
        )
    if len(train) == 0:
        raise ConfigError(f"the training split is empty ({used}); use more training images")
    if len(splits["test"]) == 0:
        raise ConfigError("the test split is empty; use a dataset with test images")
    if train.num_batches(cfg.batch_size, cfg.drop_last) == 0:
        raise ConfigError(
            f"batch_size={cfg.batch_size} with drop_last=true leaves no full training batch: "
            f"the training split has {len(train)} images (of {used}); use batch_size <= "
            f"{len(train)} or drop_last=false"
        )


def build_model(
    cfg: TrainConfig, num_classes: int, device: torch.device | None = None
) -> tuple[nn.Module, Objective]:
    """The run's model and objective. With the `device` it will train on, the runtime may run
    some of its layers another way there (dfl.runtime.cpu_swaps: the ViTs' token-wise linears
    through oneDNN on AMD CPUs), with the same parameters and state dict keys."""
    entry = models.get(cfg.model)
    args = dict(cfg.model_args)
    if "num_classes" in entry.defaults() and "num_classes" not in args:
        args["num_classes"] = num_classes  # a custom dataset's class count, read from its labels
    model = models.create(cfg.model, **args)
    if cfg.init_from:
        load_weights(model, Path(cfg.init_from))
    freeze(model, cfg.freeze)
    if device is not None:
        cpu_swaps(model, device)
    objective = objective_for(
        entry.objective if cfg.objective == "auto" else cfg.objective, cfg.layer
    )
    return model, objective


def check_freeze(cfg: TrainConfig, prefixes: list[str], key: str) -> None:
    """`freeze`'s check of `prefixes` against `cfg`'s model, built without memory (on the
    meta device), before a run whose later phase freezes them trains its first."""
    with torch.device("meta"):
        model = models.create(cfg.model, **cfg.model_args)
    freeze(model, prefixes, key)


def load_weights(model: nn.Module, run_dir: Path) -> None:
    """Start from the final weights of the run in `run_dir`, matched by parameter name (a
    pretraining phase, or a probe reusing an encoder); parameters the run did not have keep
    their fresh init. Weights cut, garbled or changed since the run wrote them are refused."""
    path = run_dir / WEIGHTS
    if not path.exists():
        raise ConfigError(f"init_from: {path} does not exist (has that run finished?)")
    try:
        saved = read_final_weights(run_dir)
    except UnloadableRun as e:
        raise ConfigError(f"init_from: {e}") from None
    own = model.state_dict()
    shared = {k: v for k, v in saved.items() if k in own}
    if not shared:
        raise ConfigError(f"init_from: no parameter of {path} fits this model (another model?)")
    wrong = [k for k, v in shared.items() if v.shape != own[k].shape]
    if wrong:
        raise ConfigError(
            f"init_from: {path}: '{wrong[0]}' has shape {list(shared[wrong[0]].shape)}"
            f", the model needs {list(own[wrong[0]].shape)}"
        )
    model.load_state_dict(shared, strict=False)


def freeze(model: nn.Module, prefixes: list[str], key: str = "freeze") -> None:
    """Fix every parameter whose name starts with one of `prefixes` (e.g. "encoders.0"); a
    prefix no parameter has is a ConfigError naming the config `key` that gave it."""
    names = [name for name, _ in model.named_parameters()]
    for prefix in prefixes:
        if not any(n.startswith(prefix) for n in names):
            raise ConfigError(
                f"{key}: no parameter starts with '{prefix}' "
                f"(parameters: {', '.join(names[:8])}...)"
            )
    for name, param in model.named_parameters():
        param.requires_grad_(not any(name.startswith(p) for p in prefixes))


def build_optimizer(
    cfg: TrainConfig, params: Iterable[nn.Parameter], device: torch.device
) -> torch.optim.Optimizer:
    """The configured optimiser, with the fused kernels where torch has them: one kernel per
    step instead of a dozen elementwise passes (the autoencoder trains 1.6x faster with fused
    Adam on a 2-core CPU; the fused and default updates differ only in rounding)."""
    o = cfg.optim
    fused = device.type in ("cpu", "cuda")
    if o.name == "sgd":
        return torch.optim.SGD(
            params, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov,
            weight_decay=o.weight_decay, fused=fused,
        )  # fmt: skip
    cls = torch.optim.Adam if o.name == "adam" else torch.optim.AdamW
    return cls(params, lr=o.lr, weight_decay=o.weight_decay, fused=fused)


def build_schedule(cfg: TrainConfig, opt: torch.optim.Optimizer, steps_per_epoch: int):
    """Returns (scheduler or None, True if it steps every batch rather than every epoch)."""
    s = cfg.schedule
    if s.name == "exponential":
        return torch.optim.lr_scheduler.ExponentialLR(opt, gamma=s.gamma), False
    if s.name == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=s.step_size, gamma=s.gamma), False
    if s.name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs), False
    if s.name == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            opt,
            max_lr=cfg.optim.lr,
            epochs=cfg.epochs,
            steps_per_epoch=steps_per_epoch,
            pct_start=s.warmup_fraction,
        ), True
    return None, False


# ---------------------------------------------------------------------------------------------
# The loop's checks, and its compiled module


def compiled(model: nn.Module) -> nn.Module:
    """`model` through torch.compile, sharing its parameters. A machine without a C++ compiler
    (or a model dynamo cannot trace) then trains eagerly, with torch's warning, instead of
    failing mid-epoch."""
    from torch import _dynamo

    _dynamo.config.suppress_errors = True
    return torch.compile(model)


def check_labels(cfg: TrainConfig, splits: dict[str, Split], outputs: int) -> None:
    """A classifier needs an output for every label in the data: cross-entropy would fail on
    the first batch holding a label beyond its `outputs` (an IndexError mid-epoch)."""
    top = max(int(split.labels.max()) for split in splits.values())
    if top >= outputs:
        given = cfg.model_args.get("num_classes")
        if given is not None and given <= top:
            fix = (
                f"model_args.num_classes is {given}: set it to at least {top + 1}, or leave it "
                "out to read it from the labels"
            )
        else:  # num_classes is enough, or not the model's to set: its last layer is short
            fix = f"give the model at least {top + 1} outputs" + (
                " (a `layers` list's final linear sets them)" if "layers" in cfg.model_args else ""
            )
        raise ConfigError(
            f"the data has labels up to {top} ({top + 1} classes) but model '{cfg.model}' "
            f"has {outputs} outputs; {fix}"
        )


def replays_graphs(cfg: TrainConfig, device: torch.device, precision: str) -> bool:
    """On CUDA the step is replayed from a graph (device_step.py), unless the config turns
    that off or needs the host every step: fp16's loss scaler decides on the host whether to
    skip a step, and a compiled model brings its own graphs."""
    return device.type == "cuda" and cfg.cuda_graph and precision != "fp16" and not cfg.compile


def progress(items: Iterable, desc: str, unit: str = "batch", **bar: Any) -> tqdm:
    """A progress bar on stderr, hidden where stderr is no terminal (`disable=None`): an
    epoch's batches by default, gone when the epoch ends; `bar`: other tqdm arguments."""
    bar = {"leave": False, "disable": None, **bar}
    return tqdm(items, desc=desc, unit=unit, file=sys.stderr, **bar)


def check_finite(losses: torch.Tensor, epoch: int, lr: float) -> None:
    """The epoch's per-step losses so far are finite, or the run diverged at the first that
    is not (`lr`: the configured learning rate, for the message)."""
    bad = (~torch.isfinite(losses)).nonzero()
    if len(bad):
        raise TrainingDiverged(
            f"non-finite loss at epoch {epoch}, step {int(bad[0]) + 1} "
            f"(lower the learning rate, now {lr:g}, or set grad_clip)"
        )


# ---------------------------------------------------------------------------------------------
# The loop


class Trainer:
    def __init__(
        self,
        cfg: TrainConfig,
        run_dir: Path,
        data: Dataset,
        callbacks: Iterable[Callback] = (),
        log: Callable[[str], None] | None = None,
    ):
        self.cfg, self.run_dir, self.callbacks, self.log = cfg, run_dir, list(callbacks), log
        self.runtime = RunContext()  # the process's tuning while it trains: run()
        self.device = resolve_device(cfg.device)
        if self.device.type == "cuda":  # cuDNN times its algorithms once per shape
            torch.backends.cudnn.benchmark = not cfg.deterministic
        seed_everything(cfg.seed, cfg.deterministic)
        self.splits = prepare_splits(cfg, data, self.device)
        self.model, self.objective = build_model(cfg, data.num_classes, self.device)
        self.model.to(self.device)
        self.precision = resolve_precision(cfg.precision, self.device, self.model)
        self.autocast = autocast_for(self.precision, self.device)
        # oneDNN's (and cuDNN's) convolutions are fastest on channels-last activations: the
        # exploration CNN trains 1.3x faster in fp32, 2.2x with bf16 on top (benchmarks/).
        self.channels_last = is_convolutional(self.model)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        # Training steps run through the compiled module; it shares the model's parameters,
        # so checkpoints and evaluation keep using the plain one.
        self.train_model = compiled(self.model) if cfg.compile else self.model
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(cfg, trainable, self.device)
        steps = self.splits["train"].num_batches(cfg.batch_size, cfg.drop_last)
        self.scheduler, self.schedule_per_step = build_schedule(cfg, self.optimizer, steps)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.precision == "fp16")
        self.shuffle = torch.Generator().manual_seed(cfg.seed)
        graphed = replays_graphs(cfg, self.device, self.precision)
        self.device_step = DeviceStep(self, capture=True) if graphed else None
        self.history: list[dict[str, Any]] = []
        self.final: dict[str, Any] = {}  # what `run` ends with: status.json's final metrics
        self.best = Best.of(cfg, self.objective, validated="val" in self.splits)
        self._saved_at = time.monotonic()
        self._check_fit()
        # Dropout draws from the global generator, which the seed set before the model's init
        # drew from it: where it stands now is where this run's training starts.
        self._built_rng = global_rng_state(self.device)

    @torch.no_grad()
    def _check_fit(self) -> None:
        """The objective's step on two training images, before anything is written: a model
        whose arguments do not fit the data (an autoencoder of 100 inputs on 784 pixels) is a
        ConfigError here rather than a torch error in the first epoch. A classifier's outputs
        must also cover the data's labels."""
        train = self.splits["train"]
        x, y = self._inputs(train.images[:2], False), train.labels[:2]
        self.model.eval()
        try:
            with self.autocast:
                out = self.objective.outputs(self.model, x)
                if self.objective.name == "classification":  # before cross-entropy meets them
                    check_labels(self.cfg, self.splits, out.shape[-1])
                self.objective.loss(out, x, y)
        except RuntimeError as e:
            if out_of_memory(e) or isinstance(e, NotImplementedError):  # no misfit: said as is
                raise
            shape = "x".join(map(str, train.images.shape[1:]))
            raise ConfigError(
                f"{described(self.cfg.model, self.cfg.model_args)} does not fit the data's "
                f"{shape} images "
                f"({one_line(e)}); `dfl shapes {self.cfg.model} --set ...` shows each layer's "
                "shape"
            ) from None
        finally:
            self.model.train()

    # --- one epoch --------------------------------------------------------------------------

    def _inputs(
        self, images: torch.Tensor, train: bool, draws: torch.Tensor | None = None
    ) -> torch.Tensor:
        """A batch as the model takes it (`model_input`); training batches augmented with
        `draws`, or with draws made here from the run's generator."""
        d, augment = self.cfg.data, None
        if train and (d.augment_shift or d.augment_rotate or d.augment_scale):
            if draws is None:
                draws = affine_draws(images.shape[0], d.augment_scale, self.shuffle)
            augment = (draws, d.augment_shift, d.augment_rotate, d.augment_scale)
        return model_input(images, d.normalize, self.channels_last, augment)

    def train_epoch(self, epoch: int) -> dict[str, float]:
        if self.device_step is not None:
            return self._train_epoch_on_device(epoch)
        cfg, split = self.cfg, self.splits["train"]
        self.model.train()
        n_batches = split.num_batches(cfg.batch_size, cfg.drop_last)
        # Each step's loss x batch size, checked for NaN every few steps and summed once at the
        # end: one tensor op a step fewer than a running sum.
        losses = torch.zeros(n_batches, device=self.device)
        sums: dict[str, torch.Tensor] = {}
        n = 0
        batches = split.batches(cfg.batch_size, generator=self.shuffle, drop_last=cfg.drop_last)
        for step, (images, y) in enumerate(progress(batches, f"epoch {epoch}", total=n_batches)):
            self.runtime.tick()  # a clock read; counts the other trainings once a second
            x = self._inputs(images, train=True)
            with self.autocast:
                loss, batch_sums = self.objective.step(self.train_model, x, y)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            if cfg.grad_clip:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            if self.schedule_per_step:
                self.scheduler.step()
            losses[step] = batch_sums.pop("loss")
            for k, v in batch_sums.items():
                sums[k] = sums.get(k, 0) + v.detach()
            n += y.shape[0]
            if (step + 1) % NONFINITE_CHECK_EVERY == 0:  # and the whole epoch at its end
                check_finite(losses[: step + 1], epoch, cfg.optim.lr)
        return self._epoch_metrics(losses, sums, n, epoch)

    def _epoch_metrics(
        self, losses: torch.Tensor, sums: dict[str, torch.Tensor], n: int, epoch: int
    ) -> dict[str, float]:
        """An epoch's per-sample metrics from its per-step losses and other sums, once its
        losses are checked finite (what both loops end with)."""
        check_finite(losses, epoch, self.cfg.optim.lr)
        sums["loss"] = losses.sum()
        return self.objective.finish({k: float(v) for k, v in sums.items()}, n)

    def _train_epoch_on_device(self, epoch: int) -> dict[str, float]:
        """The epoch with `DeviceStep`: its metrics are read, and checked for a non-finite
        loss, once at the end instead of every few steps."""
        step = self.device_step
        self.model.train()
        step.start_epoch(self.shuffle)
        for size in progress(step.sizes, f"epoch {epoch}"):
            step(size)
            if self.schedule_per_step:
                self.scheduler.step()  # a float on the host; the step reads it from the device
        return self._epoch_metrics(*step.end_epoch(), epoch)

    @torch.no_grad()
    def evaluate(self, name: str) -> dict[str, float]:
        self.model.eval()
        split, sums, n = self.splits[name], {}, 0
        for images, y in split.batches(self.cfg.eval_batch_size):
            with self.autocast:
                _, batch_sums = self.objective.step(self.model, self._inputs(images, False), y)
            for k, v in batch_sums.items():
                sums[k] = sums.get(k, 0) + v
            n += y.shape[0]
        metrics = self.objective.finish({k: float(v) for k, v in sums.items()}, n)
        if not math.isfinite(metrics["loss"]):
            raise TrainingDiverged(f"non-finite {name} loss after training")
        return metrics

    # --- the run ----------------------------------------------------------------------------

    def run(self, epoch_bar: bool = True, until_epoch: int | None = None) -> RunStatus:
        """Train to the configured epochs, or pause after `until_epoch` (a sweep reading a
        shorter-epoch grid point off a longer run); a paused run resumes like a killed one.
        On CPU the run shares the cores with the other dfl trainings alive on the machine:
        with no thread count chosen it takes its share, with one (or `deterministic`) it keeps
        it and the others count it. The process is tuned for the run, and given back as it
        was, by dfl/runtime/context.py (flush-to-zero, malloc, threads)."""
        cfg = self.cfg
        with run_context(self.device, threads=cfg.threads, deterministic=cfg.deterministic) as rt:
            self.runtime = rt
            try:
                return self.train_from(self.begin(), epoch_bar, until_epoch)
            finally:
                self.runtime = RunContext()  # idle: train_epoch outside run() ticks nothing

    def train_from(self, start_epoch: int, epoch_bar: bool, until_epoch: int | None) -> RunStatus:
        """The epochs from `start_epoch` (`begin`'s) on, to the end or to `until_epoch`."""
        last_epoch = min(self.cfg.epochs, until_epoch or self.cfg.epochs)
        t_run = time.perf_counter()
        stopped = self.best.stop_reason(start_epoch - 1)  # resumed after its early stop
        bar = progress(
            range(start_epoch, start_epoch if stopped else last_epoch + 1), self.run_dir.name,
            "epoch", leave=True, disable=None if epoch_bar else True, initial=start_epoch - 1,
            total=self.cfg.epochs,
        )  # fmt: skip
        for epoch in bar:
            lr, t0 = self.optimizer.param_groups[0]["lr"], time.perf_counter()
            train = self.train_epoch(epoch)
            stopped = self.end_epoch(epoch, lr, train, time.perf_counter() - t0, last_epoch)
            shown = {k: v for k, v in self.history[-1].items() if k.startswith(("train_", "val_"))}
            bar.set_postfix({k: f"{v:.4g}" for k, v in shown.items()})
            if stopped:
                break
        bar.close()
        return self.finish(time.perf_counter() - t_run, stopped, last_epoch)

    # The loop's three parts, which a group of runs trained as one (fused.py) calls for each of
    # its runs around its own training epochs.

    def begin(self) -> int:
        """The epoch to train first: 1, or the one after the newest intact checkpoint's. The
        global generator is set as the run left it (other runs may have been built since)."""
        set_global_rng_state(self.device, self._built_rng)
        start_epoch = self._restore() + 1
        if start_epoch > 1:  # the checkpoint's history is the truth: repair a damaged file
            write_metrics(self.run_dir, self.history)
        return start_epoch

    def end_epoch(
        self, epoch: int, lr: float, train: dict[str, float], seconds: float, last_epoch: int
    ) -> str | None:
        """Record epoch `epoch`, trained at `lr` (its first step's) in `seconds` with training
        metrics `train`: evaluate, step the epoch's schedule, track the best epoch, call the
        callbacks (a StopRun from one passes on, checkpointed first) and checkpoint when due.
        Returns why the run stops early, or None."""
        record: dict[str, Any] = {"epoch": epoch, "lr": lr}
        record.update({f"train_{k}": v for k, v in train.items()})
        if "val" in self.splits:
            record.update({f"val_{k}": v for k, v in self.evaluate("val").items()})
        if self.cfg.test_every_epoch:
            record.update({f"test_{k}": v for k, v in self.evaluate("test").items()})
        record["seconds"] = round(seconds, 4)
        record["samples_per_s"] = round(len(self.splits["train"]) / seconds, 1)
        if self.scheduler is not None and not self.schedule_per_step:
            self.scheduler.step()
        self.history.append(record)
        stopped = self.best.update(record, self.model)
        if self.log:
            self.log(_format_record(record))
        try:
            for callback in self.callbacks:
                callback(record)
        except StopRun:
            self._checkpoint(epoch)  # a pruned trial can still be inspected or resumed
            raise
        # Every epoch by default; with an interval, only when it has passed, and always at
        # the last epoch of this call (a pause, an early stop or the end).
        due = time.monotonic() - self._saved_at >= self.cfg.checkpoint_interval_s
        if due or stopped or epoch == last_epoch:
            self._checkpoint(epoch)
        return stopped

    def finish(self, wall: float, stopped: str | None, last_epoch: int) -> RunStatus:
        """How the run ends once its epochs are trained: paused (`last_epoch` is short of the
        config's epochs), or completed with its final metrics."""
        if last_epoch < self.cfg.epochs and not stopped:
            self.final = {"epochs_run": len(self.history)}
            return RunStatus.PAUSED
        self.final = self._final(wall, stopped)
        return RunStatus.COMPLETED

    def _final(self, wall: float, stopped: str | None) -> dict[str, Any]:
        """A completed run's final metrics, with its selected weights saved and tested."""
        final: dict[str, Any] = {
            "epochs_run": len(self.history),
            "params": sum(p.numel() for p in self.model.parameters()),
            **self.best.summary(),
            "wall_s": round(wall, 3),
            "device": str(self.device),
            "precision": self.precision,
        }
        if stopped:
            final["early_stopped"] = stopped
        final.update(self.best.restore(self.model, self.history))  # the tested epoch's val_
        weights = self.model.state_dict()
        final["weights_sha256"] = checkpoint.save_weights(self.run_dir / WEIGHTS, weights)
        if self.cfg.evaluate_test:
            final.update({f"test_{k}": v for k, v in self.evaluate("test").items()})
        return final

    # --- checkpoints ------------------------------------------------------------------------

    def _resumable(self) -> dict[str, Any]:
        """What a checkpoint holds besides the history, as checkpoint.py's functions take it."""
        return {
            "model": self.model, "optimizer": self.optimizer, "scheduler": self.scheduler,
            "scaler": self.scaler, "shuffle": self.shuffle, "device": self.device,
            "best": self.best,
        }  # fmt: skip

    def _checkpoint(self, epoch: int) -> None:
        self._saved_at = time.monotonic()
        write_metrics(self.run_dir, self.history)
        if self.cfg.checkpoint:
            root = self.run_dir / CHECKPOINTS
            checkpoint.save_training(root, epoch, history=self.history, **self._resumable())

    def _restore(self) -> int:
        """Load the newest intact checkpoint; returns its epoch (0 when starting fresh)."""
        found = checkpoint.restore_training(self.run_dir / CHECKPOINTS, **self._resumable())
        if found is None:
            recorded = self.run_dir / METRICS
            if recorded.exists() and recorded.stat().st_size:  # resumed without a checkpoint
                say(
                    f"dfl: warning: {self.run_dir} has no checkpoint to resume from: training "
                    f"from epoch 1 (its {METRICS} is rewritten)"
                )
            return 0
        epoch, self.history = found
        if self.log:
            self.log(f"resumed {self.run_dir} from epoch {epoch}")
        return epoch


def _format_record(record: dict[str, Any]) -> str:
    parts = [f"epoch {record['epoch']:>3}"]
    for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy"):
        if key in record:
            parts.append(f"{key} {record[key]:.5g}")
    parts.append(f"{record['seconds']:.1f}s ({record['samples_per_s']:.0f}/s)")
    return "  ".join(parts)
