"""CAReLU as a registered custom op (`torch.ops.caer_lightning.carelu`) with its own backward.

Registering it with torch.library lets torch.compile(fullgraph=True) trace models that contain CAReLU without
graph breaks, and lets one autograd formula serve every implementation (`impl`: "eager" or "triton").
Backward saves only the input and per-group scalars.
"""

import torch
from torch import Tensor

from caer_lightning.ops.common import accumulation_dtype
from caer_lightning.ops.eager import backward_eager, forward_eager
from caer_lightning.ops.triton import backward_triton, forward_triton

_FORWARD = {"eager": forward_eager, "triton": forward_triton}
_BACKWARD = {"eager": backward_eager, "triton": backward_triton}


@torch.library.custom_op("caer_lightning::carelu", mutates_args=())
def carelu_op(
    z: Tensor, alpha: Tensor, beta: Tensor, K: float, variant: str, dims: list[int], eps: float, impl: str
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(ReLU(s·z), p, tanh(αp+β), normaliser of p); the last three per group, keepdim, float32/float64."""
    return _FORWARD[impl](z, alpha, beta, K, variant, dims, eps)


@carelu_op.register_fake
def _carelu_fake(z, alpha, beta, K, variant, dims, eps, impl):
    group = z.new_empty([n if i < dims[0] else 1 for i, n in enumerate(z.shape)], dtype=accumulation_dtype(z.dtype))
    return torch.empty_like(z), group, torch.empty_like(group), torch.empty_like(group)


@torch.library.custom_op("caer_lightning::carelu_backward", mutates_args=())
def carelu_backward_op(
    grad: Tensor, z: Tensor, p: Tensor, tanh: Tensor, normaliser: Tensor, alpha: Tensor, K: float, variant: str,
    dims: list[int], impl: str,
) -> tuple[Tensor, Tensor]:
    """(dL/dz, (dL/dα, dL/dβ) as one 2-vector in the accumulation dtype)."""
    return _BACKWARD[impl](grad, z, p, tanh, normaliser, alpha, K, variant, dims)


@carelu_backward_op.register_fake
def _carelu_backward_fake(grad, z, p, tanh, normaliser, alpha, K, variant, dims, impl):
    return torch.empty_like(z), p.new_empty(2)


def _setup_context(ctx, inputs, output):
    z, alpha, beta, K, variant, dims, eps, impl = inputs
    _, p, tanh, normaliser = output
    ctx.save_for_backward(z, p, tanh, normaliser, alpha)
    ctx.config = (K, variant, dims, impl)
    ctx.set_materialize_grads(False)  # p, tanh, normaliser get no gradient: autograd need not make zeros


def _backward(ctx, grad_out, _grad_p, _grad_tanh, _grad_normaliser):
    z, p, tanh, normaliser, alpha = ctx.saved_tensors
    K, variant, dims, impl = ctx.config
    if grad_out is None:
        return None, None, None, None, None, None, None, None
    grad_z, grad_alpha_beta = carelu_backward_op(grad_out, z, p, tanh, normaliser, alpha, K, variant, dims, impl)
    grad_alpha, grad_beta = grad_alpha_beta.to(alpha.dtype)
    return grad_z, grad_alpha, grad_beta, None, None, None, None, None


carelu_op.register_autograd(_backward, setup_context=_setup_context)
