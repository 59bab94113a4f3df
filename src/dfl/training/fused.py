"""Runs of one architecture trained as one model.

The lab's models are small, so a training step is mostly overhead: a few kernels too small to
fill the machine, each paying its dispatch. Runs that differ only in their seed, learning rate
or weight decay (an experiment's seeds, a sweep's points) have the same shapes, so R of them
can take one step together, their parameters stacked (R, ...): R overhead-bound steps become
one step with R times the arithmetic. Dense models run as stacked layers (stacked.py: linears
as batched matmuls); any other model's step is mapped over the runs with torch.func.vmap
(convolutions grouped, BatchNorm with R sets of statistics).

Each run keeps everything it would have alone, because each is still a `Trainer`: its data
order and augmentation (its own generator), its schedule, best epoch, early stop, callbacks,
checkpoints and run directory, and its learning rate and weight decay (`optimizer_step`).
Only its training step is shared. Dropout draws its masks from
the run's own generator, with the draws it would have made alone, so a fused run is the run
trained alone up to rounding (the batched kernels sum in another order); its checkpoints are
a lone run's, so `dfl train --config RUN/config.toml --resume` can finish it alone.

The group moves the runs' state into the stacked tensors when it starts (`_gather`) and back
into each run's own model and optimiser after every epoch (`scatter`), where the runs
evaluate, checkpoint and decide whether to stop: a run that stops leaves the group, and the
others go on as a smaller group.
"""

from __future__ import annotations

import copy
import json
import os
import time
import warnings
from typing import TypeVar

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from dfl import models
from dfl.config import TrainConfig
from dfl.data.batches import affine_draws
from dfl.runtime.context import run_context
from dfl.runtime.onednn import TokenLinear
from dfl.training.run_dropout import RunDropout, drawing_from
from dfl.training.stacked import can_stack, replace_module, stacked_twin
from dfl.training.trainer import (
    Outcome,
    Trainer,
    build_optimizer,
    check_finite,
    global_rng_state,
    progress,
    resolve_device,
    set_global_rng_state,
)

# Config keys that may differ between the runs of one group (as pydantic's `exclude` takes
# them): the seed, and the scalars each run's optimiser step applies by itself (see
# FusedGroup.optimizer_step). Everything else shapes the step.
PER_RUN_KEYS = {"seed": True, "optim": {"lr": True, "weight_decay": True}}
K = TypeVar("K")


def step_shape(cfg: TrainConfig) -> str:
    """What a run's config says of its training step, but for PER_RUN_KEYS, as text: the runs
    whose shapes are equal may train as one group."""
    return json.dumps(cfg.model_dump(mode="json", exclude=PER_RUN_KEYS), sort_keys=True)


def same_shape(cfgs: dict[K, TrainConfig]) -> list[list[K]]:
    """The keys of `cfgs` in groups of equal `step_shape`, in the order each group's first key
    comes: the runs that may train as one group."""
    groups: dict[str, list[K]] = {}
    for key, cfg in cfgs.items():
        groups.setdefault(step_shape(cfg), []).append(key)
    return list(groups.values())


def fuse_blocker(cfgs: list[TrainConfig]) -> str | None:
    """Why these runs cannot train as one group, or None when they can."""
    if len({step_shape(c) for c in cfgs}) > 1:
        return "the runs differ in more than their seed, learning rate and weight decay"
    cfg = cfgs[0]
    if cfg.compile:
        return "compile = true (a compiled model brings its own graphs)"
    if cfg.precision == "fp16":
        return "precision fp16 (its loss scaler decides on the host, a run at a time)"
    if cfg.model_args.get("attn_dropout"):
        return "attn_dropout > 0 (drawn inside PyTorch's fused attention kernel)"
    return None


# Where `fuse = "auto"` trains runs as one: on a CPU, models the group stacks (stacked.py) at
# batch sizes up to this. Measured by benchmarks/fused.py (3 seeds as one against one after
# another, samples/s, AMD EPYC, 1 / 2 threads; docs/SPEED.md has the table): the autoencoder
# (enc 32) at batch 16 1.48x / 1.83x, at 32 1.25x / 1.53x, at 64 1.03x / 1.27x; enc 128 at 64
# 0.95x on 1 thread (a 784-wide product gains nothing from batching there), so the limit follows
# the 1-thread rows. The models fused through vmap gained nothing (the notebook CNN 0.42x, the
# notebook ViT 0.98x / 1.00x). Two processes grouping at once (a sweep's workers, --beside)
# gain what one does alone, so the limit holds for them too. Its one measured miss: the
# autoencoder with a code of 128 at batch 32 (0.92x), whose step is already arithmetic-bound.
# Not measured on a GPU, so auto trains runs alone there.
FUSE_MAX_BATCH = 32
# DFL_FUSE=off: `auto` trains every run alone (`dfl train --fuse on` still fuses), for timing
# what fusing buys a whole reproduction or sweep on the same code (docs/SPEED.md).
OPT_OUT = "DFL_FUSE"


def fuse_pays(cfg: TrainConfig, model: nn.Module) -> bool:
    """Whether `fuse = "auto"` trains runs of `cfg` (its `model`) as one (see FUSE_MAX_BATCH)."""
    return (
        os.environ.get(OPT_OUT, "").lower() not in ("off", "0")
        and resolve_device(cfg.device).type == "cpu"
        and cfg.batch_size <= FUSE_MAX_BATCH
        and can_stack(model)
    )


def fusing_pays(cfg: TrainConfig) -> bool:
    """Whether `fuse = "auto"` trains runs of `cfg`'s step shape as one, asked before any is
    built: nothing blocks it, and it pays for the model (built here to ask: the lab's models
    take milliseconds)."""
    if fuse_blocker([cfg]):
        return False
    return fuse_pays(cfg, models.create(cfg.model, **cfg.model_args))


def _stateless_twin(model: nn.Module) -> nn.Module:
    """The architecture the group maps over: `model` on the meta device (the stacked tensors
    are its parameters), with the runtime's layer swaps undone (a plain matmul maps over runs
    as a batched one) and dropout drawing from each run's generator."""
    twin = copy.deepcopy(model).to("meta")
    for name, module in list(twin.named_modules()):
        if isinstance(module, TokenLinear):
            module.__class__ = nn.Linear
        if isinstance(module, nn.Dropout | nn.Dropout2d):
            replace_module(twin, name, RunDropout(module.p, isinstance(module, nn.Dropout2d)))
    return twin


class _Step(nn.Module):
    """The objective's step on the model, as one module for functional_call."""

    def __init__(self, trainer: Trainer) -> None:
        super().__init__()
        self.model, self.objective = _stateless_twin(trainer.model), trainer.objective

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict]:
        return self.objective.step(self.model, x, y)


# ---------------------------------------------------------------------------------------------
# The group


class FusedGroup:
    """Trainers (one per run, configs of one `step_shape`, at the same epoch) stepping as one."""

    def __init__(self, trainers: list[Trainer], rng_states: list[torch.Tensor]) -> None:
        """`rng_states`: each run's global generator state (`global_rng_state`), from which
        its dropout draws."""
        self.trainers = trainers
        lead = trainers[0]
        self.cfg, self.device, self.objective = lead.cfg, lead.device, lead.objective
        # Dense models as stacked layers (stacked.py), the others mapped with vmap.
        self.stacked = stacked_twin(lead.model) if can_stack(lead.model) else None
        self.mapped = None if self.stacked else _Step(lead)
        self.trainable = [n for n, p in lead.model.named_parameters() if p.requires_grad]
        self.generators = [torch.Generator(self.device).set_state(s) for s in rng_states]
        # Runs at learning rates or weight decays of their own step through `optimizer_step`.
        self.per_run = len({(t.cfg.optim.lr, t.cfg.optim.weight_decay) for t in trainers}) > 1
        self._gather()

    # --- moving state in and out --------------------------------------------------------

    def _gather(self) -> None:
        """The runs' parameters, buffers and optimiser moments, stacked (R, ...)."""
        models = [t.model for t in self.trainers]
        self.params, self.buffers = stack_module_state(models)
        if self.stacked:
            self.stacked.load(self.params)
        for name, p in self.params.items():
            p.requires_grad_(name in self.trainable)
        trainable = [self.params[n] for n in self.trainable]
        cfg = self.cfg
        if self.per_run:  # a unit step without decay, which optimizer_step scales per run
            optim = cfg.optim.model_copy(update={"lr": 1.0, "weight_decay": 0.0})
            cfg = cfg.model_copy(update={"optim": optim})
        self.optimizer = build_optimizer(cfg, trainable, self.device)
        own = [dict(t.model.named_parameters()) for t in self.trainers]
        for name, stacked in zip(self.trainable, trainable, strict=True):
            states = [
                t.optimizer.state.get(o[name], {}) for t, o in zip(self.trainers, own, strict=True)
            ]
            if states[0]:
                self.optimizer.state[stacked] = {  # moments laid out as their parameter
                    k: torch.empty_like(stacked).copy_(torch.stack([s[k] for s in states]))
                    if v.dim()
                    else v.clone()
                    for k, v in states[0].items()
                }
        self.follow_schedule()

    def scatter(self) -> list[torch.Tensor]:
        """Each run's slice back into its own model and optimiser; returns each run's
        generator state."""
        with torch.no_grad():
            for r, t in enumerate(self.trainers):
                own = dict(t.model.named_parameters())
                for name, stacked in self.params.items():
                    own[name].copy_(stacked[r])
                for name, buffer in t.model.named_buffers():
                    buffer.copy_(self.buffers[name][r])
                for name in self.trainable:
                    stacked_state = self.optimizer.state.get(self.params[name])
                    if stacked_state:
                        mine = own[name]
                        t.optimizer.state[mine] = {
                            k: torch.empty_like(mine).copy_(v[r]) if v.dim() else v.clone()
                            for k, v in stacked_state.items()
                        }
        return [g.get_state() for g in self.generators]

    def follow_schedule(self) -> None:
        """The group's optimiser takes the schedule's current values (learning rate, and the
        momentum one-cycle moves) from the runs' own optimisers, which all hold the same."""
        mine = self.optimizer.param_groups[0]
        theirs = self.trainers[0].optimizer.param_groups[0]
        for key in ("betas", "momentum") if self.per_run else ("lr", "betas", "momentum"):
            if key in mine:
                mine[key] = theirs[key]

    @torch.no_grad()
    def optimizer_step(self) -> None:
        """The group's optimiser step. Runs at learning rates or weight decays of their own
        take it as alone: the optimiser steps at learning rate 1 without decay, and each run's
        slice of the change is scaled by its own current learning rate (its schedule's). SGD's
        and Adam's moments do not depend on the learning rate, so that is their step up to
        rounding; a coupled weight decay (SGD, Adam) is added to each run's gradient first,
        AdamW's decoupled one shrinks each run's weights first, as torch's optimisers do."""
        if not self.per_run:
            self.optimizer.step()
            return
        runs, params = self.trainers, [self.params[n] for n in self.trainable]
        lrs = torch.tensor([t.optimizer.param_groups[0]["lr"] for t in runs], device=self.device)
        decays = torch.tensor([t.cfg.optim.weight_decay for t in runs], device=self.device)
        if decays.any():
            for p in params:
                if p.grad is None:
                    continue
                if self.cfg.optim.name == "adamw":
                    p.mul_(1 - _each_run(lrs * decays, p))
                else:
                    p.grad.add_(_each_run(decays, p) * p)
        before = [p.clone() for p in params]
        self.optimizer.step()
        for p, b in zip(params, before, strict=True):
            p.sub_(b).mul_(_each_run(lrs, p)).add_(b)

    # --- one epoch ------------------------------------------------------------------------

    def train_epoch(self, epoch: int) -> list[dict[str, float]]:
        """One epoch of every run; returns each run's training metrics (a run whose loss went
        non-finite gets its TrainingDiverged instead)."""
        cfg, runs = self.cfg, self.trainers
        self.follow_schedule()  # the epoch's schedule step, taken by each run
        (self.stacked or self.mapped).train()
        for t in runs:
            t.model.train()
        split = runs[0].splits["train"]
        n_batches = split.num_batches(cfg.batch_size, cfg.drop_last)
        losses = torch.zeros(len(runs), n_batches, device=self.device)
        sums: dict[str, torch.Tensor] = {}
        batches = [
            t.splits["train"].batches(cfg.batch_size, generator=t.shuffle, drop_last=cfg.drop_last)
            for t in runs
        ]
        step_all = self._stacked_step if self.stacked else vmap(self._one_run, randomness="error")
        n = 0
        with drawing_from(self.generators), warnings.catch_warnings():
            # vmap runs PyTorch's fused CPU attention a slice at a time, and says so each step;
            # the cost is measured (FUSE_MAX_BATCH), so auto never takes this path on a CPU.
            warnings.filterwarnings("ignore", "There is a performance drop because we have not")
            for step in progress(range(n_batches), f"epoch {epoch} ({len(runs)} runs as one)"):
                runs[0].runtime.tick()
                drawn = [next(b) for b in batches]
                x, y = self._inputs(drawn)
                with runs[0].autocast:
                    loss, batch_sums = step_all(self.params, self.buffers, x, y)
                self.optimizer.zero_grad(set_to_none=True)
                loss.sum().backward()
                if cfg.grad_clip:
                    self._clip_each_run(cfg.grad_clip)
                self.optimizer_step()
                if runs[0].schedule_per_step:
                    for t in runs:
                        t.scheduler.step()
                    self.follow_schedule()
                losses[:, step] = batch_sums.pop("loss")
                for k, v in batch_sums.items():
                    sums[k] = sums.get(k, 0) + v.detach()
                n += y.shape[1]
        # Checked once, at the end: a run whose loss went non-finite harms no other (each has
        # its own slice of every tensor), and it fails here with the step it went at.
        results: list[dict[str, float] | Exception] = []
        for r in range(len(runs)):
            try:
                check_finite(losses[r], epoch, cfg.optim.lr)
                mine = {"loss": losses[r].sum(), **{k: v[r] for k, v in sums.items()}}
                results.append(runs[r].objective.finish({k: float(v) for k, v in mine.items()}, n))
            except Exception as e:
                results.append(e)
        return results

    def _inputs(self, drawn: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple:
        """The runs' batches as one (R, B, ...) input and (R, B) labels, made by one call of
        the input pipeline; augmented with each run's draws from its own generator."""
        lead, d = self.trainers[0], self.cfg.data
        images = torch.cat([images for images, _ in drawn])
        draws = None
        if d.augment_shift or d.augment_rotate or d.augment_scale:
            draws = torch.cat(
                [
                    affine_draws(len(i), d.augment_scale, t.shuffle)
                    for (i, _), t in zip(drawn, self.trainers, strict=True)
                ]
            )
        x = lead._inputs(images, train=True, draws=draws)
        return x.unflatten(0, (len(drawn), -1)), torch.stack([labels for _, labels in drawn])

    def _one_run(self, params, buffers, x, y):
        """One run's step: the model with this run's slice of the stacked tensors."""
        named = {f"model.{k}": v for k, v in params.items()}
        named.update({f"model.{k}": v for k, v in buffers.items()})
        return functional_call(self.mapped, named, (x, y))

    def _stacked_step(self, params, buffers, x, y):
        """Every run's step: the stacked model's outputs, each run's loss from its slice."""
        return self.objective.run_losses(self.objective.outputs(self.stacked, x), x, y)

    def _clip_each_run(self, max_norm: float) -> None:
        """clip_grad_norm_ for each run: run r's gradients scaled by its own total norm."""
        grads = [p.grad for p in self.optimizer.param_groups[0]["params"] if p.grad is not None]
        norms = torch.stack([g.flatten(1).norm(dim=1) for g in grads]).norm(dim=0)  # (R,)
        scale = (max_norm / (norms + 1e-6)).clamp(max=1.0)
        for g in grads:
            g.mul_(scale.view(-1, *[1] * (g.dim() - 1)))


def train_fused(
    trainers: list[Trainer], epoch_bar: bool = True, until_epoch: int | None = None
) -> list[Outcome]:
    """Train the runs of `trainers` (see `fuse_blocker`) as one group to the configured
    epochs, or to `until_epoch`; returns how each ended: its status, or the exception that
    ended it (a StopRun, a TrainingDiverged)."""
    lead, outcome = trainers[0], {}
    cfg, device = lead.cfg, lead.device
    last_epoch = min(cfg.epochs, until_epoch or cfg.epochs)
    with (
        run_context(device, threads=cfg.threads, deterministic=cfg.deterministic) as rt,
        warnings.catch_warnings(),
    ):
        # The runs' own optimisers never step (the group's does); their schedules still step
        # as alone, and torch would say once per run that they came first.
        warnings.filterwarnings("ignore", r"Detected call of `lr_scheduler.step\(\)` before")
        rng, starts = {}, {}
        for i, t in enumerate(trainers):
            t.runtime = rt
            starts[i] = t.begin()
            rng[i] = global_rng_state(device)  # as `begin` left it for this run
            if stopped := t.best.stop_reason(starts[i] - 1):  # resumed after its early stop
                try:
                    outcome[i] = t.finish(0.0, stopped, last_epoch)
                except Exception as e:  # this run ends failed, the others go on
                    outcome[i] = e
        active = [i for i in range(len(trainers)) if i not in outcome]
        if len({starts[i] for i in active}) > 1:  # resumed from different epochs: each alone
            for i in active:
                set_global_rng_state(device, rng[i])
                outcome[i] = _alone(trainers[i], epoch_bar, until_epoch, starts[i])
            active = []
        if not active:
            return [outcome[i] for i in range(len(trainers))]
        t_run, first = time.perf_counter(), starts[active[0]]
        bar = progress(
            range(first, last_epoch + 1), f"{len(active)} runs as one", "epoch", leave=True,
            disable=None if epoch_bar else True, initial=first - 1, total=cfg.epochs,
        )  # fmt: skip
        group = FusedGroup([trainers[i] for i in active], [rng[i] for i in active])
        for epoch in bar:
            lr = {i: trainers[i].optimizer.param_groups[0]["lr"] for i in active}  # first step's
            t0 = time.perf_counter()
            metrics = group.train_epoch(epoch)
            seconds = time.perf_counter() - t0
            for i, state in zip(active, group.scatter(), strict=True):
                rng[i] = state
            for i, train in zip(active, metrics, strict=True):
                set_global_rng_state(device, rng[i])  # what its checkpoint saves
                try:
                    if isinstance(train, BaseException):
                        raise train
                    stopped = trainers[i].end_epoch(epoch, lr[i], train, seconds, last_epoch)
                    if stopped:
                        wall = time.perf_counter() - t_run
                        outcome[i] = trainers[i].finish(wall, stopped, last_epoch)
                except Exception as e:  # StopRun included: this run ends, the others go on
                    outcome[i] = e
            if any(i in outcome for i in active):
                active = [i for i in active if i not in outcome]
                if not active:
                    break
                group = FusedGroup([trainers[i] for i in active], [rng[i] for i in active])
        bar.close()
        for i in active:
            outcome[i] = trainers[i].finish(time.perf_counter() - t_run, None, last_epoch)
    return [outcome[i] for i in range(len(trainers))]


def _each_run(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Per-run scalars (R,) shaped to scale a stacked tensor (R, ...) run by run."""
    return values.to(like.dtype).view(-1, *[1] * (like.dim() - 1))


def _alone(trainer: Trainer, epoch_bar: bool, until_epoch: int | None, start: int) -> Outcome:
    try:
        return trainer.train_from(start, epoch_bar, until_epoch)
    except Exception as e:
        return e
