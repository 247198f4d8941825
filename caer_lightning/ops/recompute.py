"""Recomputing CAReLU's input z in backward from what the layers before it keep anyway.

ReLU keeps only its output for backward, which the next layer keeps too; CAReLU's gradient needs z itself
(the losing side of the energy variant: dL/dz_k has a term in z_k where the output is 0). Keeping z costs one
tensor per layer that nobody else keeps. But z is usually the output of a BatchNorm, which keeps its input u,
batch mean and inverse std (z = (u − mean)·invstd·γ + β, one elementwise pass), or a residual sum of such an
output and a tensor some node keeps (the previous CAReLU's or ReLU's output). A `Recipe` records, in forward,
which autograd nodes made z; backward asks them for their saved values and rebuilds z (InPlace-ABN's idea,
without fusing modules: the model's forward code is untouched).

When z comes from anything else (a convolution, a linear layer, GELU, a frozen BatchNorm whose bias has no
gradient), `input_recipe` returns None and the op keeps z as before. The first backward of each kind of recipe
checks that the rebuilt z has the forward's per-group statistics, and raises if not, before any optimizer step.
Under saved-tensor hooks (torch.utils.checkpoint, save_on_cpu), under torch.compile and on torch before 2.8 z is
kept too. `CAER_RECOMPUTE=0` in the environment keeps z for every layer.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from caer_lightning import _compat
from caer_lightning.ops.eager import competition

ENVIRONMENT_VARIABLE = "CAER_RECOMPUTE"
# Recipe signatures whose rebuilt z matched the forward's statistics once in this process.
VERIFIED: set[tuple] = set()
_MAX_DEPTH = 4  # sums of sums of ...: a residual block's sum has depth 2


def enabled() -> bool:
    """Whether the op rebuilds z in backward where it can (CAER_RECOMPUTE unset or not "0")."""
    return os.environ.get(ENVIRONMENT_VARIABLE, "1") != "0"


@dataclass
class BatchNormOutput:
    """z = BatchNorm(u), rebuilt from the node's saved input, statistics and weight, and the bias it reads."""

    node: Any
    bias: Tensor
    bias_version: int

    def signature(self) -> tuple:
        return ("batch_norm", self.node.name())

    def build(self, differentiable: bool) -> Tensor:
        if _compat.version(self.bias) != self.bias_version:
            raise RuntimeError(
                "CAReLU: the bias of the BatchNorm before it was modified in place between forward and backward, "
                f"so its input cannot be rebuilt; set {ENVIRONMENT_VARIABLE}=0 to keep the input instead"
            )
        saved = _compat.batch_norm_saved(self.node)
        batch_statistics = saved.mean.numel() > 0
        running_mean, running_var = (None, None) if batch_statistics else _compat.batch_norm_running(self.node)
        if differentiable:  # the same function of u, γ, β, so that a second backward flows through it
            return F.batch_norm(saved.input, running_mean, running_var, saved.weight, self.bias, batch_statistics,
                                0.0, saved.eps)
        if batch_statistics:
            mean, invstd = saved.mean, saved.invstd
        else:
            mean, invstd = running_mean, torch.rsqrt(running_var.float() + saved.eps)
        # z = u·scale + shift per channel, scale = invstd·γ, shift = β − mean·scale (as the kernels compute it)
        scale = invstd if saved.weight is None else invstd * saved.weight
        shift = torch.addcmul(self.bias, mean, scale, value=-1)
        shape = [1, -1] + [1] * (saved.input.dim() - 2)
        z = torch.addcmul(shift.view(shape), saved.input, scale.view(shape))
        return z if z.dtype == saved.input.dtype else z.to(saved.input.dtype)


@dataclass
class SavedOutput:
    """z is an output some node keeps anyway: a CAReLU's (the op keeps its output) or a ReLU's."""

    node: Any

    def signature(self) -> tuple:
        return ("saved_output", self.node.name())

    def build(self, differentiable: bool) -> Tensor:
        if getattr(self.node, "caer_keeps_output", False):
            return self.node.saved_tensors[0]
        return _compat.relu_result(self.node)


@dataclass
class Sum:
    """z = a + b (a residual connection), each addend rebuilt."""

    first: Recipe
    second: Recipe

    def signature(self) -> tuple:
        return ("sum", self.first.signature(), self.second.signature())

    def build(self, differentiable: bool) -> Tensor:
        first, second = self.first.build(differentiable), self.second.build(differentiable)
        # in place where the first addend is a fresh tensor of the sum's dtype and shape (the common residual case)
        if not differentiable and isinstance(self.first, BatchNormOutput) and torch.result_type(first, second) == \
                first.dtype and first.shape == torch.broadcast_shapes(first.shape, second.shape):
            return first.add_(second)
        return first + second


Recipe = Union[BatchNormOutput, SavedOutput, Sum]


def input_recipe(z: Tensor) -> Recipe | None:
    """How backward can rebuild `z` from values the graph keeps anyway, or None (then the op keeps z)."""
    if not enabled() or torch.compiler.is_compiling() or torch.jit.is_tracing():
        return None
    # Under saved-tensor hooks (checkpoint, offloading) the values are theirs to unpack, once: keep z. Before
    # torch 2.8 nobody can tell whether any are in effect: keep z there too.
    if _compat.saved_tensor_hooks_active() is not False:
        return None
    recipe = _recipe(z.grad_fn, 0)
    # z modified in place without autograd recording it (under no_grad) would not be what the recipe rebuilds:
    # a fresh output has version 0; one in-place sum or ReLU on it, recorded as the node itself, makes it 1.
    if recipe is None or _compat.version(z) > (0 if isinstance(recipe, BatchNormOutput) else 1):
        return None
    return recipe


def _recipe(node: Any, depth: int) -> Recipe | None:
    if node is None or depth > _MAX_DEPTH:
        return None
    if getattr(node, "caer_keeps_output", False):
        return SavedOutput(node)
    name = node.name()
    if name == "ReluBackward0" and _compat.node_has_saved(node):
        return SavedOutput(node)
    if name == "AddBackward0" and _compat.node_has_saved(node) and _compat.add_alpha(node) == 1:
        (first, _), (second, _) = node.next_functions
        first, second = _recipe(first, depth + 1), _recipe(second, depth + 1)
        return Sum(first, second) if first is not None and second is not None else None
    if name in _compat.BATCH_NORM_NODES and _compat.node_has_saved(node):
        bias = _compat.leaf_variable(node.next_functions[2][0])  # a bias without gradient is out of reach
        return BatchNormOutput(node, bias, _compat.version(bias)) if bias is not None else None
    return None


def rebuild(recipe: Recipe, shape: torch.Size, dtype: torch.dtype, differentiable: bool) -> Tensor:
    """z rebuilt by `recipe`, checked to have the forward's shape and dtype."""
    z = recipe.build(differentiable)
    if z.shape != shape or z.dtype != dtype:
        raise RuntimeError(
            f"CAReLU rebuilt its input as {tuple(z.shape)} {z.dtype} from {recipe.signature()}, but forward saw "
            f"{tuple(shape)} {dtype}; set {ENVIRONMENT_VARIABLE}=0 to keep the input instead"
        )
    return z


def verify_once(
    recipe: Recipe, z: Tensor, variant: str, dims: list[int], eps: float, p: Tensor, normaliser: Tensor
) -> None:
    """On the first backward of each kind of recipe (by signature, device and dtype), raise if the rebuilt z's
    p and normaliser per group differ from those forward computed (before any optimizer step can use them)."""
    key = (recipe.signature(), z.device.type, z.dtype)
    if key in VERIFIED:
        return
    rebuilt = torch.cat([t.flatten() for t in competition(z, variant, dims, eps, p.dtype)])
    forward = torch.cat((p.flatten(), normaliser.flatten()))
    rtol = 1e-4 if z.dtype in (torch.float32, torch.float64) else 1e-2
    if not torch.allclose(rebuilt, forward, rtol=rtol, atol=1e-6):
        worst = (rebuilt - forward).abs().max().item()
        raise RuntimeError(
            f"CAReLU rebuilt its input in backward from {recipe.signature()} on {z.device.type} {z.dtype}, but its "
            f"per-group statistics differ from forward's (largest difference {worst:.3g}): this torch version "
            f"keeps other values in those nodes than caer_lightning reads. Set {ENVIRONMENT_VARIABLE}=0 to keep the "
            "input for backward, and please report it with your torch version"
        )
    VERIFIED.add(key)
