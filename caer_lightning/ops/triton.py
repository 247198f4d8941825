"""CAReLU forward and backward on Triton kernels: two launches forward, two and one small sum backward.

Used automatically for CUDA tensors of float32/float16/bfloat16 in contiguous or channels_last layouts
(`impl="auto"`); `impl="triton"` asks for it explicitly (CPU tensors work under TRITON_INTERPRET=1). Layers
with per-channel α, β (params="channel") run on the eager implementation (`unsupported_reason` says so).
"""

from __future__ import annotations

import importlib.util
import os

import torch
from caer_lightning.rank_zero import rank_zero_warn
from torch import Tensor

from caer_lightning.ops.eager import backward_eager, forward_eager


AVAILABLE = importlib.util.find_spec("triton") is not None
# Input signatures whose Triton kernels failed to compile or launch: they run eagerly from then on.
FAILED: set[tuple] = set()


PER_CHANNEL_REASON = (
    "per-channel alpha, beta (params='channel'): the Triton kernels take one alpha, beta per layer, so these "
    "inputs run on the eager implementation"
)


def unsupported_reason(z: Tensor, dims: list[int], per_channel: bool = False) -> str | None:
    """Why the Triton path cannot take `z` (without a copy, on this device) with one α, β per layer or, with
    `per_channel`, per channel (never: PER_CHANNEL_REASON), or None when it can."""
    if per_channel:
        return PER_CHANNEL_REASON
    if not AVAILABLE:
        return "triton is not installed"
    if z.device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        return "a CPU tensor runs Triton kernels only under TRITON_INTERPRET=1 (set before triton is imported)"
    if z.device.type not in ("cpu", "cuda"):
        return f"device {z.device.type} (supported: cuda, and cpu under TRITON_INTERPRET=1)"
    from caer_lightning.ops import triton_kernels

    if z.dtype not in triton_kernels.SUPPORTED_DTYPES:
        return f"dtype {z.dtype} (supported: float32, float16, bfloat16)"
    if z.is_cuda and (reason := capability_reason(z.dtype, torch.cuda.get_device_capability(z.device))):
        return reason
    if triton_kernels.group_layout(z, dims[0]) is None:
        return f"layout with strides {tuple(z.stride())} (supported: contiguous, channels_last)"
    return None


def capability_reason(dtype: torch.dtype, capability: tuple[int, int]) -> str | None:
    """Why a GPU of this compute capability cannot run the kernels for `dtype`, or None."""
    if capability < (7, 0):
        return f"compute capability {capability[0]}.{capability[1]} (Triton needs 7.0 or newer)"
    if dtype == torch.bfloat16 and capability < (8, 0):
        return f"bfloat16 on compute capability {capability[0]}.{capability[1]} (bfloat16 needs 8.0 or newer)"
    return None


def signature(z: Tensor, dims: list[int]) -> tuple:
    """What selects a kernel specialization: device, dtype, rank, layout, first reduced dim."""
    return (str(z.device), z.dtype, z.dim(), z.is_contiguous(), dims[0])


def _fall_back(z: Tensor, dims: list[int], error: Exception, stage: str) -> None:
    key = signature(z, dims)
    if key not in FAILED:
        FAILED.add(key)
        rank_zero_warn(
            f"CAReLU: the Triton kernel failed in {stage} for {key} ({type(error).__name__}: {error}); running the "
            "eager implementation for such inputs from now on (CAReLU(impl='eager') or CAReLUCallback(impl='eager') skips Triton)"
        )



def forward_triton(
    z: Tensor, alpha: Tensor, beta: Tensor, K: float, variant: str, dims: list[int], eps: float
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Same contract as `eager.forward_eager`: two kernel launches (eager ops if the kernels fail)."""
    from caer_lightning.ops import triton_kernels as kernels

    if signature(z, dims) in FAILED:
        return forward_eager(z, alpha, beta, K, variant, dims, eps)
    try:
        out, p, tanh, normaliser = kernels.forward(z, alpha, beta, K, variant, eps, kernels.group_layout(z, dims[0]))
    except Exception as error:  # noqa: BLE001 - a kernel failure must not end the user's run
        _fall_back(z, dims, error, "forward")
        return forward_eager(z, alpha, beta, K, variant, dims, eps)
    keepdim = [n if i < dims[0] else 1 for i, n in enumerate(z.shape)]
    return out, p.view(keepdim), tanh.view(keepdim), normaliser.view(keepdim)


def backward_triton(
    grad: Tensor, z: Tensor, p: Tensor, tanh: Tensor, normaliser: Tensor, alpha: Tensor, K: float,
    variant: str, dims: list[int],
) -> tuple[Tensor, Tensor]:
    """Same contract as `eager.backward_eager`: two kernel launches and one sum (eager ops if they fail)."""
    from caer_lightning.ops import triton_kernels as kernels

    if signature(z, dims) not in FAILED:
        try:
            if grad.stride() != z.stride():  # the kernels index grad with z's strides
                grad = torch.empty_like(z).copy_(grad)
            return kernels.backward(grad, z, p, tanh, normaliser, alpha, K, variant, kernels.group_layout(z, dims[0]))
        except Exception as error:  # noqa: BLE001 - a kernel failure must not end the user's run
            _fall_back(z, dims, error, "backward")
    return backward_eager(grad, z, p, tanh, normaliser, alpha, K, variant, dims)
