"""THE training loop. It knows nothing about any particular model: the registry builds the
model, an objective supplies the step, callbacks watch each epoch (a sweep's pruner, a
figure saver). Everything a run produces lands in its run directory:

    config.toml     the resolved config: `dfl train --config RUN/config.toml` repeats the run
    metrics.jsonl   one line per epoch (train/val loss and accuracy, lr, seconds, samples/s),
                    rewritten with each checkpoint
    status.json     running | paused | completed | failed | pruned, with reason and final metrics
    checkpoints/    the last two checkpoints, written atomically (see checkpoint.py)
    model.safetensors  the final weights (the best validation epoch's with restore_best)

How those files are written and read back is run_dir.py's; the checkpoint's key format is
checkpoint.py's.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import random
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn
from tqdm.auto import tqdm

from dfl import models
from dfl.config import TrainConfig, config_to_toml
from dfl.data import Dataset, load_dataset, random_subset, train_val_split
from dfl.data.batches import Split, affine, affine_draws, standardize, to_input
from dfl.errors import ConfigError, DflError, TrainingDiverged, one_line, out_of_memory
from dfl.objectives import Objective, objective_for
from dfl.runtime.allocator import keep_freed_memory
from dfl.runtime.atomic import atomic_write_bytes
from dfl.runtime.core_share import CoreShare
from dfl.runtime.interrupts import deferred_interrupt
from dfl.runtime.local_workers import available_cores
from dfl.runtime.run_lock import claim_run_dir, unwritable
from dfl.runtime.subnormals import flushed_to_zero
from dfl.training import checkpoint
from dfl.training.device_step import DeviceStep
from dfl.training.run_dir import (
    CHECKPOINTS,
    CONFIG,
    STATUS,
    WEIGHTS,
    DamagedHistory,
    RunStatus,
    check_same_config,
    finished_history,
    read_history,
    read_status,
    refuse_foreign_files,
    write_metrics,
    write_status,
)

Callback = Callable[[dict[str, Any]], None]
NONFINITE_CHECK_EVERY = 25  # steps between checks: each check waits for the device


class StopRun(Exception):
    """Raised by a callback to end a run early with a status (e.g. "pruned" by a sweep)."""

    def __init__(self, status: RunStatus | str, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = RunStatus(status), reason


@dataclass
class RunResult:
    run_dir: Path
    status: RunStatus
    history: list[dict[str, Any]] = field(default_factory=list)
    final: dict[str, Any] = field(default_factory=dict)
    reason: str | None = None


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
    }[name]
    if not available:
        raise ConfigError(f"device '{name}' is not available on this machine (use --device auto)")
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


def prepare_splits(cfg: TrainConfig, data: Dataset, device: torch.device) -> dict[str, Split]:
    """train / val / test on the device. Faithful runs draw the lab's random subsets first;
    the validation split is carved out of (the subset of) the training images, seeded by
    `data.split_seed` so every run of an experiment sees the same split."""
    d = cfg.data
    subset_seed = cfg.seed if d.subset_seed is None else d.subset_seed
    train_x, train_y = data.train_images, data.train_labels
    test_x, test_y = data.test_images, data.test_labels
    if d.train_subset:
        idx = random_subset(len(train_y), d.train_subset, subset_seed)
        train_x, train_y = train_x[idx], train_y[idx]
    if d.test_subset:
        idx = random_subset(len(test_y), d.test_subset, subset_seed + 1)
        test_x, test_y = test_x[idx], test_y[idx]
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


def build_model(cfg: TrainConfig, num_classes: int) -> tuple[nn.Module, Objective]:
    entry = models.get(cfg.model)
    args = dict(cfg.model_args)
    if "num_classes" in entry.defaults() and "num_classes" not in args:
        args["num_classes"] = num_classes  # a custom dataset's class count, read from its labels
    model = models.create(cfg.model, **args)
    if cfg.init_from:
        load_weights(model, Path(cfg.init_from) / WEIGHTS)
    freeze(model, cfg.freeze)
    objective = objective_for(
        entry.objective if cfg.objective == "auto" else cfg.objective, cfg.layer
    )
    return model, objective


def load_weights(model: nn.Module, path: Path) -> None:
    """Start from another run's final weights, matched by parameter name (a pretraining phase,
    or a probe reusing an encoder); parameters the run did not have keep their fresh init."""
    if not path.exists():
        raise ConfigError(f"init_from: {path} does not exist (has that run finished?)")
    saved, own = load_file(str(path)), model.state_dict()
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


def freeze(model: nn.Module, prefixes: list[str]) -> None:
    """Fix every parameter whose name starts with one of `prefixes` (e.g. "encoders.0")."""
    names = [name for name, _ in model.named_parameters()]
    for prefix in prefixes:
        if not any(n.startswith(prefix) for n in names):
            raise ConfigError(
                f"freeze: no parameter starts with '{prefix}' "
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
# Optimiser state restored from a checkpoint


def _match_parameter_layouts(optimizer: torch.optim.Optimizer) -> None:
    """Give each restored moment the memory layout of its parameter. Checkpoints store tensors
    contiguous (safetensors has no strides), so a channels-last conv weight's Adam moments or
    SGD momentum come back in the standard layout; the fused optimisers walk parameter, grad
    and state as flat memory and would then pair element i of one with element j of the other
    (a resumed CNN drifted from the uninterrupted run from its first step). `empty_like` keeps
    the parameter's strides; the values are copied element by element by index."""
    for group in optimizer.param_groups:
        for param in group["params"]:
            state = optimizer.state.get(param, {})
            for key, value in state.items():
                if (
                    isinstance(value, torch.Tensor)
                    and value.shape == param.shape
                    and value.stride() != param.stride()
                ):
                    state[key] = torch.empty_like(param, dtype=value.dtype).copy_(value)


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
        self.cores: CoreShare | None = None  # this run's share of the cores, while it trains
        self.device = resolve_device(cfg.device)
        if self.device.type == "cpu":
            keep_freed_memory()  # no page faults for reused activations: dfl/runtime/allocator.py
        elif self.device.type == "cuda":  # cuDNN times its algorithms once per shape
            torch.backends.cudnn.benchmark = not cfg.deterministic
        seed_everything(cfg.seed, cfg.deterministic)
        self.splits = prepare_splits(cfg, data, self.device)
        self.model, self.objective = build_model(cfg, data.num_classes)
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
        self.train_model = self.model
        if cfg.compile:
            # A machine without a C++ compiler (or a model dynamo cannot trace) then trains
            # eagerly, with torch's warning, instead of failing mid-epoch.
            from torch import _dynamo

            _dynamo.config.suppress_errors = True
            self.train_model = torch.compile(self.model)
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(cfg, trainable, self.device)
        steps = self.splits["train"].num_batches(cfg.batch_size, cfg.drop_last)
        self.scheduler, self.schedule_per_step = build_schedule(cfg, self.optimizer, steps)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.precision == "fp16")
        self.shuffle = torch.Generator().manual_seed(cfg.seed)
        self.device_step = self._device_step()
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] = {"value": None, "epoch": None, "weights": None}
        self._saved_at = time.monotonic()
        self._check_early_stop()
        self._check_labels()

    def _device_step(self) -> DeviceStep | None:
        """On CUDA the step is replayed from a graph (device_step.py), unless the config
        turns that off or needs the host every step: fp16's loss scaler decides on the host
        whether to skip a step, and a compiled model brings its own graphs."""
        cfg = self.cfg
        if self.device.type != "cuda" or not cfg.cuda_graph:
            return None
        if self.precision == "fp16" or cfg.compile:
            return None
        return DeviceStep(self, capture=True)

    def _check_early_stop(self) -> None:
        # early_stop.metric itself is checked with the config (TrainConfig).
        if self.cfg.restore_best and "val" not in self.splits:
            raise ConfigError("restore_best needs a validation split (set data.val_fraction > 0)")

    @torch.no_grad()
    def _check_labels(self) -> None:
        """A classifier needs an output for every label in the data: cross-entropy would
        fail on the first batch holding a label beyond them (an IndexError mid-epoch)."""
        if self.objective.name != "classification":
            return
        top = max(int(split.labels.max()) for split in self.splits.values())
        self.model.eval()
        with self.autocast:
            outputs = self.model(self._inputs(self.splits["train"].images[:1], False)).shape[-1]
        self.model.train()
        if top >= outputs:
            given = self.cfg.model_args.get("num_classes")
            fix = (
                f"model_args.num_classes is {given}: set it to at least {top + 1}, or leave it "
                "out to read it from the labels"
                if given is not None
                else f"give the model at least {top + 1} outputs"
            )
            raise ConfigError(
                f"the data has labels up to {top} ({top + 1} classes) but model '{self.cfg.model}' "
                f"has {outputs} outputs; {fix}"
            )

    @property
    def select_metric(self) -> tuple[str, str]:
        """The metric that picks the best epoch: early stopping's, else the objective's."""
        es = self.cfg.early_stop
        if es.patience:
            return es.metric, es.mode
        return self.objective.select_metric, self.objective.select_mode

    # --- one epoch --------------------------------------------------------------------------

    def _inputs(
        self, images: torch.Tensor, train: bool, draws: torch.Tensor | None = None
    ) -> torch.Tensor:
        """A batch as the model takes it; training batches augmented with `draws`, or with
        draws made here from the run's generator."""
        d = self.cfg.data
        x = to_input(images)
        if train and (d.augment_shift or d.augment_rotate or d.augment_scale):
            if draws is None:
                draws = affine_draws(x.shape[0], d.augment_scale, self.shuffle)
            x = affine(x, draws, d.augment_shift, d.augment_rotate, d.augment_scale)
        x = standardize(x) if d.normalize else x
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

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
        bar = tqdm(
            split.batches(cfg.batch_size, generator=self.shuffle, drop_last=cfg.drop_last),
            total=n_batches,
            desc=f"epoch {epoch}",
            leave=False,
            disable=None,
            unit="batch",
            file=sys.stderr,
        )
        for step, (images, y) in enumerate(bar):
            if self.cores is not None:
                self.cores.rebalance()  # a clock read; counts the other trainings once a second
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
                self._check_finite(losses[: step + 1], epoch)
        return self._epoch_metrics(losses, sums, n, epoch)

    def _epoch_metrics(
        self, losses: torch.Tensor, sums: dict[str, torch.Tensor], n: int, epoch: int
    ) -> dict[str, float]:
        """An epoch's per-sample metrics from its per-step losses and other sums, once its
        losses are checked finite (what both loops end with)."""
        self._check_finite(losses, epoch)
        sums["loss"] = losses.sum()
        return self.objective.finish({k: float(v) for k, v in sums.items()}, n)

    def _train_epoch_on_device(self, epoch: int) -> dict[str, float]:
        """The epoch with `DeviceStep`: its metrics are read, and checked for a non-finite
        loss, once at the end instead of every few steps."""
        step = self.device_step
        self.model.train()
        step.start_epoch(self.shuffle)
        bar = tqdm(
            step.sizes, desc=f"epoch {epoch}", leave=False, disable=None, unit="batch",
            file=sys.stderr,
        )  # fmt: skip
        for size in bar:
            step(size)
            if self.schedule_per_step:
                self.scheduler.step()  # a float on the host; the step reads it from the device
        return self._epoch_metrics(*step.end_epoch(), epoch)

    def _check_finite(self, losses: torch.Tensor, epoch: int) -> None:
        bad = (~torch.isfinite(losses)).nonzero()
        if len(bad):
            step = int(bad[0]) + 1
            raise TrainingDiverged(
                f"non-finite loss at epoch {epoch}, step {step} "
                f"(lower the learning rate, now {self.cfg.optim.lr:g}, or set grad_clip)"
            )

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

    def run(self, epoch_bar: bool = True, until_epoch: int | None = None) -> RunResult:
        """Train to the configured epochs, or pause after `until_epoch` (a sweep reading a
        shorter-epoch grid point off a longer run); a paused run resumes like a killed one.
        On CPU the run shares the cores with the other dfl trainings alive on the machine:
        with no thread count chosen it takes its share, with one (or `deterministic`) it keeps
        it and the others count it (core_share.py)."""
        on_cpu = self.device.type == "cpu"
        threads_before = torch.get_num_threads()  # the caller's, given back at the end
        if self.cfg.threads:
            torch.set_num_threads(self.cfg.threads)
        # A deterministic run keeps the threads it starts with: a share that moved with the
        # other trainings alive would change the order of its sums, and so its numbers.
        threads = self.cfg.threads
        if threads is None and self.cfg.deterministic:
            threads = torch.get_num_threads()
        self.cores = CoreShare.join(available_cores(), threads) if on_cpu else None
        try:
            with (
                flushed_to_zero()
            ):  # Adam's moments of always-zero pixels: dfl/runtime/subnormals.py
                return self._run(epoch_bar, until_epoch)
        finally:
            if self.cores is not None:
                self.cores.close()
                self.cores = None
            torch.set_num_threads(threads_before)

    def _run(self, epoch_bar: bool, until_epoch: int | None) -> RunResult:
        last_epoch = min(self.cfg.epochs, until_epoch or self.cfg.epochs)
        start_epoch = self._restore() + 1
        if start_epoch > 1:  # the checkpoint's history is the truth: repair a damaged file
            write_metrics(self.run_dir, self.history)
        t_run = time.perf_counter()
        bar = tqdm(
            range(start_epoch, last_epoch + 1),
            initial=start_epoch - 1,
            total=self.cfg.epochs,
            desc=self.run_dir.name,
            unit="epoch",
            disable=None if epoch_bar else True,
            file=sys.stderr,
        )
        stopped = None
        for epoch in bar:
            t0 = time.perf_counter()
            record: dict[str, Any] = {"epoch": epoch, "lr": self.optimizer.param_groups[0]["lr"]}
            record.update({f"train_{k}": v for k, v in self.train_epoch(epoch).items()})
            seconds = time.perf_counter() - t0
            if "val" in self.splits:
                record.update({f"val_{k}": v for k, v in self.evaluate("val").items()})
            if self.cfg.test_every_epoch:
                record.update({f"test_{k}": v for k, v in self.evaluate("test").items()})
            record["seconds"] = round(seconds, 4)
            record["samples_per_s"] = round(len(self.splits["train"]) / seconds, 1)
            if self.scheduler is not None and not self.schedule_per_step:
                self.scheduler.step()
            self.history.append(record)
            stopped = self._track_best(record)
            bar.set_postfix(
                {k: f"{v:.4g}" for k, v in record.items() if k.startswith(("train_", "val_"))}
            )
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
            if stopped:
                break
        bar.close()
        if last_epoch < self.cfg.epochs and not stopped:
            return RunResult(
                self.run_dir, RunStatus.PAUSED, self.history, {"epochs_run": len(self.history)}
            )
        final = self._final(time.perf_counter() - t_run, stopped)
        return RunResult(self.run_dir, RunStatus.COMPLETED, self.history, final)

    def _track_best(self, record: dict[str, Any]) -> str | None:
        """Remember the best epoch; returns a reason when early stopping ends the run."""
        metric, mode = self.select_metric
        value = record.get(metric)
        if value is None:
            if self.cfg.early_stop.patience:
                raise ConfigError(
                    f"early_stop.metric '{metric}' is not measured "
                    f"(measured: {', '.join(sorted(record))})"
                )
            return None
        best = self.best["value"]
        delta = self.cfg.early_stop.min_delta
        better = best is None or (value < best - delta if mode == "min" else value > best + delta)
        if better:
            self.best.update(value=value, epoch=record["epoch"])
            if self.cfg.early_stop.patience or self.cfg.restore_best:  # restored before testing
                self.best["weights"] = {
                    k: v.detach().clone() for k, v in self.model.state_dict().items()
                }
        patience = self.cfg.early_stop.patience
        if patience and record["epoch"] - self.best["epoch"] >= patience:
            return (
                f"early stop at epoch {record['epoch']}: {metric} has not improved for "
                f"{patience} epoch{'' if patience == 1 else 's'} "
                f"(best {self.best['value']:.6g} at epoch {self.best['epoch']})"
            )
        return None

    def _final(self, wall: float, stopped: str | None) -> dict[str, Any]:
        final: dict[str, Any] = {
            "epochs_run": len(self.history),
            "params": sum(p.numel() for p in self.model.parameters()),
            "best_epoch": self.best["epoch"],
            "select_metric": self.select_metric[0],
            "best_value": self.best["value"],
            "wall_s": round(wall, 3),
            "device": str(self.device),
            "precision": self.precision,
        }
        if stopped:
            final["early_stopped"] = stopped
        restored = self.best["weights"] is not None  # selection on validation: test that epoch
        if restored:
            self.model.load_state_dict(self.best["weights"])
        if self.history:
            tested = self.history[self.best["epoch"] - 1] if restored else self.history[-1]
            final.update({k: v for k, v in tested.items() if k.startswith("val_")})
        final["weights_sha256"] = checkpoint.save_weights(
            self.run_dir / WEIGHTS, self.model.state_dict()
        )
        if self.cfg.evaluate_test:
            final.update({f"test_{k}": v for k, v in self.evaluate("test").items()})
        return final

    # --- checkpoints ------------------------------------------------------------------------

    def _checkpoint(self, epoch: int) -> None:
        self._saved_at = time.monotonic()
        write_metrics(self.run_dir, self.history)
        if not self.cfg.checkpoint:
            return
        tensors = checkpoint.prefixed(checkpoint.MODEL, self.model.state_dict())
        if self.best["weights"] is not None:
            tensors.update(checkpoint.prefixed(checkpoint.BEST, self.best["weights"]))
        tensors[checkpoint.RNG_TORCH] = torch.get_rng_state()
        tensors[checkpoint.RNG_SHUFFLE] = self.shuffle.get_state()
        if self.device.type == "cuda":
            tensors[checkpoint.RNG_CUDA] = torch.cuda.get_rng_state(self.device)
        optimizer = checkpoint.split_state(
            checkpoint.OPTIMIZER, self.optimizer.state_dict(), tensors
        )
        state = {
            "history": self.history,
            "best": {"value": self.best["value"], "epoch": self.best["epoch"]},
            "optimizer": optimizer,
            "scheduler": self.scheduler.state_dict() if self.scheduler else None,
            "scaler": self.scaler.state_dict(),
        }
        checkpoint.save(self.run_dir / CHECKPOINTS, epoch, tensors, state)

    def _restore(self) -> int:
        """Load the newest intact checkpoint; returns its epoch (0 when starting fresh)."""
        found = checkpoint.load_latest(self.run_dir / CHECKPOINTS)
        if found is None:
            return 0
        tensors, state = found
        self.model.load_state_dict(checkpoint.unprefixed(checkpoint.MODEL, tensors))
        best = checkpoint.unprefixed(checkpoint.BEST, tensors)
        self.best = {**state["best"], "weights": best or None}
        self.optimizer.load_state_dict(
            checkpoint.optimizer_state_from_json(checkpoint.join_state(state["optimizer"], tensors))
        )
        _match_parameter_layouts(self.optimizer)
        if self.scheduler is not None and state["scheduler"] is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(tensors[checkpoint.RNG_TORCH])
        self.shuffle.set_state(tensors[checkpoint.RNG_SHUFFLE])
        if checkpoint.RNG_CUDA in tensors and self.device.type == "cuda":
            torch.cuda.set_rng_state(tensors[checkpoint.RNG_CUDA], self.device)
        self.history = state["history"]
        if self.log:
            self.log(f"resumed {self.run_dir} from epoch {state['epoch']}")
        return int(state["epoch"])


def _format_record(record: dict[str, Any]) -> str:
    parts = [f"epoch {record['epoch']:>3}"]
    for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy"):
        if key in record:
            parts.append(f"{key} {record[key]:.5g}")
    parts.append(f"{record['seconds']:.1f}s ({record['samples_per_s']:.0f}/s)")
    return "  ".join(parts)


# ---------------------------------------------------------------------------------------------
# A run, start to end


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
) -> RunResult:
    """Train `cfg` in `run_dir`. With `resume`, a completed run is returned as it is and an
    unfinished one continues from its newest checkpoint, ending as an uninterrupted run would.
    The run holds `run_dir` exclusively while it lives (dfl/runtime/run_lock.py); a run that cannot
    start leaves nothing behind: no directory it created, no file it wrote."""
    if isinstance(run_dir, str) and not run_dir.strip():
        raise DflError("the run directory is empty (give a directory with --out)")
    run_dir = Path(run_dir)
    with claim_run_dir(run_dir) as claim:
        status = read_status(run_dir)
        if status is None:
            refuse_foreign_files(run_dir)
        if status is not None and not resume:
            raise DflError(
                f"{run_dir} already holds a run ({status['status']}); pass --resume to "
                "continue or reuse it, or choose another --out"
            )
        if status is not None:
            check_same_config(run_dir, cfg, lambda old, new: _same_precision(old, new, cfg))
            if status["status"] == RunStatus.COMPLETED:
                history = finished_history(run_dir)
                return RunResult(run_dir, status["status"], history, status.get("final", {}))
            if until_epoch:
                with contextlib.suppress(DamagedHistory):  # the checkpoint holds the curve
                    history = read_history(run_dir)
                    if len(history) >= until_epoch:
                        final = status.get("final", {})
                        return RunResult(run_dir, status["status"], history, final)
        # Everything that can be wrong with the config or the data fails here, before
        # anything is written into the run directory.
        data = dataset if dataset is not None else load_dataset(cfg.data.dataset, cfg.data.data_dir)
        if status is not None and status.get("data", data.fingerprint) != data.fingerprint:
            raise DflError(
                f"{run_dir} was trained on other data (fingerprint {status['data']}, this data "
                f"{data.fingerprint}): resume it on the data it started with, or use another --out"
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
        return _train_and_record(trainer, status_of, epoch_bar, until_epoch)


def _train_and_record(
    trainer: Trainer, status_of: Callable[..., None], epoch_bar: bool, until_epoch: int | None
) -> RunResult:
    """Train, and record in status.json (through `status_of`, which adds the data's
    fingerprint) how the run ended."""
    try:
        result = trainer.run(epoch_bar, until_epoch)
    except StopRun as stop:
        status_of(stop.status, reason=stop.reason, epochs_run=len(trainer.history))
        return RunResult(trainer.run_dir, stop.status, trainer.history, {}, stop.reason)
    except Exception as e:
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
        raise
    if result.status == RunStatus.PAUSED:
        status_of(RunStatus.PAUSED, epochs_run=len(result.history))
    else:
        status_of(RunStatus.COMPLETED, final=result.final)
    return result
