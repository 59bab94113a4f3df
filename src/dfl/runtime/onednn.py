"""The ViTs' token-wise linear layers through oneDNN, where that was measured to pay.

On CPU, nn.Linear's fp32 product is MKL's GEMM, which on this project's AMD EPYC reaches about
half of what oneDNN's GEMM (behind PyTorch's convolutions) does: 217 against 423 GFLOP/s on
2048-square matrices, 210 against 250-290 at the ViT's shapes (benchmarks/RESULTS.md). A linear
layer applied to every token is the same product as a 1x1 convolution over a channels-last
image one pixel wide, so it can take oneDNN's path without copying anything: the notebook ViT
trains 1.10x and the modern ViT 1.14x faster for it (dfl's trainer, five alternating repeats).
The dense autoencoders' few, wide rows lose to the extra dispatch (0.57-0.89x), so only the
ViTs' token-wise layers use it. Parameters and state dict are nn.Linear's, and its numbers are
too, up to rounding.

It pays only where MKL is the slow one. On an Intel Xeon, where MKL is at home, the notebook
ViT trained 1.12x faster with plain nn.Linear at 2 threads (17.4 against 19.5 s an epoch of
60,000 images) and 1.11x at 1 thread. At 1 thread PyTorch sends a batch-1 1x1 convolution to
its own slow kernel instead of oneDNN ("THNN is faster when single-threaded"), so the detour
reaches nothing there. So the convolution is taken on AMD CPUs with more than one intra-op
thread; everywhere else (Intel, ARM, a GPU, a build without oneDNN, an empty input) the layer
is nn.Linear itself.

Models know nothing of this: they build plain nn.Linear and mark the ones they apply to every
token (`dfl.models.token_linear.token_wise`, which sets the attribute TOKEN_WISE). Whoever
runs a model on a device calls `cpu_swaps(model, device)` once, after building it: on a CPU
where the detour pays, the marked layers become `TokenLinear` (the class of the same module
is changed, so parameters, their identity and the state dict's keys stay as they were, and a
checkpoint loads either way). The thread count can change during a run (the core share, a
pinned worker), so `TokenLinear` checks it again at each call.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

TOKEN_WISE = "dfl_token_wise"  # the attribute marking an nn.Linear applied to every token


class TokenLinear(nn.Linear):
    """nn.Linear whose product on CPU, with more than one intra-op thread, is a channels-last
    1x1 convolution (oneDNN's GEMM); nn.Linear itself everywhere else."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Compiled, it is nn.Linear: the thread count cannot be traced (a graph break at every
        # layer, each a recompilation of this forward until dynamo gives up on it), and
        # inductor chooses the product's kernel itself.
        if torch.compiler.is_compiling():
            return super().forward(x)
        detour = x.device.type == "cpu" and torch.get_num_threads() > 1
        if not detour or x.numel() == 0:  # a convolution needs rows
            return super().forward(x)
        # (..., in) -> (1, in, rows, 1) whose strides are channels-last: a view, not a copy
        image = x.reshape(1, -1, 1, self.in_features).permute(0, 3, 1, 2)
        out = F.conv2d(image, self.weight[:, :, None, None], self.bias)  # (1, out, rows, 1)
        return out.permute(0, 2, 3, 1).reshape(*x.shape[:-1], self.out_features)


@functools.cache
def _amd_cpu() -> bool:
    try:
        return "AuthenticAMD" in Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: no measurement says the detour pays there
        return False


def detour_pays(device: torch.device | str) -> bool:
    """Whether the token-wise layers of a model on `device` take the oneDNN detour: on an AMD
    CPU, with oneDNN in this build (the thread count is checked at each call)."""
    return (
        torch.device(device).type == "cpu" and _amd_cpu() and torch.backends.mkldnn.is_available()
    )


def cpu_swaps(model: nn.Module, device: torch.device | str) -> int:
    """Run `model`'s token-wise linear layers (the nn.Linear marked TOKEN_WISE) through oneDNN
    where that pays on `device` (the module docstring); returns how many layers it swapped.
    Nothing else about the model changes: same parameters, same state dict keys."""
    if not detour_pays(device):
        return 0
    swapped = 0
    for module in model.modules():
        if type(module) is nn.Linear and getattr(module, TOKEN_WISE, False):
            module.__class__ = TokenLinear  # no state of its own: only forward differs
            swapped += 1
    return swapped
