"""The best linear code: principal component analysis as the yardstick for an autoencoder.

Among all codes of k numbers that a linear map makes and a linear map reads back, the top k
principal components of the training images rebuild them with the least squared error. An
autoencoder with a k-wide code that does worse than this has learnt less than a projection
would; one that does better shows what its non-linearity buys. Fitted on the training split
only; the MSE is per pixel on pixels in [0, 1], as the autoencoders' losses are."""

from __future__ import annotations

import torch


def reconstruction_mse(
    train: torch.Tensor, held_out: dict[str, torch.Tensor], sizes: list[int]
) -> dict[int, dict[str, float]]:
    """For each code size k, the per-pixel MSE of rebuilding each held-out split (uint8 images,
    any shape [N, ...]) from its top-k principal components of `train`."""
    x = _pixels(train)
    mean = x.mean(0)
    centred = x - mean
    # The covariance's eigenvectors, largest first (784 x 784: cheaper than an SVD of x).
    _, vectors = torch.linalg.eigh(centred.T @ centred)
    vectors = vectors.flip(1)
    out: dict[int, dict[str, float]] = {}
    for k in sizes:
        basis = vectors[:, :k]
        out[k] = {}
        for name, images in held_out.items():
            y = _pixels(images) - mean
            rebuilt = (y @ basis) @ basis.T
            out[k][name] = float(((rebuilt - y) ** 2).mean())
    return out


def _pixels(images: torch.Tensor) -> torch.Tensor:
    return images.flatten(1).to(torch.float64) / 255.0
