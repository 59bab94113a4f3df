"""`TokenLinear`: nn.Linear for token sequences, whose product on CPU goes through oneDNN.

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
thread; everywhere else (Intel, ARM, a GPU, a build without oneDNN, an empty input) this is
nn.Linear itself.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


def _amd_cpu() -> bool:
    try:
        return "AuthenticAMD" in Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: no measurement says the detour pays there
        return False


# Whether the detour pays on this machine's CPU (tests set it to check the detour itself).
CONV_PATH = torch.backends.mkldnn.is_available() and _amd_cpu()


class TokenLinear(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        detour = CONV_PATH and x.device.type == "cpu" and torch.get_num_threads() > 1
        if not detour or x.numel() == 0:  # a convolution needs rows
            return super().forward(x)
        # (..., in) -> (1, in, rows, 1) whose strides are channels-last: a view, not a copy
        image = x.reshape(1, -1, 1, self.in_features).permute(0, 3, 1, 2)
        out = F.conv2d(image, self.weight[:, :, None, None], self.bias)  # (1, out, rows, 1)
        return out.permute(0, 2, 3, 1).reshape(*x.shape[:-1], self.out_features)
