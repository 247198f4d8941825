"""CAReLU as a registered custom op (`torch.ops.caer_lightning.carelu`) with its own backward.

Registering it with torch.library lets torch.compile(fullgraph=True) trace models that contain CAReLU without
graph breaks, and lets one autograd formula serve every implementation (`impl`: "eager" or "triton").
Backward keeps the output (as ReLU does: the next layer keeps it too), per-group scalars, and the input only
where it cannot be rebuilt from what the BatchNorm, residual sum or activation before it keeps (`recompute.py`).
A backward that must itself be differentiable (`create_graph=True`: gradient penalties such as WGAN-GP or R1)
runs through the plain-op reference instead.
Per-channel α, β (`channel_dim` given: params="channel") run on the eager ops whatever `impl` says: the Triton
kernels take one α, β per layer (`functional.resolve_impl` never picks them for such inputs). Their backward
recomputes tanh(α_c·p + β_c) from p rather than keeping it: for the token reduction it has the input's size.
"""

from typing import List, Optional

import torch
from torch import Tensor

from caer_lightning.ops.common import accumulation_dtype
from caer_lightning.ops.eager import backward_eager, backward_eager_channel, forward_eager, scale_tanh
from caer_lightning.ops.recompute import input_recipe, rebuild, verify_once
from caer_lightning.ops.reference import carelu_reference
from caer_lightning.ops.triton import backward_triton, forward_triton

_FORWARD = {"eager": forward_eager, "triton": forward_triton}
_BACKWARD = {"eager": backward_eager, "triton": backward_triton}


@torch.library.custom_op("caer_lightning::carelu", mutates_args=())
def carelu_op(
    z: Tensor, alpha: Tensor, beta: Tensor, K: float, variant: str, dims: List[int], eps: float, impl: str,  # noqa: UP006
    channel_dim: Optional[int] = None,  # noqa: UP007 - torch 2.6's schema inference takes typing.Optional
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(ReLU(s·z), p, tanh(αp+β), normaliser of p); the last three per group, keepdim, float32/float64; tanh
    per (group, channel) when α, β have one value per channel of `channel_dim`."""
    if channel_dim is not None:
        return forward_eager(z, alpha, beta, K, variant, dims, eps, channel_dim)
    return _FORWARD[impl](z, alpha, beta, K, variant, dims, eps)


@carelu_op.register_fake
def _carelu_fake(z, alpha, beta, K, variant, dims, eps, impl, channel_dim=None):
    group_shape = [n if i < dims[0] else 1 for i, n in enumerate(z.shape)]
    group = z.new_empty(group_shape, dtype=accumulation_dtype(z.dtype))
    tanh_shape = [n if i < dims[0] or i == channel_dim else 1 for i, n in enumerate(z.shape)]
    return torch.empty_like(z), group, group.new_empty(tanh_shape), torch.empty_like(group)


@torch.library.custom_op("caer_lightning::carelu_backward", mutates_args=())
def carelu_backward_op(
    grad: Tensor, z: Tensor, p: Tensor, tanh: Tensor, normaliser: Tensor, alpha: Tensor, K: float, variant: str,
    dims: List[int], impl: str,  # noqa: UP006 - torch 2.6's schema inference takes typing.List, not list
    channel_dim: Optional[int] = None,  # noqa: UP007
    out: Optional[Tensor] = None,  # noqa: UP007
) -> tuple[Tensor, Tensor]:
    """(dL/dz, (dL/dα, dL/dβ) as one 2-vector in the accumulation dtype, or a (2, C) tensor for per-channel α, β).
    `out`, forward's output, lets the eager path take the winners' mask from it (one pass instead of three)."""
    if channel_dim is not None:
        return backward_eager_channel(grad, z, p, tanh, normaliser, alpha, K, variant, dims, channel_dim)
    if impl == "eager":
        return backward_eager(grad, z, p, tanh, normaliser, alpha, K, variant, dims, out)
    return _BACKWARD[impl](grad, z, p, tanh, normaliser, alpha, K, variant, dims)


@carelu_backward_op.register_fake
def _carelu_backward_fake(grad, z, p, tanh, normaliser, alpha, K, variant, dims, impl, channel_dim=None, out=None):
    return torch.empty_like(z), p.new_empty(2 if channel_dim is None else (2, alpha.shape[0]))


def _setup_context(ctx, inputs, output):
    z, alpha, beta, K, variant, dims, eps, impl, channel_dim = inputs
    out, p, tanh, normaliser = output
    # z only where backward cannot rebuild it from what the layers before keep (recompute.py); the output as ReLU
    # does, which the next layer keeps too, and which a later CAReLU's rebuild reads through `caer_keeps_output`.
    ctx.recipe = input_recipe(z)
    ctx.input_meta = (z.shape, z.dtype)
    ctx.caer_keeps_output = True
    ctx.save_for_backward(
        out, z if ctx.recipe is None else None, p, tanh if channel_dim is None else None, normaliser, alpha, beta
    )
    ctx.config = (K, variant, dims, impl, eps, channel_dim)
    ctx.set_materialize_grads(False)  # p, tanh, normaliser get no gradient: autograd need not make zeros


def _backward(ctx, grad_out, _grad_p, _grad_tanh, _grad_normaliser):
    out, z, p, tanh, normaliser, alpha, beta = ctx.saved_tensors
    K, variant, dims, impl, eps, channel_dim = ctx.config
    none = (None,) * 6  # K, variant, dims, eps, impl, channel_dim
    if grad_out is None:
        return None, None, None, *none
    differentiable = torch.is_grad_enabled()  # create_graph=True: the gradient itself must be differentiable
    if ctx.recipe is not None:
        z = rebuild(ctx.recipe, *ctx.input_meta, differentiable)
        verify_once(ctx.recipe, z.detach(), variant, dims, eps, p, normaliser)
    if differentiable:
        grad_z, grad_alpha, grad_beta = _differentiable_backward(ctx, grad_out, z, alpha, beta)
        return grad_z, grad_alpha, grad_beta, *none
    if channel_dim is not None:  # not kept by forward (see the module docstring): the same ops again
        tanh = scale_tanh(p, alpha, beta, z.dim(), channel_dim)
    grad_z, grad_alpha_beta = carelu_backward_op(
        grad_out, z, p, tanh, normaliser, alpha, K, variant, dims, impl, channel_dim, out
    )
    # as α, β came: shape (1,) from CAReLU, 0-d or (1,) from users of `carelu`, (C,) per channel
    grad_alpha = grad_alpha_beta[0].to(alpha.dtype).reshape(alpha.shape)
    grad_beta = grad_alpha_beta[1].to(beta.dtype).reshape(beta.shape)
    return grad_z, grad_alpha, grad_beta, *none


def _differentiable_backward(
    ctx, grad_out: Tensor, z: Tensor, alpha: Tensor, beta: Tensor
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """The gradients as a graph of plain ops (the reference forward, differentiated with create_graph=True), so
    that a second backward flows through them to z, alpha, beta and the incoming gradient."""
    K, variant, dims, _, eps, channel_dim = ctx.config
    needed = ctx.needs_input_grad[:3]
    inputs = [t if not need or t.requires_grad else t.detach().requires_grad_() for t, need in zip((z, alpha, beta),
                                                                                                      needed)]
    with torch.enable_grad():
        out, _, _ = carelu_reference(inputs[0], inputs[1], inputs[2], K, variant, tuple(dims), eps, channel_dim)
        wanted = [t for t, need in zip(inputs, needed) if need]
        grads = iter(torch.autograd.grad(out, wanted, grad_out, create_graph=True, allow_unused=True))
    return tuple(next(grads) if need else None for need in needed)


carelu_op.register_autograd(_backward, setup_context=_setup_context)
