"""Functional CAReLU: `carelu(z, alpha, beta, ...)` and the competition value `competition(z, ...)`."""

from __future__ import annotations

import torch
from torch import Tensor

from caer_lightning.ops.common import (
    accumulation_dtype, channel_dim, check_finite_number, check_options, check_params, group_dims,
)
from caer_lightning.ops.op import carelu_op
from caer_lightning.ops.reference import carelu_reference, competition_reference
from caer_lightning.ops.triton import unsupported_reason

IMPLS = ("auto", "eager", "triton", "reference")


def resolve_impl(impl: str, z: Tensor, dims: tuple[int, ...], per_channel: bool = False) -> str:
    """The implementation that runs: "auto" takes Triton for CUDA tensors it supports (one α, β per layer),
    eager otherwise."""
    if impl not in IMPLS:
        raise ValueError(f"impl={impl!r} is not supported; accepted values: {', '.join(IMPLS)}")
    if impl == "auto":
        return "triton" if z.is_cuda and unsupported_reason(z, list(dims), per_channel) is None else "eager"
    if impl == "triton" and (reason := unsupported_reason(z, list(dims), per_channel)) is not None:
        raise ValueError(f"impl='triton' cannot take this input: {reason}; use impl='auto' or impl='eager'")
    return impl


def layer_parameter(name: str, value: Tensor | float, z: Tensor) -> Tensor:
    """α or β as the op takes it: a tensor of one value, shape (1,) (a CAReLU layer's) or () (a user's); a Python
    number becomes a 0-d tensor on z's device. Raises ValueError naming `name` for any other shape."""
    if not isinstance(value, Tensor):
        check_finite_number(name, value)
        return torch.tensor(float(value), dtype=accumulation_dtype(z.dtype), device=z.device)
    # (not while torch.jit.trace records sizes: the check would be recorded too, with a warning)
    if not torch.jit.is_tracing() and tuple(value.shape) not in ((), (1,)):
        raise ValueError(
            f"{name} of shape {tuple(value.shape)} is not supported; accepted shapes: () or (1,) (one value per layer)"
        )
    return value


def channel_parameter(name: str, value: Tensor | float, z: Tensor, reduction: str) -> Tensor:
    """α or β of params="channel": a tensor of shape (C,), C the number of channels of `z` (dim 1 for the sample
    and channel reductions, the last dim for token). Raises ValueError naming `name`, both counts otherwise."""
    dim = channel_dim(z, reduction)
    if not isinstance(value, Tensor) or (not torch.jit.is_tracing() and tuple(value.shape) != (z.shape[dim],)):
        given = f" of shape {tuple(value.shape)}" if isinstance(value, Tensor) else f"={value!r}"
        raise ValueError(
            f"{name}{given} is not supported with params='channel': an input of shape {tuple(z.shape)} has "
            f"{z.shape[dim]} channels (dim {dim} for reduction={reduction!r}); accepted: a tensor of shape "
            f"({z.shape[dim]},), one value per channel"
        )
    return value


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
    params: str = "layer",
) -> tuple[Tensor, Tensor, Tensor]:
    """Like `carelu`, but also returns the detached p per group and s per group (per (group, channel) with
    params="channel"), float32/float64, size-1 dims kept."""
    out, p, tanh = carelu_parts(
        z, alpha, beta, K=K, variant=variant, reduction=reduction, eps=eps, impl=impl, params=params
    )
    return out, p, K * tanh


def carelu_parts(
    z: Tensor, alpha: Tensor, beta: Tensor, *, K: float, variant: str, reduction: str, eps: float, impl: str,
    params: str = "layer",
) -> tuple[Tensor, Tensor, Tensor]:
    """(CAReLU(z), p, tanh(α·p + β)), the last two detached, p per group and tanh per group (per (group,
    channel) with params="channel"): what the op computes anyway, so that a forward whose statistics nobody
    reads costs no extra operation."""
    check_options(variant, reduction, K, eps)
    check_params(params)
    dims = group_dims(z, reduction)
    if params == "layer":
        alpha, beta = layer_parameter("alpha", alpha, z), layer_parameter("beta", beta, z)
        cdim = None
    else:
        alpha, beta = channel_parameter("alpha", alpha, z, reduction), channel_parameter("beta", beta, z, reduction)
        cdim = channel_dim(z, reduction)
    impl = resolve_impl(impl, z, dims, per_channel=cdim is not None)
    if impl == "reference":
        out, p, s = carelu_reference(z, alpha, beta, float(K), variant, dims, float(eps), cdim)
        return out, p, s / K
    if cdim is None:  # the op as it always ran: one α, β per layer
        out, p, tanh, _ = carelu_op(z, alpha, beta, float(K), variant, list(dims), float(eps), impl)
    else:
        out, p, tanh, _ = carelu_op(z, alpha, beta, float(K), variant, list(dims), float(eps), impl, cdim)
    return out, p.detach(), tanh.detach()


def carelu(
    z: Tensor,
    alpha: Tensor | float,
    beta: Tensor | float,
    *,
    K: float = 2.0,
    variant: str = "energy",
    reduction: str = "sample",
    eps: float = 1e-6,
    impl: str = "auto",
    params: str = "layer",
) -> Tensor:
    """Competition-based Adaptive ReLU: ReLU(s·z), s = K·tanh(α·p + β), p the positives' share per group.

    `params="layer"` (the paper): `alpha`, `beta` hold one value each, as tensors of shape (1,) (a CAReLU
    layer's parameters) or () (their gradients come back in the same shape), or Python numbers.
    `params="channel"`: tensors of shape (C,), one value per channel: dim 1 of (N, C, ...) inputs for the
    sample and channel reductions, the last dim of (..., C) inputs for token; s = K·tanh(α_c·p + β_c) per
    (group, channel), p per group as above. These run on the eager implementation (not Triton).

    `impl` picks the implementation: "auto" (Triton kernels for CUDA tensors of float32/float16/bfloat16 in
    contiguous or channels_last layout, eager ops otherwise), "eager", "triton" (CPU tensors only under
    TRITON_INTERPRET=1), or "reference" (autograd through plain ops, the test oracle).
    """
    return carelu_parts(
        z, alpha, beta, K=K, variant=variant, reduction=reduction, eps=eps, impl=impl, params=params
    )[0]


def competition(z: Tensor, *, variant: str = "energy", reduction: str = "sample", eps: float = 1e-6) -> Tensor:
    """p per group: shape (N,) for sample, (N, C) for channel, z.shape[:-1] for token."""
    check_options(variant, reduction, 1.0, eps)
    dims = group_dims(z, reduction)
    p = competition_reference(z.to(accumulation_dtype(z.dtype)), variant, dims, eps)
    return p.squeeze(dims) if dims else p


__all__ = ["carelu", "carelu_with_statistics", "competition", "IMPLS"]
