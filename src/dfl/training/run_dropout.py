"""Dropout in runs trained as one (fused.py): each run's masks drawn from its own generator.

A lone run's dropout draws from the global generator, which its seed set; runs trained as one
keep a generator each, in that generator's state, and `drawing_from` hands them to the group's
dropout layers while it steps.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

_generators: list[torch.Generator] | None = None  # the group's, one per run, while it steps


@contextmanager
def drawing_from(generators: list[torch.Generator]) -> Iterator[None]:
    global _generators
    _generators = generators
    try:
        yield
    finally:
        _generators = None


def _noise_like(x: torch.Tensor, feature: bool) -> torch.Tensor:
    """An empty tensor for dropout's mask, shaped as PyTorch's own CPU dropout makes it: the
    input's shape, or (N, C, 1, 1) for channel dropout. Contiguous, as a lone run's input to
    dropout is (a stacked run's may be a transposed view), since the draws fill it in memory
    order."""
    if feature:
        return x.new_empty((x.shape[0], x.shape[1], *[1] * (x.dim() - 2)))
    return x.new_empty(x.shape)


class _RunsDropout(torch.autograd.Function):
    """Dropout over stacked runs (R, ...): run r's mask is drawn from run r's generator with
    the same calls PyTorch's CPU dropout makes (an empty tensor, bernoulli_(1 - p), div_ by
    1 - p), so each run gets the mask it would have drawn alone. vmap (which cannot give each
    slice a generator of its own) hands this Function the whole stack: see `vmap`."""

    @staticmethod
    def forward(x: torch.Tensor, p: float, feature: bool) -> tuple[torch.Tensor, torch.Tensor]:
        if _generators is None or len(_generators) != x.shape[0]:
            raise RuntimeError("run dropout outside a fused group's step")
        masks = torch.stack(
            [
                _noise_like(x[r], feature).bernoulli_(1 - p, generator=g)
                for r, g in enumerate(_generators)
            ]
        ).div_(1 - p)
        return x * masks, masks

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
        ctx.save_for_backward(output[1])
        ctx.mark_non_differentiable(output[1])

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor, _: torch.Tensor) -> tuple:
        (masks,) = ctx.saved_tensors
        return grad * masks, None, None

    @staticmethod
    def vmap(info: Any, in_dims: tuple, x: torch.Tensor, p: float, feature: bool) -> tuple:
        stacked = x.movedim(in_dims[0], 0).contiguous()  # run r's activations: stacked[r]
        return _RunsDropout.apply(stacked, p, feature), (0, 0)


class RunDropout(nn.Module):
    """nn.Dropout / nn.Dropout2d in a fused group's model: on stacked runs (R, ...) in the
    stacked layers (stacked.py), on one run's slice under vmap (fused.py)."""

    def __init__(self, p: float, feature: bool) -> None:
        super().__init__()
        self.p, self.feature = p, feature

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        return _RunsDropout.apply(x, self.p, self.feature)[0]
