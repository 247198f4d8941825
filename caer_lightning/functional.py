"""Functional CAReLU: `carelu(z, alpha, beta, ...)` and the competition value `competition(z, ...)`."""

from __future__ import annotations

import torch
from torch import Tensor

from caer_lightning.ops import IMPLEMENTATIONS
from caer_lightning.ops.common import accumulation_dtype, check_options, group_dims
from caer_lightning.ops.reference import competition_reference

IMPLS = ("auto", *IMPLEMENTATIONS)


def _resolve_impl(impl: str) -> str:
    if impl not in IMPLS:
        raise ValueError(f"impl={impl!r} is not supported; accepted values: {', '.join(IMPLS)}")
    return "eager" if impl == "auto" else impl


def carelu_with_statistics(
    z: Tensor,
    alpha: Tensor,
    beta: Tensor,
    *,
    K: float = 2.0,
    variant: str = "energy",
    reduction: str = "sample",
    eps: float = 1e-6,
    impl: str = "auto",
) -> tuple[Tensor, Tensor, Tensor]:
    """Like `carelu`, but also returns the detached per-group p and s (float32/float64, size-1 dims kept)."""
    check_options(variant, reduction, K, eps)
    fn = IMPLEMENTATIONS[_resolve_impl(impl)]
    return fn(z, alpha, beta, float(K), variant, group_dims(z, reduction), float(eps))


def carelu(
    z: Tensor,
    alpha: Tensor,
    beta: Tensor,
    *,
    K: float = 2.0,
    variant: str = "energy",
    reduction: str = "sample",
    eps: float = 1e-6,
    impl: str = "auto",
) -> Tensor:
    """Competition-based Adaptive ReLU: ReLU(s·z), s = K·tanh(α·p + β), p the positives' share per group.

    `impl` picks the implementation: "auto" (the fastest for the tensor's device), "eager" (custom
    autograd.Function) or "reference" (autograd through plain ops, the test oracle).
    """
    out, _, _ = carelu_with_statistics(
        z, alpha, beta, K=K, variant=variant, reduction=reduction, eps=eps, impl=impl
    )
    return out


def competition(z: Tensor, *, variant: str = "energy", reduction: str = "sample", eps: float = 1e-6) -> Tensor:
    """p per group: shape (N,) for sample, (N, C) for channel, z.shape[:-1] for token."""
    check_options(variant, reduction, 1.0, eps)
    dims = group_dims(z, reduction)
    p = competition_reference(z.to(accumulation_dtype(z.dtype)), variant, dims, eps)
    return p.squeeze(dims) if dims else p


__all__ = ["carelu", "carelu_with_statistics", "competition", "IMPLS"]
