"""Self-attention, the one copy: NumPy and PyTorch, single- and multi-head, causal and padding
masks, and the `nn.Module` the ViT uses.

    Q = X W_q   K = X W_k   V = X W_v           (n, d) @ (d, d_q | d_v), then split into h heads
    scores  = Q K^T * scale                     (h, n, n)   scale = d_k^-0.5 unless given
    weights = softmax(scores over keys)         (h, n, n)   each row sums to 1
    output  = concat_h(weights V)               (n, d_v)

Both implementations return every intermediate (a small dataclass each) so a test or a report
can compare them tensor by tensor. The softmax subtracts the row max before `exp` (so large
scores cannot overflow) and masks by leaving keys out of the sum, never by clipping scores.
`lab_bug_attention` keeps the notebook's mistakes on purpose, to show what they did.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from dfl.errors import ConfigError
from dfl.models.token_linear import token_wise

# ---------------------------------------------------------------------------------------------
# NumPy


@dataclass(frozen=True)
class AttentionArrays:
    """NumPy attention, every step; a head axis always, even for one head."""

    q: np.ndarray  # (..., h, n, d_k)
    k: np.ndarray  # (..., h, n, d_k)
    v: np.ndarray  # (..., h, n, d_v / h)
    scores: np.ndarray  # (..., h, n, n), scaled, before masking
    weights: np.ndarray  # (..., h, n, n), rows sum to 1 (0 where every key is masked)
    output: np.ndarray  # (..., n, d_v), heads concatenated


def stable_softmax(scores: np.ndarray, keep: np.ndarray | None = None) -> np.ndarray:
    """Softmax over the last axis; `keep` (broadcastable bool) False leaves a key out.

    Subtracting the row max makes the largest exponent exp(0) = 1, so nothing overflows; a row
    whose keys are all masked gets weights 0 instead of 0/0."""
    if keep is not None:
        scores = np.where(keep, scores, -np.inf)
    row_max = scores.max(axis=-1, keepdims=True)
    row_max = np.where(np.isfinite(row_max), row_max, 0.0)  # an all-masked row: no shift
    e = np.exp(scores - row_max)
    total = e.sum(axis=-1, keepdims=True)  # keepdims: divide each row by its own sum
    return e / np.where(total == 0, 1.0, total)


def keep_mask_numpy(n: int, causal: bool, pad_mask: np.ndarray | None) -> np.ndarray | None:
    """Which (query, key) pairs take part: (..., 1, n, n) bool, or None for all of them.
    `pad_mask` (..., n) is True at padding tokens, which no query may attend to."""
    keep = None
    if causal:
        keep = np.tril(np.ones((n, n), dtype=bool))  # query i sees keys 0..i
    if pad_mask is not None:
        keys = ~np.asarray(pad_mask, dtype=bool)[..., None, None, :]  # (..., 1, 1, n)
        keep = keys if keep is None else keep & keys
    return keep


def split_heads_numpy(x: np.ndarray, heads: int) -> np.ndarray:
    """(..., n, h * e) -> (..., h, n, e)"""
    *lead, n, width = x.shape
    return np.swapaxes(x.reshape(*lead, n, heads, width // heads), -2, -3)


def attention_numpy(
    x: np.ndarray,
    w_q: np.ndarray,
    w_k: np.ndarray,
    w_v: np.ndarray,
    *,
    heads: int = 1,
    causal: bool = False,
    pad_mask: np.ndarray | None = None,
    scale: float | None = None,
) -> AttentionArrays:
    """Self-attention of `x` (..., n, d) with W_q, W_k (d, d_q) and W_v (d, d_v); d_q and d_v
    split evenly over `heads`. `scale` defaults to d_k^-0.5 with d_k = d_q / heads."""
    check_heads(heads, d_q=w_q.shape[1], d_v=w_v.shape[1])
    n = x.shape[-2]
    q = split_heads_numpy(x @ w_q, heads)  # (..., h, n, d_k)
    k = split_heads_numpy(x @ w_k, heads)  # (..., h, n, d_k)
    v = split_heads_numpy(x @ w_v, heads)  # (..., h, n, d_v/h)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = (q @ np.swapaxes(k, -1, -2)) * scale  # (..., h, n, n)
    weights = stable_softmax(scores, keep_mask_numpy(n, causal, pad_mask))
    heads_out = weights @ v  # (..., h, n, d_v/h)
    output = np.swapaxes(heads_out, -2, -3).reshape(*x.shape[:-1], -1)  # (..., n, d_v)
    return AttentionArrays(q, k, v, scores, weights, output)


def lab_bug_attention(
    x: np.ndarray, w_q: np.ndarray, w_k: np.ndarray, w_v: np.ndarray, *, fix_clip: bool = False
) -> AttentionArrays:
    """The notebook's single-head attention with its two bugs, kept on purpose.

    1. `np.clip(scores, 100, -100)`: bounds reversed. NumPy computes min(max(s, 100), -100),
       so *every* score becomes -100; the softmax of equal scores is uniform (1/n) and every
       output row is the same mean of V: the notebook's identical rows.
    2. `e / np.sum(e, axis=1)` without keepdims: the (n,) row sums broadcast along the last
       axis, so entry (i, j) is divided by row *j*'s sum, not row i's. Hidden by bug 1 (all
       sums are equal); `fix_clip=True` removes bug 1 to show that rows then stop summing to 1.
    Only for a single (n, d) input, as in the notebook; `scores` are after the clip, as the
    softmax saw them."""
    q, k, v = x @ w_q, x @ w_k, x @ w_v  # (n, d_k), (n, d_k), (n, d_v)
    scores = q @ k.T / np.sqrt(q.shape[-1])  # (n, n)
    low, high = (-100, 100) if fix_clip else (100, -100)  # the notebook's reversed bounds
    scores = np.clip(scores, low, high)
    e = np.exp(scores)
    weights = e / np.sum(e, axis=1)  # the wrong axis: column j divided by row j's sum
    return AttentionArrays(q[None], k[None], v[None], scores[None], weights[None], weights @ v)


# ---------------------------------------------------------------------------------------------
# PyTorch


@dataclass(frozen=True)
class AttentionTensors:
    """PyTorch attention, every step; shapes as `AttentionArrays`, with a leading batch axis
    when the input has one."""

    q: torch.Tensor  # (..., h, n, d_k)
    k: torch.Tensor  # (..., h, n, d_k)
    v: torch.Tensor  # (..., h, n, d_v / h)
    scores: torch.Tensor  # (..., h, n, n), scaled, before masking
    weights: torch.Tensor  # (..., h, n, n), before attention dropout
    output: torch.Tensor  # (..., n, d_v), heads concatenated


def stable_softmax_torch(scores: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax over the last axis, as `stable_softmax`. The row max is detached: softmax does
    not change when a constant is subtracted, so its gradient is zero and need not be traced.
    Without a mask, torch's softmax does the same subtraction in one kernel, where the explicit
    steps are ten elementwise passes: 2.5x the time, forward and backward, on the notebook
    ViT's (128, 8, 17, 17) scores, and the notebook ViT trains 1.13x faster for it."""
    if keep is None:
        return scores.softmax(dim=-1)
    scores = scores.masked_fill(~keep, float("-inf"))
    row_max = scores.amax(dim=-1, keepdim=True).detach()
    row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
    e = torch.exp(scores - row_max)
    total = e.sum(dim=-1, keepdim=True)
    return e / torch.where(total == 0, torch.ones_like(total), total)


def keep_mask_torch(
    n: int, causal: bool, pad_mask: torch.Tensor | None, device: torch.device
) -> torch.Tensor | None:
    """As `keep_mask_numpy`: True where a query may attend to a key."""
    keep = None
    if causal:
        keep = torch.ones(n, n, dtype=torch.bool, device=device).tril()
    if pad_mask is not None:
        keys = ~pad_mask.to(torch.bool)[..., None, None, :]  # (..., 1, 1, n)
        keep = keys if keep is None else keep & keys
    return keep


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(..., n, h * e) -> (..., h, n, e)"""
    return x.unflatten(-1, (heads, -1)).transpose(-2, -3)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(..., h, n, e) -> (..., n, h * e)"""
    return x.transpose(-2, -3).flatten(-2)


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    scale: float,
    keep: torch.Tensor | None = None,
    dropout: float = 0.0,
    training: bool = False,
) -> AttentionTensors:
    """Scaled dot-product attention of split heads: the step every PyTorch path shares."""
    scores = (q @ k.transpose(-1, -2)) * scale  # (..., h, n, n)
    weights = stable_softmax_torch(scores, keep)  # (..., h, n, n)
    dropped = nn.functional.dropout(weights, dropout, training) if dropout else weights
    output = merge_heads(dropped @ v)  # (..., n, d_v)
    return AttentionTensors(q, k, v, scores, weights, output)


def attention_torch(
    x: torch.Tensor,
    w_q: torch.Tensor,
    w_k: torch.Tensor,
    w_v: torch.Tensor,
    *,
    heads: int = 1,
    causal: bool = False,
    pad_mask: torch.Tensor | None = None,
    scale: float | None = None,
) -> AttentionTensors:
    """`attention_numpy` in PyTorch, same arguments: x (..., n, d), W (d, d_q | d_v)."""
    check_heads(heads, d_q=w_q.shape[1], d_v=w_v.shape[1])
    q = split_heads(x @ w_q, heads)  # (..., h, n, d_k)
    k = split_heads(x @ w_k, heads)  # (..., h, n, d_k)
    v = split_heads(x @ w_v, heads)  # (..., h, n, d_v/h)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    keep = keep_mask_torch(x.shape[-2], causal, pad_mask, x.device)
    return attend(q, k, v, scale=scale, keep=keep)


# On CPU the fused kernel loses on short sequences. Training samples per second, fused against
# explicit (batch 128, 2 cores, three runs each, alternating): the notebook ViT (17 tokens,
# 8 dimensions per head) 0.84-0.89x, the modern ViT (50 tokens) 1.02-1.06x.
FUSED_MIN_TOKENS = 32


class MultiHeadSelfAttention(nn.Module):
    """Multi-head self-attention as a layer: one bias-free Linear(dim, 3 * heads * dim_head)
    gives q, k and v (in that order, each split over heads), `attend`, then Linear(inner, dim).

    `scale` defaults to dim_head^-0.5 (per head, as in "Attention is all you need"); the lab's
    ViT passes dim^-0.5 instead, which makes its softmax flatter when heads > 1."""

    def __init__(
        self,
        dim: int,
        *,
        heads: int = 8,
        dim_head: int | None = None,
        scale: float | None = None,
        qkv_bias: bool = False,
        attn_dropout: float = 0.0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        check_heads(heads, **({"dim": dim} if dim_head is None else {}))
        dim_head = dim // heads if dim_head is None else dim_head
        inner = heads * dim_head
        self.heads, self.dim_head = heads, dim_head
        self.scale = dim_head**-0.5 if scale is None else scale
        self.attn_dropout = attn_dropout
        self.to_qkv = token_wise(nn.Linear(dim, 3 * inner, bias=qkv_bias))
        self.to_out = nn.Sequential(token_wise(nn.Linear(inner, dim)), nn.Dropout(dropout))

    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v (B, h, n, dim_head) from x (B, n, dim)."""
        q, k, v = (split_heads(t, self.heads) for t in self.to_qkv(x).chunk(3, dim=-1))
        return q, k, v

    def attend(
        self, x: torch.Tensor, *, causal: bool = False, pad_mask: torch.Tensor | None = None
    ) -> AttentionTensors:
        """Every step for x (B, n, dim); `output` is after the output projection."""
        q, k, v = self._qkv(x)
        keep = keep_mask_torch(x.shape[-2], causal, pad_mask, x.device)
        steps = attend(
            q, k, v, scale=self.scale, keep=keep, dropout=self.attn_dropout, training=self.training
        )
        return AttentionTensors(
            q, k, v, steps.scores, steps.weights, self.to_out(steps.output)
        )  # output: (B, n, dim)

    def forward(
        self, x: torch.Tensor, *, causal: bool = False, pad_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """`attend(x).output`, computed by PyTorch's fused kernel where that pays: the same
        softmax(q k^T scale) v in one kernel, without keeping the (n, n) scores and weights for
        the backward pass (tests check the two agree, gradients included). With a mask,
        `attend`: its fully masked rows give zeros where the fused kernel gives NaN."""
        short = x.device.type == "cpu" and x.shape[-2] < FUSED_MIN_TOKENS
        if causal or pad_mask is not None or short:
            return self.attend(x, causal=causal, pad_mask=pad_mask).output
        q, k, v = self._qkv(x)
        dropout = self.attn_dropout if self.training else 0.0
        out = nn.functional.scaled_dot_product_attention(
            q, k, v, dropout_p=dropout, scale=self.scale
        )
        return self.to_out(merge_heads(out))


# ---------------------------------------------------------------------------------------------


def check_heads(heads: int, **widths: int) -> None:
    """Heads split each width evenly; name the one that does not, instead of a reshape error."""
    if heads < 1:
        raise ConfigError(f"heads must be at least 1, not {heads}")
    for name, width in widths.items():
        if width % heads:
            raise ConfigError(f"{name} = {width} is not divisible by heads = {heads}")
