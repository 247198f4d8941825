"""The plain, obviously-correct CAReLU: autograd through eager ops. It is the oracle for every fast path."""

from __future__ import annotations

import torch
from torch import Tensor

from caer_lightning.ops.common import accumulation_dtype, channel_view


def competition_reference(x: Tensor, variant: str, dims: tuple[int, ...], eps: float) -> Tensor:
    """p per group, kept as size-1 dims; `x` is already in the accumulation dtype."""
    if variant == "energy":
        return torch.relu(x).square().sum(dims, keepdim=True) / (x.square().sum(dims, keepdim=True) + eps)
    if variant == "l1":
        return torch.relu(x).sum(dims, keepdim=True) / (x.abs().sum(dims, keepdim=True) + eps)
    return (x > 0).to(x.dtype).mean(dims, keepdim=True)  # count: no gradient flows through p


def carelu_reference(
    z: Tensor, alpha: Tensor, beta: Tensor, K: float, variant: str, dims: tuple[int, ...], eps: float,
    channel_dim: int | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """ReLU(s·z) with s = K·tanh(α·p + β); returns (output, p, s), p and s detached, kept as size-1 dims. With
    `channel_dim`, α, β have one value per channel of that dim and s is per (group, channel)."""
    x = z.to(accumulation_dtype(z.dtype))
    p = competition_reference(x, variant, dims, eps)
    if channel_dim is not None:
        alpha, beta = channel_view(alpha, z.dim(), channel_dim), channel_view(beta, z.dim(), channel_dim)
    s = K * torch.tanh(alpha.to(x.dtype) * p + beta.to(x.dtype))
    return torch.relu(s * x).to(z.dtype), p.detach(), s.detach()
