"""Triton kernels against the reference, on CPU tensors under TRITON_INTERPRET=1.

Not collected by itself: tests/test_triton.py runs this file in a subprocess with the interpreter switched on
(it must be set before triton is first imported).
"""

from __future__ import annotations

import itertools
import os

import pytest
import torch

from caer_lightning.functional import carelu_with_statistics
from caer_lightning.ops import REDUCTIONS, VARIANTS
from caer_lightning.ops.triton_kernels import group_layout

assert os.environ.get("TRITON_INTERPRET") == "1", "run through tests/test_triton.py"

SHAPES = {"sample": (3, 4, 16, 20), "channel": (2, 6, 5, 7), "token": (3, 5, 12)}
LAYOUTS = {"sample": ("contiguous", "channels_last"), "channel": ("contiguous", "channels_last"), "token": ("contiguous",)}
CASES = [(v, r, d, lay) for v, r, d in itertools.product(VARIANTS, REDUCTIONS, ("float32", "float16", "bfloat16"))
         for lay in LAYOUTS[r]]


def _input(reduction: str, dtype: torch.dtype, layout: str) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    shape = SHAPES[reduction]
    group_shape = {"sample": shape[:1] + (1,) * (len(shape) - 1), "channel": shape[:2] + (1, 1), "token": shape[:-1] + (1,)}
    z = torch.randn(shape, generator=generator) + torch.linspace(-2, 2, torch.Size(group_shape[reduction]).numel()).view(group_shape[reduction])
    z = z.to(dtype)
    return z.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else z


@pytest.mark.parametrize("variant,reduction,dtype,layout", CASES)
def test_triton_matches_reference(variant, reduction, dtype, layout):
    dtype = getattr(torch, dtype)
    z = _input(reduction, dtype, layout)
    dims = {"sample": 1, "channel": 2, "token": z.dim() - 1}[reduction]
    assert group_layout(z, dims) is not None, "this layout must run without a copy"
    results = {}
    for impl in ("triton", "reference"):
        zi = z.clone().requires_grad_()
        alpha = torch.tensor(-1.5, requires_grad=True)
        beta = torch.tensor(0.4, requires_grad=True)
        out, p, s = carelu_with_statistics(zi, alpha, beta, variant=variant, reduction=reduction, impl=impl)
        weights = torch.linspace(-1, 1, out.numel()).view(out.shape)
        (out.float() * weights).sum().backward()
        results[impl] = dict(out=out, p=p, s=s, dz=zi.grad, dalpha=alpha.grad, dbeta=beta.grad)
    fast, ref = results["triton"], results["reference"]
    assert fast["out"].dtype == dtype and fast["out"].stride() == z.stride(), "output keeps dtype and layout"
    assert fast["dz"].stride() == z.stride()
    assert (ref["s"] < 0).any() and (ref["s"] > 0).any()
    for name in ("p", "s", "dalpha", "dbeta"):  # float32 quantities: float32 tolerance
        torch.testing.assert_close(fast[name], ref[name], msg=name)
    for name in ("out", "dz"):  # in the input's dtype: that dtype's tolerance
        torch.testing.assert_close(fast[name], ref[name], msg=name)


def test_split_reduction_over_many_blocks():
    """R spans several blocks and splits: partial sums must add up."""
    z = torch.randn(2, 16, 32, 32)
    alpha, beta = torch.tensor(0.7), torch.tensor(0.2)
    fast = carelu_with_statistics(z, alpha, beta, impl="triton")
    ref = carelu_with_statistics(z, alpha, beta, impl="reference")
    for a, b in zip(fast, ref):
        torch.testing.assert_close(a, b)


def test_gradient_with_another_layout_than_the_input():
    z = _input("channel", torch.float32, "channels_last").requires_grad_()
    alpha, beta = torch.tensor(0.5, requires_grad=True), torch.tensor(0.3, requires_grad=True)
    grad = torch.randn(z.shape)  # contiguous, while z is channels_last
    dz_fast = torch.autograd.grad(carelu_with_statistics(z, alpha, beta, reduction="channel", impl="triton")[0], z, grad)
    dz_ref = torch.autograd.grad(carelu_with_statistics(z, alpha, beta, reduction="channel", impl="reference")[0], z, grad)
    torch.testing.assert_close(dz_fast, dz_ref)
