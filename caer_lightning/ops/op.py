"""CAReLU as a registered custom op (`torch.ops.caer_lightning.carelu`) with its own backward.

Registering it with torch.library lets torch.compile(fullgraph=True) trace models that contain CAReLU without
graph breaks, and lets one autograd formula serve every implementation (`impl`: "eager" or "triton").
Backward saves only the input and per-group scalars. A backward that must itself be differentiable
(`create_graph=True`: gradient penalties such as WGAN-GP or R1) runs through the plain-op reference instead.
"""

from typing import List

import torch
from torch import Tensor

from caer_lightning.ops.common import accumulation_dtype
from caer_lightning.ops.eager import backward_eager, forward_eager
from caer_lightning.ops.reference import carelu_reference
from caer_lightning.ops.triton import backward_triton, forward_triton

_FORWARD = {"eager": forward_eager, "triton": forward_triton}
_BACKWARD = {"eager": backward_eager, "triton": backward_triton}


@torch.library.custom_op("caer_lightning::carelu", mutates_args=())
def carelu_op(
    z: Tensor, alpha: Tensor, beta: Tensor, K: float, variant: str, dims: List[int], eps: float, impl: str  # noqa: UP006
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
    dims: List[int], impl: str,  # noqa: UP006 - torch 2.6's schema inference takes typing.List, not list
) -> tuple[Tensor, Tensor]:
    """(dL/dz, (dL/dα, dL/dβ) as one 2-vector in the accumulation dtype)."""
    return _BACKWARD[impl](grad, z, p, tanh, normaliser, alpha, K, variant, dims)


@carelu_backward_op.register_fake
def _carelu_backward_fake(grad, z, p, tanh, normaliser, alpha, K, variant, dims, impl):
    return torch.empty_like(z), p.new_empty(2)


def _setup_context(ctx, inputs, output):
    z, alpha, beta, K, variant, dims, eps, impl = inputs
    _, p, tanh, normaliser = output
    ctx.save_for_backward(z, p, tanh, normaliser, alpha, beta)
    ctx.config = (K, variant, dims, impl, eps)
    ctx.set_materialize_grads(False)  # p, tanh, normaliser get no gradient: autograd need not make zeros


def _backward(ctx, grad_out, _grad_p, _grad_tanh, _grad_normaliser):
    z, p, tanh, normaliser, alpha, beta = ctx.saved_tensors
    K, variant, dims, impl, eps = ctx.config
    if grad_out is None:
        return None, None, None, None, None, None, None, None
    if torch.is_grad_enabled():  # create_graph=True: the gradient itself must be differentiable
        grad_z, grad_alpha, grad_beta = _differentiable_backward(ctx, grad_out, z, alpha, beta)
        return grad_z, grad_alpha, grad_beta, None, None, None, None, None
    grad_z, grad_alpha_beta = carelu_backward_op(grad_out, z, p, tanh, normaliser, alpha, K, variant, dims, impl)
    # as α, β came: shape (1,) from CAReLU, 0-d or (1,) from users of `carelu`
    grad_alpha = grad_alpha_beta[0].to(alpha.dtype).reshape(alpha.shape)
    grad_beta = grad_alpha_beta[1].to(beta.dtype).reshape(beta.shape)
    return grad_z, grad_alpha, grad_beta, None, None, None, None, None


def _differentiable_backward(
    ctx, grad_out: Tensor, z: Tensor, alpha: Tensor, beta: Tensor
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """The gradients as a graph of plain ops (the reference forward, differentiated with create_graph=True), so
    that a second backward flows through them to z, alpha, beta and the incoming gradient."""
    K, variant, dims, _, eps = ctx.config
    needed = ctx.needs_input_grad[:3]
    inputs = [t if not need or t.requires_grad else t.detach().requires_grad_() for t, need in zip((z, alpha, beta),
                                                                                                      needed)]
    with torch.enable_grad():
        out, _, _ = carelu_reference(inputs[0], inputs[1], inputs[2], K, variant, tuple(dims), eps)
        wanted = [t for t, need in zip(inputs, needed) if need]
        grads = iter(torch.autograd.grad(out, wanted, grad_out, create_graph=True, allow_unused=True))
    return tuple(next(grads) if need else None for need in needed)


carelu_op.register_autograd(_backward, setup_context=_setup_context)
