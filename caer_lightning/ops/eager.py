"""CAReLU as a custom autograd.Function built from eager ops.

Forward: one reduction pass for p, one pass for ReLU(s·z). Backward saves only the input z and per-group
scalars (p, tanh(αp+β), the normaliser of p), instead of the several full-size intermediates autograd keeps
for the reference expression. Sums accumulate in float32 (float64 for float64 inputs).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from caer_lightning.ops.common import accumulation_dtype


def _competition(z: Tensor, variant: str, dims: tuple[int, ...], eps: float, acc: torch.dtype) -> tuple[Tensor, Tensor]:
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


class CAReLUFunction(torch.autograd.Function):
    """Returns (ReLU(s·z), p, s); p and s are non-differentiable per-group statistics."""

    @staticmethod
    def forward(
        ctx: Any, z: Tensor, alpha: Tensor, beta: Tensor, K: float, variant: str, dims: tuple[int, ...], eps: float
    ) -> tuple[Tensor, Tensor, Tensor]:
        acc = accumulation_dtype(z.dtype)
        with torch.autocast(z.device.type, enabled=False):
            p, normaliser = _competition(z, variant, dims, eps, acc)
            tanh = torch.tanh(alpha.detach().to(acc) * p + beta.detach().to(acc))
            s = K * tanh
            out = torch.mul(z, s).relu_().to(z.dtype)
        ctx.save_for_backward(z, p, tanh, normaliser, alpha.detach())
        ctx.K, ctx.variant, ctx.dims = K, variant, dims
        ctx.alpha_dtype, ctx.beta_dtype = alpha.dtype, beta.dtype
        ctx.mark_non_differentiable(p, s)
        ctx.set_materialize_grads(False)
        return out, p, s

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor | None, _grad_p: Any, _grad_s: Any) -> tuple[Tensor | None, ...]:
        if grad_out is None:
            return (None,) * 7
        z, p, tanh, normaliser, alpha = ctx.saved_tensors
        K, variant, dims = ctx.K, ctx.variant, ctx.dims
        acc = p.dtype
        s = K * tanh
        g = grad_out.to(acc)
        # g·m with m = [s·z > 0]: the side that won the competition, which ReLU(s·z) passes.
        g_winner = torch.where(torch.mul(z, s) > 0, g, 0.0)
        du = torch.sum(g_winner * z, dims, keepdim=True, dtype=acc) * (K * (1 - tanh * tanh))

        grad_z = None
        if ctx.needs_input_grad[0]:
            grad_z = g_winner.mul_(s)
            if variant == "energy":  # ∂p/∂z = 2 (max(z,0) − p z) / (Σz² + eps)
                grad_z += (2 * du * alpha.to(acc) / normaliser) * (torch.relu(z) - p * z)
            elif variant == "l1":  # ∂p/∂z = ([z>0] − p sign z) / (Σ|z| + eps)
                grad_z += (du * alpha.to(acc) / normaliser) * ((z > 0).to(acc) - p * torch.sign(z))
            grad_z = grad_z.to(z.dtype)
        grad_alpha = (du * p).sum().to(ctx.alpha_dtype) if ctx.needs_input_grad[1] else None
        grad_beta = du.sum().to(ctx.beta_dtype) if ctx.needs_input_grad[2] else None
        return grad_z, grad_alpha, grad_beta, None, None, None, None


def carelu_eager(
    z: Tensor, alpha: Tensor, beta: Tensor, K: float, variant: str, dims: tuple[int, ...], eps: float
) -> tuple[Tensor, Tensor, Tensor]:
    """(output, p, s) through `CAReLUFunction`; p and s kept as size-1 dims."""
    return CAReLUFunction.apply(z, alpha, beta, K, variant, dims, eps)
