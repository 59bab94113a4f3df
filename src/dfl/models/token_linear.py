"""`token_wise`: how a model says that a linear layer is applied to every token of a sequence.

Models build plain nn.Linear; how a layer runs on the machine is the runtime's business. The
ViTs' token-wise layers go through oneDNN on CPUs where that was measured to pay (AMD, more
than one thread: dfl/runtime/onednn.py has the measurements), which the trainer arranges with
`dfl.runtime.cpu_swaps` after building the model. The mark is a plain attribute: it is not in
the state dict, and a marked layer is nn.Linear in every other way.
"""

from __future__ import annotations

from torch import nn

from dfl.runtime.onednn import TOKEN_WISE


def token_wise(linear: nn.Linear) -> nn.Linear:
    """`linear`, marked as applied to every token (B, T, in) -> (B, T, out)."""
    setattr(linear, TOKEN_WISE, True)
    return linear
