"""Index splits of a dataset held in memory: batches and subsets are index tensors, not copies."""

from __future__ import annotations

import torch

from dfl.errors import DataError


class SplitError(DataError, ValueError):
    """A split or subset that cannot be made (a DataError for the CLI, a ValueError for code)."""


def _generator(seed: int | None) -> torch.Generator:
    # A private generator: the split depends on `seed` only, not on torch's global RNG state.
    g = torch.Generator()
    if seed is None:
        g.seed()
    else:
        g.manual_seed(seed)
    return g


def _check_n(n: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise SplitError(f"dataset size must be a non-negative integer, found {n!r}")


def train_val_split(
    n: int, val_fraction: float = 0.2, seed: int = 42
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split range(n) into sorted (train, val) int64 index tensors, disjoint and covering all n.

    The validation part has round(n * val_fraction) indices, but never all of them: at least
    one index stays in training whenever n > 0.
    """
    _check_n(n)
    if not 0.0 <= val_fraction < 1.0:
        raise SplitError(f"val_fraction must be in [0, 1), found {val_fraction}")
    n_val = min(round(n * val_fraction), max(n - 1, 0))
    order = torch.randperm(n, generator=_generator(seed))
    val, _ = torch.sort(order[:n_val])
    train, _ = torch.sort(order[n_val:])
    return train, val


def random_subset(n: int, size: int, seed: int | None = None) -> torch.Tensor:
    """`size` distinct indices from range(n), sorted; `seed=None` draws a fresh random subset."""
    _check_n(n)
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise SplitError(f"subset size must be a non-negative integer, found {size!r}")
    if size > n:
        raise SplitError(f"subset size {size} is larger than the dataset size {n}")
    indices, _ = torch.sort(torch.randperm(n, generator=_generator(seed))[:size])
    return indices
