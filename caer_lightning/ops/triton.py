"""CAReLU forward and backward on Triton kernels: 3 passes over the tensor forward, 5 backward.

Used automatically for CUDA tensors of float32/float16/bfloat16 in contiguous or channels_last layouts
(`impl="auto"`); `impl="triton"` asks for it explicitly (CPU tensors work under TRITON_INTERPRET=1).
"""

from __future__ import annotations

import importlib.util

import torch
from torch import Tensor

from caer_lightning.ops.eager import group_coefficient

AVAILABLE = importlib.util.find_spec("triton") is not None


def unsupported_reason(z: Tensor, dims: list[int]) -> str | None:
    """Why the Triton path cannot take `z` without a copy, or None when it can."""
    if not AVAILABLE:
        return "triton is not installed"
    from caer_lightning.ops import triton_kernels

    if z.dtype not in triton_kernels.SUPPORTED_DTYPES:
        return f"dtype {z.dtype} (supported: float32, float16, bfloat16)"
    if triton_kernels.group_layout(z, dims[0]) is None:
        return f"layout with strides {tuple(z.stride())} (supported: contiguous, channels_last)"
    return None



def forward_triton(
    z: Tensor, alpha: Tensor, beta: Tensor, K: float, variant: str, dims: list[int], eps: float
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Same contract as `eager.forward_eager`."""
    from caer_lightning.ops import triton_kernels as kernels

    layout = kernels.group_layout(z, dims[0])
    positive, total = kernels.reduce_forward(z, layout, variant)  # (A, B) float32
    if variant == "count":
        normaliser = torch.full_like(positive, float(layout.R))
    else:
        normaliser = total.add_(eps)
    p = positive / normaliser
    tanh = torch.tanh(alpha.float() * p + beta.float())
    out = kernels.apply_forward(z, K * tanh, layout)
    keepdim = tuple(n if i < dims[0] else 1 for i, n in enumerate(z.shape))
    return out, p.reshape(keepdim), tanh.reshape(keepdim), normaliser.reshape(keepdim)


def backward_triton(
    grad: Tensor, z: Tensor, p: Tensor, tanh: Tensor, normaliser: Tensor, alpha: Tensor, K: float,
    variant: str, dims: list[int],
) -> tuple[Tensor, Tensor, Tensor]:
    """Same contract as `eager.backward_eager`."""
    from caer_lightning.ops import triton_kernels as kernels

    layout = kernels.group_layout(z, dims[0])
    if grad.stride() != z.stride():  # the kernels index grad with z's strides
        grad = torch.empty_like(z).copy_(grad)
    shape = (layout.A, layout.B)
    p, tanh, normaliser = p.reshape(shape), tanh.reshape(shape), normaliser.reshape(shape)
    s = K * tanh
    G = kernels.reduce_backward(grad, z, s, layout)
    du, c = group_coefficient(G, p, tanh, normaliser, alpha, K, variant)
    grad_z = kernels.apply_backward(grad, z, s, c, p, layout, variant)
    return grad_z, (du * p).sum(), du.sum()
