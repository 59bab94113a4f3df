"""Subnormal floats flush to zero while dfl works on CPU.

Adam's moments for the pixels that are zero in every MNIST image decay geometrically into the
subnormal range, where the CPU computes 10-100x slower: by epoch 47 of the lab's autoencoder
grid (batch 16, enc 128, one thread) an epoch took 14.3 s instead of 4.4 s, with 3,600 of the
25,088 second moments of its first layer subnormal; a 784x128 Adam step with such moments runs
3.8x faster flushed. The values flushed are below 1.2e-38 and move no weight (the grid's
validation losses are unchanged).

The setting lives in each thread's floating-point control register, and a new thread inherits
its creator's. So the processes turn it on at their entry points, before torch starts its
thread pool (`dfl`, its sweep workers, the experiments' worker processes), and every training
turns it on for its own thread as well, in its run_context (a notebook's pool may be older
than the run). All of them with `flushed_to_zero`. It is turned back off afterwards where it
was off, so a process that goes on (a notebook, a test session) keeps IEEE arithmetic outside
dfl's work.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


def flushing() -> bool:
    """Whether this thread flushes subnormals now (a subnormal float32 comes out as zero)."""
    return torch.tensor(1e-40, dtype=torch.float32).mul(1.0).item() == 0.0


@contextlib.contextmanager
def flushed_to_zero() -> Iterator[None]:
    """Flush subnormals to zero in this thread (and threads it starts) for the block."""
    if flushing():
        yield
        return
    torch.set_flush_denormal(True)  # False on a CPU without the instructions: nothing changes
    try:
        yield
    finally:
        torch.set_flush_denormal(False)
