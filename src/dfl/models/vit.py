"""Vision Transformer, one class for both forms the lab needs, and attention rollout.

`vit_lab` is the notebook's ViT (an early, 2020 vit-pytorch): patch 7 -> 16 patches + a class
token, Linear(49, dim) patch embedding, learned positions and class token drawn from N(0, 1),
`depth` pre-LayerNorm residual blocks of attention and MLP, attention scaled by dim^-0.5 (not
per head), an MLP head on the class token, no dropout. `vit` is the modern form: per-head
scale dim_head^-0.5, LayerNorm -> Linear head, dropout, patch 4/7/14, class-token or mean
pooling. Attention itself is `dfl.models.attention.MultiHeadSelfAttention`, the one copy.
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, PositiveInt
from torch import nn

from dfl.errors import ShapeError
from dfl.models.attention import MultiHeadSelfAttention
from dfl.models.registry import register
from dfl.models.token_linear import token_wise

Probability = Annotated[float, Field(ge=0.0, lt=1.0)]  # a dropout rate, checked at the registry


def to_patches(images: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, H/p * W/p, p * p * C), patches in row-major order, pixels within a
    patch row-major with channels last (the notebook's `b c (h p1) (w p2) -> b (h w) (p1 p2 c)`)."""
    b, c, h, w = images.shape
    if h % patch or w % patch:
        raise ShapeError(f"patch {patch} does not divide the {h}x{w} image")
    x = images.reshape(b, c, h // patch, patch, w // patch, patch)  # (B, C, gh, p, gw, p)
    x = x.permute(0, 2, 4, 3, 5, 1)  # (B, gh, gw, p, p, C)
    return x.reshape(b, (h // patch) * (w // patch), patch * patch * c)  # (B, N, p*p*C)


class Block(nn.Module):
    """Pre-LayerNorm residual attention, then pre-LayerNorm residual MLP."""

    def __init__(self, attn: MultiHeadSelfAttention, dim: int, mlp_dim: int, dropout: float):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), attn
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            token_wise(nn.Linear(dim, mlp_dim)),
            nn.GELU(),
            nn.Dropout(dropout),
            token_wise(nn.Linear(mlp_dim, dim)),
            nn.Dropout(dropout),
        )

    def forward(
        self, x: torch.Tensor, with_weights: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The block's output and, if asked, its attention weights (B, h, T, T). Training
        asks for none, so attention runs fused."""
        if with_weights:
            steps = self.attn.attend(self.norm1(x))
            attended, weights = steps.output, steps.weights
        else:
            attended, weights = self.attn(self.norm1(x)), None
        x = x + attended  # (B, T, dim)
        x = x + self.mlp(self.norm2(x))  # (B, T, dim)
        return x, weights


class ViT(nn.Module):
    """A ViT classifier for (B, C, H, W) images; returns logits (B, num_classes)."""

    def __init__(
        self,
        *,
        image_size: int = 28,
        channels: int = 1,
        num_classes: int = 10,
        patch: int = 7,
        dim: int = 64,
        depth: int = 6,
        heads: int = 8,
        dim_head: int | None = None,  # None: dim / heads, as the notebook
        mlp_dim: int = 128,
        scale: Literal["dim_head", "dim"] = "dim_head",  # "dim": the notebook's dim^-0.5
        pool: Literal["cls", "mean"] = "cls",
        head: Literal["mlp", "norm_linear"] = "norm_linear",  # "mlp": the notebook's head
        dropout: float = 0.0,  # after the MLP's activation and after each residual branch
        attn_dropout: float = 0.0,  # on the attention weights
        emb_dropout: float = 0.0,  # on the token embeddings, before the first block
    ) -> None:
        super().__init__()
        if image_size % patch:
            divisors = [p for p in range(1, image_size + 1) if image_size % p == 0]
            raise ShapeError(
                f"patch {patch} does not divide the {image_size}x{image_size} image "
                f"(choose one of {', '.join(map(str, divisors))})"
            )
        self.image_size, self.patch, self.pool = image_size, patch, pool
        self.grid = image_size // patch
        tokens = self.grid**2 + (pool == "cls")  # 16 patches + class token for the notebook
        self.embed = token_wise(nn.Linear(channels * patch * patch, dim))
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim)) if pool == "cls" else None
        self.pos_embedding = nn.Parameter(torch.randn(1, tokens, dim))
        self.emb_dropout = nn.Dropout(emb_dropout)
        self.blocks = nn.ModuleList(
            Block(
                MultiHeadSelfAttention(
                    dim,
                    heads=heads,
                    dim_head=dim_head,
                    scale=dim**-0.5 if scale == "dim" else None,
                    attn_dropout=attn_dropout,
                    dropout=dropout,
                ),
                dim,
                mlp_dim,
                dropout,
            )
            for _ in range(depth)
        )
        if head == "mlp":
            self.head = nn.Sequential(
                nn.Linear(dim, mlp_dim), nn.GELU(), nn.Linear(mlp_dim, num_classes)
            )
        else:
            self.head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, num_classes))

    def forward_with_attention(
        self, images: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits (B, classes) and each block's attention weights (B, heads, T, T)."""
        return self._encode(images, with_weights=True)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self._encode(images, with_weights=False)[0]

    def _encode(
        self, images: torch.Tensor, with_weights: bool
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x = self.embed(to_patches(images, self.patch))  # (B, N, dim)
        if self.cls_token is not None:
            cls = self.cls_token.expand(x.shape[0], -1, -1)  # (B, 1, dim)
            x = torch.cat((cls, x), dim=1)  # (B, T = N + 1, dim)
        x = self.emb_dropout(x + self.pos_embedding)  # (B, T, dim)
        weights = []
        for block in self.blocks:
            x, w = block(x, with_weights)
            if w is not None:
                weights.append(w)
        pooled = x[:, 0] if self.cls_token is not None else x.mean(dim=1)  # (B, dim)
        return self.head(pooled), weights  # (B, classes)


@torch.no_grad()
def attention_rollout(model: ViT, images: torch.Tensor, *, normalise: bool = True) -> torch.Tensor:
    """Where the prediction looks: attention rollout (Abnar & Zuidema, 2020) -> (B, H, W).

    Per block: average the heads, add the identity (the residual path carries each token to
    itself), renormalise rows; multiply the blocks together from the first. The class token's
    row over the patches (with mean pooling: the mean of all rows) is upsampled to the image.
    `normalise` scales each map to a maximum of 1 for display."""
    was_training = model.training
    model.eval()
    try:
        _, weights = model.forward_with_attention(images)
    finally:
        model.train(was_training)
    tokens = weights[0].shape[-1]
    eye = torch.eye(tokens, device=images.device)
    rollout = eye.expand(images.shape[0], tokens, tokens)  # (B, T, T)
    for w in weights:
        a = w.float().mean(dim=1) + eye  # (B, T, T)
        a = a / a.sum(dim=-1, keepdim=True)
        rollout = a @ rollout  # (B, T, T)
    # The class token's row (to each patch); with mean pooling, the mean of all rows.
    row = rollout[:, 0, 1:] if model.cls_token is not None else rollout.mean(dim=1)  # (B, N)
    grid = row.reshape(-1, 1, model.grid, model.grid)  # (B, 1, g, g)
    size = (model.image_size, model.image_size)
    maps = F.interpolate(grid, size=size, mode="bilinear", align_corners=False)[:, 0]
    if normalise:
        maps = maps / maps.amax(dim=(1, 2), keepdim=True).clamp_min(1e-12)
    return maps  # (B, H, W)


@register("vit_lab")
def vit_lab(
    *,
    dim: PositiveInt = 64,
    depth: PositiveInt = 6,
    heads: PositiveInt = 8,
    mlp_dim: PositiveInt = 128,
    num_classes: PositiveInt = 10,
) -> nn.Module:
    """Lab 3.3 Q2 notebook ViT: patch 7, class token, scale dim^-0.5, MLP head, no dropout."""
    return ViT(
        patch=7,
        dim=dim,
        depth=depth,
        heads=heads,
        mlp_dim=mlp_dim,
        scale="dim",
        pool="cls",
        head="mlp",
        num_classes=num_classes,
    )


@register("vit")
def vit(
    *,
    patch: PositiveInt = 4,  # 49 patches of 4x4: finer than the notebook's 16, better on MNIST
    dim: PositiveInt = 64,
    depth: PositiveInt = 6,
    heads: PositiveInt = 4,
    dim_head: PositiveInt = 16,
    mlp_dim: PositiveInt = 128,
    pool: Literal["cls", "mean"] = "cls",  # cls keeps attention rollout's class-token row
    head: Literal["mlp", "norm_linear"] = "norm_linear",
    scale: Literal["dim_head", "dim"] = "dim_head",
    dropout: Probability = 0.1,
    attn_dropout: Probability = 0.0,
    emb_dropout: Probability = 0.0,
    num_classes: PositiveInt = 10,
) -> nn.Module:
    """Modern ViT: per-head scale, LayerNorm->Linear head, dropout, patch 4/7/14, cls or mean."""
    return ViT(
        patch=patch,
        dim=dim,
        depth=depth,
        heads=heads,
        dim_head=dim_head,
        mlp_dim=mlp_dim,
        pool=pool,
        head=head,
        scale=scale,
        dropout=dropout,
        attn_dropout=attn_dropout,
        emb_dropout=emb_dropout,
        num_classes=num_classes,
    )
