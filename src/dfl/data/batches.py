"""The whole dataset on the training device; a batch is a slice of it.

No per-sample Dataset, no DataLoader, no per-image conversion: images stay uint8 in device
memory (60,000 x 28 x 28 is 47 MB) and each batch is sliced, converted to float and, when
asked, augmented as one tensor. Shuffling draws from a CPU generator so that the device may
change the speed of a run, never what it computes. A shuffled epoch holds one reordered copy
of its split.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081  # over the 60,000 training images, pixels / 255


@dataclass(frozen=True)
class Split:
    """One split (train, val or test) resident on a device."""

    images: torch.Tensor  # uint8 (N, 28, 28)
    labels: torch.Tensor  # int64 (N,)

    def __len__(self) -> int:
        return self.labels.shape[0]

    @classmethod
    def of(cls, images: torch.Tensor, labels: torch.Tensor, device: torch.device) -> Split:
        return cls(images.to(device).contiguous(), labels.to(device).contiguous())

    def num_batches(self, batch_size: int, drop_last: bool = False) -> int:
        whole, rest = divmod(len(self), batch_size)
        return whole if drop_last or not rest else whole + 1

    def batches(
        self,
        batch_size: int,
        *,
        generator: torch.Generator | None = None,
        drop_last: bool = False,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield (uint8 images, labels) batches; shuffled when a generator is given.

        A shuffled epoch gathers the whole split in its new order once, so that every batch
        is a view: gathering each batch by index cost the autoencoder at batch 16 about 6% of
        its training speed (two index ops a step). The batches are the same either way."""
        images, labels = self.images, self.labels
        if generator is not None:
            order = torch.randperm(len(self), generator=generator).to(labels.device)
            images, labels = images[order], labels[order]
        for b in range(self.num_batches(batch_size, drop_last)):
            start = b * batch_size
            yield images[start : start + batch_size], labels[start : start + batch_size]


def to_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, H, W) -> float (B, 1, H, W) in [0, 1]: pixels / 255, as the lab feeds them."""
    return images.unsqueeze(1).float().div_(255.0)


def standardize(x: torch.Tensor) -> torch.Tensor:
    """(x - mean) / std with MNIST's training statistics; applied after augmentation so that
    the zeros an affine transform brings in are black pixels, not the mean."""
    return x.sub_(MNIST_MEAN).div_(MNIST_STD)


def model_input(
    images: torch.Tensor,
    normalize: bool,
    channels_last: bool = False,
    augment: tuple[torch.Tensor, int, float, float] | None = None,
) -> torch.Tensor:
    """uint8 (B, H, W) images -> the float (B, 1, H, W) batch a model takes: the one input
    pipeline of training, evaluation and `load_trained`. Pixels / 255 (`to_input`); augmented
    when `augment` gives (draws, shift, rotate, scale) (`affine`: training only); standardised
    after that when `normalize` (data.normalize); channels-last when the model's convolutions
    run in that layout (the trainer's, see trainer.py)."""
    x = to_input(images)
    if augment is not None:
        x = affine(x, *augment)
    x = standardize(x) if normalize else x
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def affine_draws(b: int, scale: float, generator: torch.Generator) -> torch.Tensor:
    """`random_affine`'s random numbers for a batch of `b`, in [-1, 1]: angle, x shift, y shift
    and, with zoom, scale. From the CPU generator, so every device draws the same."""
    return torch.rand(b, 4 if scale else 3, generator=generator).mul_(2).sub_(1)


def random_affine(
    x: torch.Tensor, shift: int, rotate: float, generator: torch.Generator, scale: float = 0.0
) -> torch.Tensor:
    """Shift each image by up to `shift` pixels, rotate it by up to `rotate` degrees and zoom
    it by a factor in [1 - scale, 1 + scale], in one batched grid_sample. Without zoom the
    draws are those of earlier versions, so older runs resume and repeat exactly."""
    return affine(x, affine_draws(x.shape[0], scale, generator), shift, rotate, scale)


def affine(
    x: torch.Tensor, params: torch.Tensor, shift: int, rotate: float, scale: float = 0.0
) -> torch.Tensor:
    """The transforms of `affine_draws`'s `params` applied to `x`, computed where the params
    are (the CPU for the per-step loop, the device for a CUDA graph's step)."""
    _, _, h, w = x.shape
    angle = params[:, 0] * math.radians(rotate)
    tx, ty = params[:, 1] * (2 * shift / w), params[:, 2] * (2 * shift / h)  # grid units
    cos, sin = angle.cos(), angle.sin()
    if scale:  # theta maps output to input coordinates, so a zoom by z divides them by z
        zoom = 1 + params[:, 3] * scale
        cos, sin = cos / zoom, sin / zoom
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, padding_mode="zeros", align_corners=False)
