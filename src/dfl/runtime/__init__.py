"""How a dfl process runs on its machine, below everything that trains: the CPU tuning a run
enters once (flush-to-zero, the allocator, the cores shared with other trainings), Ctrl-C and
SIGTERM handling, atomic files, run-directory locks and local worker processes.

The seam a training uses (imported on first use, so that `dfl.runtime.interrupts` stays free
of torch for the CLI's start):

    run_context(device, threads=, deterministic=, interrupts=)  a run's tuning (context.py)
    flushed_to_zero()          flush-to-zero before torch starts threads (subnormals.py)
    cpu_swaps(model, device)   token-wise linears through oneDNN where it pays (onednn.py)

Imports nothing of dfl but `dfl.errors`; everything else may import it."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dfl.runtime.context import RunContext, run_context
    from dfl.runtime.onednn import cpu_swaps
    from dfl.runtime.subnormals import flushed_to_zero

__all__ = ["RunContext", "cpu_swaps", "flushed_to_zero", "run_context"]

_EXPORTS = {
    "RunContext": "dfl.runtime.context",
    "run_context": "dfl.runtime.context",
    "cpu_swaps": "dfl.runtime.onednn",
    "flushed_to_zero": "dfl.runtime.subnormals",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'dfl.runtime' has no attribute '{name}'")
