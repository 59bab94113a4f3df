"""`TokenLinear`: nn.Linear for token sequences, whose product on CPU goes through oneDNN.

On CPU, nn.Linear's fp32 product is MKL's GEMM, which on this project's AMD EPYC reaches about
half of what oneDNN's GEMM (behind PyTorch's convolutions) does: 217 against 423 GFLOP/s on
2048-square matrices, 210 against 250-290 at the ViT's shapes (benchmarks/RESULTS.md). A linear
layer applied to every token is the same product as a 1x1 convolution over a channels-last
image one pixel wide, so it can take oneDNN's path without copying anything: the notebook ViT
trains 1.10x and the modern ViT 1.14x faster for it (dfl's trainer, five alternating repeats).
The dense autoencoders' few, wide rows lose to the extra dispatch (0.57-0.89x), so only the
ViTs' token-wise layers use it. Parameters and state dict are nn.Linear's, and its numbers are
too, up to rounding; elsewhere (a GPU, a build without oneDNN, an empty input) it is nn.Linear
itself.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

ONEDNN = torch.backends.mkldnn.is_available()


class TokenLinear(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu" or not ONEDNN or x.numel() == 0:  # a convolution needs rows
            return super().forward(x)
        # (..., in) -> (1, in, rows, 1) whose strides are channels-last: a view, not a copy
        image = x.reshape(1, -1, 1, self.in_features).permute(0, 3, 1, 2)
        out = F.conv2d(image, self.weight[:, :, None, None], self.bias)  # (1, out, rows, 1)
        return out.permute(0, 2, 3, 1).reshape(*x.shape[:-1], self.out_features)
