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
        alpha = torch.full((1,), -1.5, requires_grad=True)  # a CAReLU layer's shape
        beta = torch.full((1,), 0.4, requires_grad=True)
        out, p, s = carelu_with_statistics(zi, alpha, beta, variant=variant, reduction=reduction, impl=impl)
        weights = torch.linspace(-1, 1, out.numel()).view(out.shape)
        (out.float() * weights).sum().backward()
        results[impl] = dict(out=out, p=p, s=s, dz=zi.grad, dalpha=alpha.grad, dbeta=beta.grad)
    fast, ref = results["triton"], results["reference"]
    assert fast["out"].dtype == dtype and fast["out"].stride() == z.stride(), "output keeps dtype and layout"
    assert fast["dz"].stride() == z.stride()
    assert (ref["s"] < 0).any() and (ref["s"] > 0).any()
    assert fast["dalpha"].shape == fast["dbeta"].shape == (1,), "gradients in the parameters' shape"
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


def test_triton_refuses_what_it_cannot_take_without_a_copy():
    z = torch.randn(4, 6, 5, 5).transpose(2, 3)  # neither contiguous nor channels_last
    with pytest.raises(ValueError, match=r"impl='triton' cannot take this input: layout"):
        carelu_with_statistics(z, torch.tensor(0.0), torch.tensor(0.5), reduction="channel", impl="triton")
    with pytest.raises(ValueError, match=r"impl='triton' cannot take this input: .*float64"):
        carelu_with_statistics(torch.randn(2, 3, 4, dtype=torch.float64), torch.tensor(0.0), torch.tensor(0.5),
                               impl="triton")


def _compare(z, reduction="sample", variant="energy", alpha=-1.2, beta=0.3):
    """Triton against the reference, forward and backward, for one input."""
    results = {}
    weights = torch.randn(z.shape, generator=torch.Generator().manual_seed(1))
    for impl in ("triton", "reference"):
        zi = z.clone().requires_grad_()
        a, b = torch.tensor(alpha, requires_grad=True), torch.tensor(beta, requires_grad=True)  # a user's 0-d
        out, p, s = carelu_with_statistics(zi, a, b, variant=variant, reduction=reduction, impl=impl)
        (out.float() * weights).sum().backward()
        assert a.grad.shape == b.grad.shape == ()
        results[impl] = (out, p, s, zi.grad, a.grad, b.grad)
    for name, fast, ref in zip(("out", "p", "s", "dz", "dalpha", "dbeta"), *results.values()):
        torch.testing.assert_close(fast, ref, msg=name, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("shape,reduction,layout", [
    ((2, 16, 32, 32), "sample", "contiguous"),      # R = 16384: several splits forward and backward
    ((3, 7, 33, 31), "sample", "channels_last"),    # odd sizes: R not a multiple of the block
    ((2, 130, 5, 7), "channel", "channels_last"),   # C = 130 > one channel block of 64, not a power of two
    ((2, 3, 67, 45), "channel", "contiguous"),      # per-channel groups of 3015 elements: splits per group
    ((5, 3, 1000), "token", "contiguous"),
])
def test_splits_blocks_and_odd_sizes(shape, reduction, layout):
    from caer_lightning.ops.triton_kernels import _launch_shape

    z = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    z = z.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else z
    dims = {"sample": 1, "channel": 2, "token": z.dim() - 1}[reduction]
    if shape == (2, 16, 32, 32):
        assert _launch_shape(group_layout(z, dims), reduce=True)[2] > 1, "must exercise several splits"
    if shape == (2, 130, 5, 7):
        assert group_layout(z, dims).B == 130
    _compare(z, reduction)


def _train(impl: str, steps: int = 3) -> list[torch.Tensor]:
    from caer_lightning import CAReLU

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), CAReLU(), torch.nn.Conv2d(4, 2, 3), CAReLU(reduction="channel"))
    for module in model:
        if isinstance(module, CAReLU):
            module.impl = impl
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(steps):
        x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(step))
        optimizer.zero_grad()
        model(x).square().mean().backward()
        optimizer.step()
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("stage", ["forward", "backward"])
def test_a_failing_kernel_warns_once_and_training_continues_eagerly(stage, monkeypatch):
    from caer_lightning.ops import triton as triton_path
    from caer_lightning.ops import triton_kernels

    def broken(*args, **kwargs):
        raise RuntimeError("simulated ptxas failure")

    monkeypatch.setattr(triton_kernels, stage, broken)
    monkeypatch.setattr(triton_path, "FAILED", set())
    with pytest.warns(UserWarning, match=rf"Triton kernel failed in {stage}.*simulated ptxas failure") as caught:
        trained = _train("triton")
    assert sum("Triton kernel failed" in str(w.message) for w in caught) == 2  # one per input signature
    for fast, eager in zip(trained, _train("eager")):
        torch.testing.assert_close(fast, eager, rtol=1e-5, atol=1e-6)


class _OpCounter(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts the aten ops that compute (not views, not allocations) run outside kernel launches."""

    FREE = {"empty", "empty_like", "empty_strided", "view", "_unsafe_view", "reshape", "select", "unbind", "detach",
            "alias", "as_strided", "expand", "slice", "t", "unsqueeze", "squeeze", "lift_fresh"}

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []
        self.launching = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if not self.launching and name not in self.FREE:
            self.ops.append(name)
        return func(*args, **(kwargs or {}))


def test_launches_and_ops_per_call(monkeypatch):
    """≤ 3 device operations forward and ≤ 4 backward per CAReLU call (kernel launches + computing ops)."""
    from caer_lightning.ops import triton_kernels
    from caer_lightning.ops.triton import backward_triton, forward_triton

    counter = _OpCounter()
    launches = []

    class Counted:
        def __init__(self, kernel):
            self.kernel = kernel

        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                launches.append(self.kernel.__name__ if hasattr(self.kernel, "__name__") else str(self.kernel))
                counter.launching = True
                try:
                    return self.kernel[grid](*args, **kwargs)
                finally:
                    counter.launching = False
            return launch

    for name in ("_reduce_forward", "_apply_forward", "_reduce_backward", "_apply_backward"):
        monkeypatch.setattr(triton_kernels, name, Counted(getattr(triton_kernels, name)))
    for shape, reduction, dims in (((4, 8, 16, 16), "sample", [1, 2, 3]), ((4, 8, 16, 16), "channel", [2, 3])):
        z = torch.randn(shape)
        alpha, beta = torch.tensor(0.3), torch.tensor(0.5)
        launches.clear()
        with counter:
            out, p, tanh, normaliser = forward_triton(z, alpha, beta, 2.0, "energy", dims, 1e-6)
        forward_ops = len(launches) + len(counter.ops)
        assert forward_ops <= 3, (launches, counter.ops)
        launches.clear()
        counter.ops.clear()
        with counter:
            backward_triton(torch.randn(shape), z, p, tanh, normaliser, alpha, 2.0, "energy", dims)
        assert len(launches) + len(counter.ops) <= 4, (launches, counter.ops)
        counter.ops.clear()


def test_per_channel_parameters_are_not_taken_by_the_kernels():
    """Where the kernels take a layer's (1,) α, β, per-channel (C,) ones are refused with the reason, and "auto" on
    such inputs is the eager implementation (it runs eagerly for CUDA tensors too)."""
    from caer_lightning.functional import carelu, resolve_impl
    from caer_lightning.ops.triton import PER_CHANNEL_REASON

    z = _input("sample", torch.float32, "contiguous")
    assert resolve_impl("triton", z, (1, 2, 3)) == "triton"
    with pytest.raises(ValueError, match="impl='triton' cannot take this input: " + PER_CHANNEL_REASON.replace("(", r"\(").replace(")", r"\)")):
        carelu(z, torch.zeros(4), torch.zeros(4), params="channel", impl="triton")
    assert resolve_impl("auto", z, (1, 2, 3), per_channel=True) == "eager"


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_input_rebuilt_from_batch_norm_and_residual_sum_gives_the_reference_gradients(layout):
    # the Triton backward gets z rebuilt from what the BatchNorm and the sum's addends keep (ops/recompute.py)
    from caer_lightning import CAReLU, _compat

    if _compat.saved_tensor_hooks_active() is None:
        pytest.skip("before torch 2.8 CAReLU keeps its input")
    grads = {}
    for impl in ("triton", "reference"):
        torch.manual_seed(0)
        bn1, bn2, act1, act2 = torch.nn.BatchNorm2d(4), torch.nn.BatchNorm2d(4), CAReLU(), CAReLU()
        for act in (act1, act2):
            act.impl = impl
            with torch.no_grad():
                act.alpha.fill_(-1.5), act.beta.fill_(0.4)
        u = torch.randn(2, 4, 6, 5, requires_grad=True)
        x = u.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else u
        first = act1(bn1(x))
        z = bn2(first * 0.5)
        z += first
        out = act2(z)
        if impl == "triton":
            assert first.grad_fn.recipe is not None and out.grad_fn.recipe is not None
        (out * torch.linspace(-1, 1, out.numel()).view(out.shape)).sum().backward()
        grads[impl] = [u.grad, act1.alpha.grad, act2.alpha.grad, act2.beta.grad, bn1.bias.grad, bn2.weight.grad]
    for got, expected in zip(grads["triton"], grads["reference"]):
        torch.testing.assert_close(got, expected)
