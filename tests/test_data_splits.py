"""Index splits: disjoint, covering, reproducible from the seed, and loud about bad arguments."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dfl.data import random_subset, train_val_split
from dfl.errors import DataError


@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 500), fraction=st.floats(0.0, 0.99), seed=st.integers(0, 2**31))
def test_split_is_disjoint_and_covers(n: int, fraction: float, seed: int) -> None:
    train, val = train_val_split(n, fraction, seed)
    assert train.dtype == val.dtype == torch.int64
    both = torch.cat([train, val])
    assert torch.equal(torch.sort(both).values, torch.arange(n))  # covers, no duplicates
    assert len(val) == min(round(n * fraction), max(n - 1, 0))
    assert n == 0 or len(train) >= 1


def test_split_sizes_and_seed() -> None:
    train, val = train_val_split(60000, 0.2, seed=42)
    assert (len(train), len(val)) == (48000, 12000)
    again_train, again_val = train_val_split(60000, 0.2, seed=42)
    assert torch.equal(train, again_train) and torch.equal(val, again_val)
    assert not torch.equal(val, train_val_split(60000, 0.2, seed=43)[1])


def test_split_ignores_global_rng() -> None:
    torch.manual_seed(0)
    a = train_val_split(100, 0.3, seed=7)[1]
    torch.manual_seed(1)
    assert torch.equal(a, train_val_split(100, 0.3, seed=7)[1])


def test_split_zero_fraction_and_tiny_n() -> None:
    train, val = train_val_split(10, 0.0)
    assert train.tolist() == list(range(10)) and val.numel() == 0
    train, val = train_val_split(1, 0.9)
    assert train.tolist() == [0] and val.numel() == 0


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 1.5, float("nan")])
def test_split_rejects_bad_fraction(fraction: float) -> None:
    with pytest.raises(ValueError, match=r"val_fraction must be in \[0, 1\)"):
        train_val_split(10, fraction)
    with pytest.raises(DataError):
        train_val_split(10, fraction)


def test_random_subset() -> None:
    subset = random_subset(1000, 100, seed=3)
    assert len(subset) == 100 == len(set(subset.tolist()))
    assert subset.min() >= 0 and subset.max() < 1000
    assert torch.equal(subset, torch.sort(subset).values)
    assert torch.equal(subset, random_subset(1000, 100, seed=3))
    assert random_subset(1000, 100, seed=None).shape == (100,)
    assert random_subset(5, 5, seed=0).tolist() == [0, 1, 2, 3, 4]
    assert random_subset(5, 0, seed=0).numel() == 0


def test_random_subset_rejects_too_large() -> None:
    with pytest.raises(DataError, match="subset size 11 is larger than the dataset size 10"):
        random_subset(10, 11, seed=0)
    with pytest.raises(ValueError, match="non-negative"):
        random_subset(10, -1, seed=0)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 60), batch=st.integers(1, 16), drop_last=st.booleans(), seed=st.integers(0, 99)
)
def test_batches_visit_each_sample_once_in_the_generators_order(
    n: int, batch: int, drop_last: bool, seed: int
) -> None:
    """A shuffled epoch is torch.randperm's order from the generator, cut into batches (the
    same batches whether gathered per batch or once per epoch), images still paired with
    their labels; an unshuffled one is the split in order. drop_last drops only a short tail."""
    from dfl.data.batches import Split

    labels = torch.arange(n)
    images = labels.to(torch.uint8).reshape(n, 1, 1).expand(n, 2, 2).contiguous()
    split = Split(images, labels)
    for generator in (None, torch.Generator().manual_seed(seed)):
        got = list(split.batches(batch, generator=generator, drop_last=drop_last))
        order = (
            labels
            if generator is None
            else torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        )
        kept = n - n % batch if drop_last else n
        assert len(got) == split.num_batches(batch, drop_last)
        assert all(len(y) == batch for _, y in got[:-1])  # only the last may be short
        seen = torch.cat([y for _, y in got]) if got else torch.empty(0, dtype=torch.int64)
        assert torch.equal(seen, order[:kept])
        for x, y in got:
            assert torch.equal(x[:, 0, 0], y.to(torch.uint8))  # each image with its own label
