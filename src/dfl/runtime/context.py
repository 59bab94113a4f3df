"""The one seam between a training and the machine it runs on: `run_context`.

A run enters it once, around its epochs, and it applies (and undoes, on the way out) what a
run needs of the process:

- flush-to-zero for this thread (subnormals.py: Adam's moments of always-zero pixels);
- on CPU, glibc's malloc set to keep freed memory (allocator.py; once per process, and for
  good: the setting cannot be taken back);
- the intra-op threads: the run's chosen count, and on CPU its place among the dfl trainings
  alive on the machine (core_share.py); the thread count the caller had comes back at the end;
- where asked (`interrupts=True`: a script that trains without dfl's entry points around it),
  the first Ctrl-C or SIGTERM as one KeyboardInterrupt and later ones ignored (interrupts.py).

The loop makes one cheap call a step, `RunContext.tick()`: a clock read that recounts the other
trainings once a second. Outside a run, `RunContext()` is idle and its `tick` does nothing.

Processes set flush-to-zero themselves too, at their entry points (`dfl`, its sweep workers,
the experiments' worker processes), with the same `flushed_to_zero`: torch's thread pool
inherits the flag from the thread that starts it, so it must be on before torch starts threads,
which may be before a run begins (building the model, checking its labels).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from dfl.runtime.allocator import keep_freed_memory
from dfl.runtime.core_share import CoreShare
from dfl.runtime.interrupts import InterruptOnce, SigtermAsInterrupt
from dfl.runtime.local_workers import available_cores
from dfl.runtime.subnormals import flushed_to_zero


@dataclass
class RunContext:
    """What a run holds of the process while it runs: its place in the core share (None on a
    GPU, with DFL_SHARE_CORES=0, or outside a run) and whether malloc is tuned."""

    share: CoreShare | None = None
    malloc_tuned: bool = False

    def tick(self) -> None:
        """Once a step: a clock read; recounts the other trainings once a second and sets this
        run's threads to its share (nothing for a pinned run, a GPU run or an idle context)."""
        if self.share is not None:
            self.share.rebalance()


@contextlib.contextmanager
def run_context(
    device: torch.device | str,
    *,
    threads: int | None = None,
    deterministic: bool = False,
    interrupts: bool = False,
) -> Iterator[RunContext]:
    """Tune the process for a run on `device` for the block (the module docstring), and give
    it back as it was. `threads`: the run's intra-op threads (None: the ones it has, shared
    with the other trainings on CPU). A `deterministic` run keeps the threads it starts with:
    a share that moved with the other trainings alive would change the order of its sums, and
    so its numbers; the others still count it."""
    on_cpu = torch.device(device).type == "cpu"
    with contextlib.ExitStack() as stack:
        if interrupts:
            stack.enter_context(InterruptOnce())
            stack.enter_context(SigtermAsInterrupt())
        threads_before = torch.get_num_threads()  # the caller's, given back at the end
        stack.callback(torch.set_num_threads, threads_before)
        if threads:
            torch.set_num_threads(threads)
        pinned = threads
        if pinned is None and deterministic:
            pinned = torch.get_num_threads()
        ctx = RunContext()
        if on_cpu:
            ctx.malloc_tuned = keep_freed_memory()  # no page faults for reused activations
            ctx.share = CoreShare.join(available_cores(), pinned)
            if ctx.share is not None:
                stack.callback(_leave, ctx)  # before the thread count comes back
        stack.enter_context(flushed_to_zero())
        yield ctx


def _leave(ctx: RunContext) -> None:
    assert ctx.share is not None
    ctx.share.close()
    ctx.share = None  # the context is idle again: `tick` does nothing
