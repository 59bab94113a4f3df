"""The linear-code yardstick: principal components rebuild what lies in their span exactly,
and no other k-dimensional projection does better on the training images."""

from __future__ import annotations

import torch

from dfl.experiments.pca import reconstruction_mse


def images_in_a_subspace(n: int, rank: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(rank, 784, generator=g, dtype=torch.float64)
    codes = torch.randn(n, rank, generator=g, dtype=torch.float64)
    x = 128 + 12 * codes @ basis / 784**0.5 * 4  # around mid-grey, within uint8 mostly
    return x.clamp(0, 255)


def test_a_code_as_wide_as_the_data_rebuilds_it_and_narrower_ones_lose_more():
    x = images_in_a_subspace(600, rank=5, seed=0).round().to(torch.uint8)
    mse = reconstruction_mse(x[:500], {"held": x[500:]}, [1, 3, 5, 20])
    errors = [mse[k]["held"] for k in (1, 3, 5, 20)]
    assert errors == sorted(errors, reverse=True) and errors[0] > 10 * errors[2]
    # rank 5 up to the uint8 rounding: about (1/255)^2 / 12 per pixel
    assert errors[2] < 2e-6


def test_it_matches_a_projection_on_the_svd_of_the_centred_images():
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (300, 28, 28), generator=g, dtype=torch.uint8)
    train, held = x[:200], x[200:]
    got = reconstruction_mse(train, {"held": held, "train": train}, [10])[10]
    t = train.flatten(1).double() / 255
    mean = t.mean(0)
    _, _, vh = torch.linalg.svd(t - mean, full_matrices=False)
    basis = vh[:10].T
    for name, part in (("held", held), ("train", train)):
        y = part.flatten(1).double() / 255 - mean
        want = float((((y @ basis) @ basis.T - y) ** 2).mean())
        assert abs(got[name] - want) < 1e-9 * max(1.0, want) + 1e-12
    # on the images it was fitted to, no random 10-wide projection does better
    q, _ = torch.linalg.qr(torch.randn(784, 10, generator=g, dtype=torch.float64))
    y = t - mean
    assert got["train"] < float((((y @ q) @ q.T - y) ** 2).mean())
