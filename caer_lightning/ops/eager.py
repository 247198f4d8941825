"""CAReLU forward and backward from eager PyTorch ops (any device, any dtype).

Forward: one reduction for p, one pass for ReLU(s·z). Backward needs only the input z and per-group scalars
(p, tanh(αp+β), the normaliser of p): one reduction for G = Σ g·[s·z>0]·z, one pass for dL/dz. Sums
accumulate in float32 (float64 for float64 inputs).

Per-channel α, β (params="channel", `channel_dim` given): tanh(α_c·p + β_c) per (group, channel), broadcast over
the group's other entries; backward sums G per (group, channel) and gives dL/dα, dL/dβ of shape (C,).
"""

from __future__ import annotations

import torch
from torch import Tensor

from caer_lightning.ops.common import accumulation_dtype, channel_view


def competition(z: Tensor, variant: str, dims: list[int], eps: float, acc: torch.dtype) -> tuple[Tensor, Tensor]:
    """p per group and its normaliser (Σz²+eps, Σ|z|+eps, or the group size), both in `acc`, keepdim."""
    if variant == "energy":
        # vector_norm casts to `acc` before squaring, so half inputs cannot overflow.
        positive = torch.linalg.vector_norm(torch.relu(z), 2, dims, keepdim=True, dtype=acc).square_()
        normaliser = torch.linalg.vector_norm(z, 2, dims, keepdim=True, dtype=acc).square_().add_(eps)
    elif variant == "l1":
        positive = torch.sum(torch.relu(z), dims, keepdim=True, dtype=acc)
        normaliser = torch.linalg.vector_norm(z, 1, dims, keepdim=True, dtype=acc).add_(eps)
    else:  # count
        positive = torch.sum(z > 0, dims, keepdim=True, dtype=acc)
        group_size = z.numel() // max(positive.numel(), 1)
        normaliser = torch.full_like(positive, float(group_size))
    return positive / normaliser, normaliser


def scale_tanh(p: Tensor, alpha: Tensor, beta: Tensor, ndim: int, channel_dim: int | None) -> Tensor:
    """tanh(α·p + β) in p's dtype: per group, or per (group, channel) for (C,) α, β along `channel_dim`."""
    if channel_dim is not None:
        alpha, beta = channel_view(alpha, ndim, channel_dim), channel_view(beta, ndim, channel_dim)
    return torch.tanh(alpha.to(p.dtype) * p + beta.to(p.dtype))


def forward_eager(
    z: Tensor, alpha: Tensor, beta: Tensor, K: float, variant: str, dims: list[int], eps: float,
    channel_dim: int | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(ReLU(s·z), p, tanh(αp+β), normaliser); the last three per group (tanh per (group, channel) with
    `channel_dim`), keepdim, in the accumulation dtype."""
    acc = accumulation_dtype(z.dtype)
    p, normaliser = competition(z, variant, dims, eps, acc)
    tanh = scale_tanh(p, alpha, beta, z.dim(), channel_dim)
    out = torch.mul(z, K * tanh).relu_().to(z.dtype)
    return out, p, tanh, normaliser


def group_coefficient(
    G: Tensor, p: Tensor, tanh: Tensor, normaliser: Tensor, alpha: Tensor, K: float, variant: str
) -> tuple[Tensor, Tensor | None]:
    """du = G·K·(1−t²) per group, and c, the per-group factor of ∂p/∂z's elementwise term (None for count).

    energy: dL/dz += c·(max(z,0) − p·z), c = 2·du·α/(Σz²+eps);  l1: dL/dz += c·([z>0] − p·sign z),
    c = du·α/(Σ|z|+eps).
    """
    du = G * (K * (1 - tanh * tanh))
    if variant == "count":
        return du, None
    return du, du * alpha.to(du.dtype) * (2.0 if variant == "energy" else 1.0) / normaliser


def backward_eager(
    grad: Tensor, z: Tensor, p: Tensor, tanh: Tensor, normaliser: Tensor, alpha: Tensor, K: float,
    variant: str, dims: list[int], out: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """(dL/dz, (dL/dα, dL/dβ) as one 2-vector) from the input and per-group scalars (and forward's output
    `out`, if given, for the mask)."""
    acc = p.dtype
    s = K * tanh
    # g·m with m = [s·z > 0]: the side that won the competition, which ReLU(s·z) passes. (Products with a 0/1
    # mask and addcmul_ with per-group factors: torch.where with broadcast operands is far slower on CPU.)
    if out is not None and out.dtype == acc and grad.dtype == acc:
        # out = ReLU(s·z) computed in `acc`, so out > 0 exactly where s·z > 0: ReLU's own backward, one pass
        g_winner = torch.ops.aten.threshold_backward(grad, out, 0)
    else:
        g_winner = grad.to(acc) * torch.mul(z, s).gt_(0)
    G = torch.sum(g_winner * z, dims, keepdim=True, dtype=acc)
    du, c = group_coefficient(G, p, tanh, normaliser, alpha, K, variant)
    grad_z = g_winner.mul_(s)
    if variant == "energy":  # c·(max(z,0) − p z)
        grad_z.addcmul_(torch.relu(z), c).addcmul_(z, -c * p)
    elif variant == "l1":  # c·([z>0] − p sign z)
        grad_z.addcmul_(z > 0, c).addcmul_(torch.sign(z), -c * p)
    return grad_z.to(z.dtype), torch.stack(((du * p).sum(), du.sum()))


def _sum(x: Tensor, dims: list[int]) -> Tensor:
    """Σ over `dims`, keepdim; `x` itself for no dims (torch.sum over an empty dim list would sum everything)."""
    return torch.sum(x, dims, keepdim=True) if dims else x


def backward_eager_channel(
    grad: Tensor, z: Tensor, p: Tensor, tanh: Tensor, normaliser: Tensor, alpha: Tensor, K: float,
    variant: str, dims: list[int], channel_dim: int,
) -> tuple[Tensor, Tensor]:
    """`backward_eager` for (C,) α, β along `channel_dim`; `tanh` per (group, channel). Returns (dL/dz,
    (dL/dα, dL/dβ) as a (2, C) tensor).

    With t = tanh(α_c p_g + β_c): du_{g,c} = K(1 − t²_{g,c})·Σ_{k in group g, channel c} g_k m_k z_k;
    dL/dα_c = Σ_g du_{g,c} p_g, dL/dβ_c = Σ_g du_{g,c}; the p-term of dL/dz uses dL/dp_g = Σ_c du_{g,c} α_c
    (one term for the channel reduction, whose groups each hold one channel)."""
    acc = p.dtype
    s = K * tanh
    g_winner = grad.to(acc) * torch.mul(z, s).gt_(0)
    G = _sum(g_winner * z, [d for d in dims if d != channel_dim])  # per (group, channel): tanh's shape
    du = G * (K * (1 - tanh * tanh))
    across_groups = [d for d in range(z.dim()) if d != channel_dim]
    grad_alpha_beta = torch.stack((_sum(du * p, across_groups).reshape(-1), _sum(du, across_groups).reshape(-1)))
    grad_z = g_winner.mul_(s)
    if variant != "count":
        grad_p = du * channel_view(alpha, z.dim(), channel_dim).to(acc)
        if channel_dim in dims:  # a group spans the channels: dL/dp_g sums over them
            grad_p = grad_p.sum(channel_dim, keepdim=True)
        c = grad_p * (2.0 if variant == "energy" else 1.0) / normaliser
        if variant == "energy":  # c·(max(z,0) − p z)
            grad_z.addcmul_(torch.relu(z), c).addcmul_(z, -c * p)
        else:  # l1: c·([z>0] − p sign z)
            grad_z.addcmul_(z > 0, c).addcmul_(torch.sign(z), -c * p)
    return grad_z.to(z.dtype), grad_alpha_beta
