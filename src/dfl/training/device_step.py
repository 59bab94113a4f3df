"""The training step as a function of device memory alone, replayed from a CUDA graph on GPUs.

The lab's models are tiny: on a GPU an eager step of the autoencoder at batch 16 is a few dozen
kernels of microseconds each, and the host, issuing them one by one from Python, is the limit
(1.6 ms a step on an H200, six times a 2-core CPU's 0.27 ms). Captured once in a CUDA graph,
the whole step (batch gather, augmentation, forward, backward, clipping, optimiser, metric sums)
is one launch; the host's only work per step is `replay()`.

A graph replays fixed kernels on fixed memory, so nothing in the step may come from the host:
- the epoch's shuffled images and labels are gathered once into buffers that outlive the graph,
  and a step picks its batch by a step counter that the step itself advances on the device;
- augmentation draws for the whole epoch come from the run's CPU generator at the epoch's start,
  in the order the per-step loop draws them, so both loops see the same transforms;
- each step writes its loss into the epoch's loss vector and adds its other sums (correct
  answers) in place: the epoch's metrics and its non-finite check are read once, at its end;
- a schedule's learning rate lives in a device tensor that the optimiser reads; the host fills
  it only when the schedule changed it. Without a schedule it stays the float the graph bakes in;
- the optimiser is made capturable, so its step counts live on the device too. A schedule that
  also cycles Adam's beta1 or SGD's momentum (one-cycle) changes a float the fused kernels take
  by value: there the graph ends with the gradients, and the optimiser steps after each replay
  (one fused kernel, launched from the host).

The first steps of each run run eagerly on a side stream (lazy state: Adam's moments, cuBLAS
handles, cuDNN's choice of algorithm), as CUDA graph capture needs; the last, partial batch of
an epoch (the lab keeps it) runs eagerly through the same function. Eager and replayed steps
launch the same kernels on the same memory, so a run resumed in another process, with its
first steps eager again, repeats the uninterrupted run.

On a CPU the same step runs eagerly (the tests compare it with the trainer's per-step loop);
the trainer uses it on CUDA only, where it pays.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from dfl.data.batches import affine_draws
from dfl.errors import DflError, one_line

WARMUP_STEPS = 3  # eager steps before the capture (PyTorch's CUDA graph notes use three)


class DeviceStep:
    def __init__(self, trainer: Any, capture: bool) -> None:
        """`trainer`: the `Trainer` whose model, optimiser, schedule, objective and
        splits the step uses (not imported here: the trainer imports this module)."""
        self.t, self.capture = trainer, capture
        cfg, split, device = trainer.cfg, trainer.splits["train"], trainer.device
        self.batch = cfg.batch_size
        full, tail = divmod(len(split), self.batch)
        self.sizes = [self.batch] * full + ([tail] if tail and not cfg.drop_last else [])
        # Buffers the graph reads and writes: allocated once, refilled every epoch.
        self.images = torch.empty_like(split.images)
        self.labels = torch.empty_like(split.labels)
        self.counter = torch.zeros((), dtype=torch.long, device=device)
        self.arange = torch.arange(self.batch, device=device)
        self.losses = torch.zeros(len(self.sizes), device=device)
        self.positions = torch.arange(len(self.sizes), device=device)  # where a step's loss goes
        self.sums: dict[str, torch.Tensor] = {}  # made by the first (eager) step
        d = cfg.data
        self.draws = (
            torch.zeros(len(split), 4 if d.augment_scale else 3, device=device)
            if d.augment_shift or d.augment_rotate or d.augment_scale
            else None
        )
        # A schedule changes the learning rate between steps: the graph reads it from here.
        # One-cycle moves momentum with the rate: the optimiser then steps outside the graph
        self.optimizer_in_graph = not getattr(trainer.scheduler, "cycle_momentum", False)
        self.grads: list[torch.Tensor | None] = []  # the graph's gradients, when it stops there
        self.lr: list[torch.Tensor] | None = None
        self.lr_values: list[float] = []  # what the tensors hold
        if capture and trainer.scheduler is not None and self.optimizer_in_graph:
            groups = trainer.optimizer.param_groups
            self.lr = [torch.tensor(float(g["lr"]), device=device) for g in groups]
            self.lr_values = [float(g["lr"]) for g in groups]
        self.graph: torch.cuda.CUDAGraph | None = None
        self.eager_steps = 0

    # --- an epoch ---------------------------------------------------------------------------

    def start_epoch(self, generator: torch.Generator) -> None:
        """Shuffle the split into the buffers and draw the epoch's augmentation; the same draws
        from `generator`, in the same order, as the trainer's per-step loop makes."""
        split = self.t.splits["train"]
        order = torch.randperm(len(split), generator=generator).to(split.labels.device)
        torch.index_select(split.images, 0, order, out=self.images)
        torch.index_select(split.labels, 0, order, out=self.labels)
        if self.draws is not None:
            scale = self.t.cfg.data.augment_scale
            draws = [affine_draws(size, scale, generator) for size in self.sizes]
            self.draws[: sum(self.sizes)].copy_(torch.cat(draws))
        self.counter.zero_()
        self.losses.zero_()
        for total in self.sums.values():
            total.zero_()

    def end_epoch(self) -> tuple[torch.Tensor, dict[str, torch.Tensor], int]:
        """The epoch's per-step losses (x batch size), its other sums and its sample count."""
        return self.losses, dict(self.sums), sum(self.sizes)

    # --- a step -----------------------------------------------------------------------------

    def __call__(self, size: int) -> None:
        if not self.capture or size != self.batch:
            self._step(size)  # the tail batch has a shape of its own: eagerly
        elif self.graph is not None:
            self._refresh_lr()
            self.graph.replay()
            if not self.optimizer_in_graph:
                self._optimizer_step_after_replay()
        elif self.eager_steps < WARMUP_STEPS:
            self._on_side_stream(size)
        else:
            self._capture()

    def _step(self, size: int, optimizer: bool = True) -> None:
        """One training step on the batch the counter points at. Captured, this is the graph
        (the optimiser's step left out when `optimizer` is false)."""
        t = self.t
        idx = self.counter * self.batch + self.arange[:size]
        images, y = self.images.index_select(0, idx), self.labels.index_select(0, idx)
        draws = None if self.draws is None else self.draws.index_select(0, idx)
        x = t._inputs(images, train=True, draws=draws)
        with t.autocast:
            loss, sums = t.objective.step(t.train_model, x, y)
        t.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if t.cfg.grad_clip:
            nn.utils.clip_grad_norm_(t.model.parameters(), t.cfg.grad_clip)
        if optimizer:
            with self._lr_from_tensors():
                t.optimizer.step()
        # By mask: deterministic mode swaps index_copy_ for a sorting kernel, and masked_fill_
        # reads a tensor value back to the host
        here = self.positions == self.counter
        self.losses.copy_(torch.where(here, sums.pop("loss"), self.losses))
        for k, v in sums.items():
            if k in self.sums:
                self.sums[k].add_(v)
            else:
                self.sums[k] = v.detach().clone()
        self.counter.add_(1)
        self.eager_steps += 1

    def _on_side_stream(self, size: int) -> None:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            self._step(size)
        torch.cuda.current_stream().wait_stream(side)

    def _capture(self) -> None:
        optimizer = self.t.optimizer
        for group in optimizer.param_groups:  # a restored state dict may have said False
            group["capturable"] = True
        optimizer._warned_capturable_if_run_uncaptured = True  # eager steps are few, on purpose
        self._refresh_lr()
        graph = torch.cuda.CUDAGraph()
        optimizer.zero_grad(set_to_none=True)  # the graph's backward makes its own gradients
        try:
            # thread_local: another thread's CUDA calls (a second run in this process, on its
            # own stream) may go on while this one captures
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                self._step(self.batch, optimizer=self.optimizer_in_graph)
        except RuntimeError as e:
            # A layer that reads a value back to the host cannot be captured. The failed
            # capture leaves CUDA's random generator mid-capture, so the run cannot go on
            # eagerly either: it stops, resumable without the graph.
            cause = one_line(e.__context__ or e)
            raise DflError(
                f"this model's training step cannot be captured in a CUDA graph ({cause}); "
                "resume it with --set cuda_graph=false"
            ) from None
        self.graph = graph
        graph.replay()  # capturing runs nothing: this is the step itself
        if not self.optimizer_in_graph:
            self.grads = [p.grad for p in self._params()]  # in the graph's memory
            self._optimizer_step_after_replay()

    def _params(self) -> list[torch.Tensor]:
        return [p for group in self.t.optimizer.param_groups for p in group["params"]]

    def _optimizer_step_after_replay(self) -> None:
        """The optimiser on the gradients the replay wrote. An eager step in between (the
        tail batch) pointed the parameters at gradients of its own: point them back."""
        for param, grad in zip(self._params(), self.grads, strict=True):
            param.grad = grad
        self.t.optimizer.step()

    # --- the learning rate ------------------------------------------------------------------

    def _refresh_lr(self) -> None:
        if self.lr is None:
            return
        for i, group in enumerate(self.t.optimizer.param_groups):
            if float(group["lr"]) != self.lr_values[i]:
                self.lr[i].fill_(group["lr"])
                self.lr_values[i] = float(group["lr"])

    @contextlib.contextmanager
    def _lr_from_tensors(self) -> Iterator[None]:
        """The optimiser steps with the device tensors as learning rates, eager steps too (they
        then round the rate exactly as the replayed ones do); between steps the param groups
        hold floats again, for the schedule, the metrics and the checkpoint."""
        if self.lr is None:
            yield
            return
        self._refresh_lr()
        groups = self.t.optimizer.param_groups
        floats = [g["lr"] for g in groups]
        for group, tensor in zip(groups, self.lr, strict=True):
            group["lr"] = tensor
        try:
            yield
        finally:
            for group, value in zip(groups, floats, strict=True):
                group["lr"] = value
