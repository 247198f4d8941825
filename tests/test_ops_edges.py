"""Edges of the ops: defaults, exact error messages, inputs at the minimum rank, exact zeros, a batch of one,
dtypes of statistics and gradients, the implementation choice, double backward with fixed α, β.

Every expected value is recomputed here from the formulas of docs/spec.md §1, written out in float64.
"""

from __future__ import annotations

import math
import types

import pytest
import torch

from caer_lightning import functional
from caer_lightning.functional import carelu, carelu_with_statistics, competition
from caer_lightning.ops import REDUCTIONS, VARIANTS
from caer_lightning.ops.common import group_dims
from caer_lightning.ops.op import carelu_backward_op, carelu_op
from caer_lightning.ops.triton import AVAILABLE, capability_reason, unsupported_reason

DIMS = {"sample": lambda z: tuple(range(1, z.dim())), "channel": lambda z: tuple(range(2, z.dim())),
        "token": lambda z: (z.dim() - 1,)}


def _p(z: torch.Tensor, variant: str, dims: tuple[int, ...], eps: float) -> torch.Tensor:
    """p per group (keepdim), float64, straight from the table of docs/spec.md §1."""
    z = z.double()
    if variant == "energy":
        return z.clamp(min=0).pow(2).sum(dims, keepdim=True) / (z.pow(2).sum(dims, keepdim=True) + eps)
    if variant == "l1":
        return z.clamp(min=0).sum(dims, keepdim=True) / (z.abs().sum(dims, keepdim=True) + eps)
    return (z > 0).double().sum(dims, keepdim=True) / math.prod(z.shape[d] for d in dims)


def _forward(z, alpha, beta, K, variant, dims, eps):
    """(ReLU(s·z), p, s) in float64."""
    p = _p(z, variant, dims, eps)
    s = K * torch.tanh(float(alpha) * p + float(beta))
    return (s * z.double()).clamp(min=0), p, s


def _grads(z, g, alpha, beta, K, variant, dims, eps):
    """(dL/dz, dL/dα, dL/dβ) in float64 from the gradient formulas of docs/spec.md §1; ∂p/∂z for l1 is
    ([z>0] − p·sign z)/(Σ|z| + eps) (0 at z = 0, as autograd takes relu'(0) = abs'(0) = 0)."""
    z, g, alpha = z.double(), g.double(), float(alpha)
    p = _p(z, variant, dims, eps)
    t = torch.tanh(alpha * p + float(beta))
    s = K * t
    m = (s * z > 0).double()
    du = (g * m * z).sum(dims, keepdim=True) * K * (1 - t * t)
    if variant == "energy":
        dp = 2 * (z.clamp(min=0) - p * z) / (z.pow(2).sum(dims, keepdim=True) + eps)
    elif variant == "l1":
        dp = ((z > 0).double() - p * torch.sign(z)) / (z.abs().sum(dims, keepdim=True) + eps)
    else:
        dp = torch.zeros_like(z)
    return g * m * s + du * alpha * dp, (du * p).sum(), du.sum()


def _with_zeros(shape, seed=0) -> torch.Tensor:
    """Values in {-2, -1, 0, 1, 2, 3}: every group holds exact zeros next to positives and negatives."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(-2, 4, shape, generator=generator).float()


# ----------------------------------------------------------------------------------------------- defaults


def test_defaults_are_energy_sample_K2_eps_1e_6():
    """Small inputs (Σz² ≈ 0.1 per sample), where eps = 1e-6 against any larger eps shows in p."""
    z = 0.05 * torch.randn(3, 4, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    a, b = torch.full((1,), 1.7, dtype=torch.float64), torch.full((1,), 0.2, dtype=torch.float64)
    dims = (1, 2)
    expected_out, expected_p, expected_s = _forward(z, 1.7, 0.2, 2.0, "energy", dims, 1e-6)
    torch.testing.assert_close(carelu(z, a, b), expected_out, rtol=1e-12, atol=1e-12)
    out, p, s = carelu_with_statistics(z, a, b)
    for got, want in ((out, expected_out), (p, expected_p), (s, expected_s)):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(competition(z), expected_p.view(3), rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------------------------- competition


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("reduction,shape", [("sample", (3, 4, 5)), ("channel", (2, 3, 4, 5)), ("token", (2, 3, 6))])
def test_competition_values_per_variant(variant, reduction, shape):
    z = torch.randn(shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64) + 0.3
    dims = DIMS[reduction](z)
    expected = _p(z, variant, dims, 1e-6)
    for d in reversed(dims):
        expected = expected.squeeze(d)
    torch.testing.assert_close(competition(z, variant=variant, reduction=reduction), expected, rtol=1e-12, atol=1e-12)


def test_competition_sums_half_in_float32_and_keeps_float64():
    """Half inputs of magnitude 300: their squares (9e4) overflow float16, so p must be summed in float32."""
    z16 = (torch.rand(2, 3, 4, generator=torch.Generator().manual_seed(3)) * 600 - 300).half()
    for variant in ("energy", "l1"):
        p = competition(z16, variant=variant)
        assert p.dtype == torch.float32
        torch.testing.assert_close(p.double(), _p(z16.double(), variant, (1, 2), 1e-6).view(2), rtol=1e-5, atol=1e-6)
    z64 = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    p = competition(z64)
    assert p.dtype == torch.float64
    torch.testing.assert_close(p, _p(z64, "energy", (1, 2), 1e-6).view(2), rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("impl", ["eager", "reference"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_count_does_not_count_exact_zeros(impl, reduction):
    z = _with_zeros((2, 3, 8))
    dims = DIMS[reduction](z)
    expected_out, expected_p, expected_s = _forward(z, 1.2, -0.1, 2.0, "count", dims, 1e-6)
    out, p, s = carelu_with_statistics(z, torch.tensor([1.2]), torch.tensor([-0.1]), variant="count",
                                       reduction=reduction, impl=impl)
    torch.testing.assert_close(p.double(), expected_p, rtol=1e-6, atol=0)
    torch.testing.assert_close(s.double(), expected_s, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(out.double(), expected_out, rtol=1e-6, atol=1e-6)
    squeezed = competition(z, variant="count", reduction=reduction)
    torch.testing.assert_close(squeezed.double().reshape(expected_p.shape), expected_p, rtol=1e-6, atol=0)


@pytest.mark.parametrize("reduction,shape", [("sample", (1, 3, 4)), ("channel", (1, 1, 6)), ("token", (1, 5))])
def test_count_of_a_single_group(reduction, shape):
    """A batch of one with one group: p is the share of positives of all its elements."""
    z = torch.tensor([-1.0, 2.0, 0.5, -3.0, 4.0, 1.0] * 2)[: math.prod(shape)].view(shape)
    dims = DIMS[reduction](z)
    _, p, _ = carelu_with_statistics(z, torch.tensor([0.5]), torch.tensor([0.3]), variant="count",
                                     reduction=reduction, impl="eager")
    assert p.numel() == 1
    torch.testing.assert_close(p.double(), _p(z, "count", dims, 1e-6), rtol=1e-6, atol=0)


# ----------------------------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("impl", ["eager", "reference"])
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_backward_at_exact_zeros_matches_the_spec_formula(impl, variant, reduction):
    """At z = 0 ReLU(s·z) is not differentiable: the gradient takes relu'(0) = 0, sign(0) = 0 (autograd's)."""
    z = _with_zeros((2, 3, 8), seed=5).double().requires_grad_()
    g = torch.linspace(-1, 1, z.numel(), dtype=torch.float64).view(z.shape)
    a, b = (torch.full((1,), v, dtype=torch.float64, requires_grad=True) for v in (-1.4, 0.35))
    out = carelu(z, a, b, variant=variant, reduction=reduction, impl=impl)
    out.backward(g)
    dz, da, db = _grads(z.detach(), g, -1.4, 0.35, 2.0, variant, DIMS[reduction](z), 1e-6)
    torch.testing.assert_close(z.grad, dz, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(a.grad, da.view(1), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(b.grad, db.view(1), rtol=1e-10, atol=1e-12)


def test_backward_op_returns_the_input_dtype_like_its_fake():
    """torch.compile traces carelu_backward with its fake (dL/dz like z): the real op must agree."""
    z = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(6)).half()
    a, b = torch.full((1,), 0.6), torch.full((1,), 0.3)
    _, p, tanh, normaliser = carelu_op(z, a, b, 2.0, "energy", [1, 2], 1e-6, "eager")
    g = torch.linspace(-1, 1, z.numel()).view(z.shape).half()
    dz, dab = carelu_backward_op(g, z, p, tanh, normaliser, a, 2.0, "energy", [1, 2], "eager")
    assert dz.dtype == torch.float16 and dab.dtype == torch.float32 and dab.shape == (2,)
    expected_dz, da, db = _grads(z, g, 0.6, 0.3, 2.0, "energy", (1, 2), 1e-6)
    torch.testing.assert_close(dz.double(), expected_dz, rtol=2e-3, atol=2e-3)
    torch.testing.assert_close(dab.double(), torch.stack((da, db)), rtol=1e-5, atol=1e-5)


def test_statistics_outputs_of_the_op_carry_no_gradient():
    """p, tanh and the normaliser are statistics: a loss on them alone sends nothing back (no zeros either)."""
    z = torch.randn(2, 3, 4, requires_grad=True)
    a = torch.full((1,), 0.5, requires_grad=True)
    _, p, tanh, normaliser = carelu_op(z, a, torch.full((1,), 0.3), 2.0, "energy", [1, 2], 1e-6, "eager")
    (p.sum() + tanh.sum() + normaliser.sum()).backward()
    assert z.grad is None and a.grad is None


@pytest.mark.parametrize("fixed", ["both", "alpha", "beta"])
def test_gradient_penalty_with_fixed_parameters_matches_the_reference(fixed):
    """create_graph=True with α and/or β fixed (numbers, or tensors without grad): the op's double backward
    equals plain autograd through the reference, gradient for gradient."""
    results = {}
    for impl in ("eager", "reference"):
        z = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(7), dtype=torch.float64).requires_grad_()
        a = 0.9 if fixed in ("both", "alpha") else torch.full((1,), 0.9, dtype=torch.float64, requires_grad=True)
        b = 0.2 if fixed in ("both", "beta") else torch.full((1,), 0.2, dtype=torch.float64, requires_grad=True)
        out = carelu(z, a, b, variant="energy", reduction="channel", impl=impl)
        (grad_z,) = torch.autograd.grad((out.square() * torch.linspace(-1, 1, 24, dtype=torch.float64).view(2, 3, 4))
                                        .sum(), z, create_graph=True)
        grad_z.square().sum().backward()
        results[impl] = [z.grad] + [t.grad for t in (a, b) if isinstance(t, torch.Tensor)]
    assert len(results["eager"]) == {"both": 1, "alpha": 2, "beta": 2}[fixed]
    for fast, ref in zip(results["eager"], results["reference"]):
        torch.testing.assert_close(fast, ref, rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------------------------------------- dtypes


@pytest.mark.parametrize("impl", ["eager", "reference"])
def test_statistics_are_in_the_accumulation_dtype_of_the_input_not_of_the_parameters(impl):
    """float64 α, β on a float32 input: p and s in float32 (the input's accumulation dtype), like the fake."""
    z = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(8))
    a, b = torch.full((1,), -1.1, dtype=torch.float64), torch.full((1,), 0.4, dtype=torch.float64)
    out, p, s = carelu_with_statistics(z, a, b, impl=impl)
    assert (out.dtype, p.dtype, s.dtype) == (torch.float32,) * 3
    expected_out, expected_p, expected_s = _forward(z, -1.1, 0.4, 2.0, "energy", (1, 2), 1e-6)
    torch.testing.assert_close(s.double(), expected_s, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(out.double(), expected_out, rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------------------------- ranks, messages


@pytest.mark.parametrize("reduction,shape,p_shape", [("sample", (3, 5), (3,)), ("channel", (2, 3, 5), (2, 3)),
                                                     ("token", (6,), ())])
def test_inputs_of_the_minimum_rank_are_accepted(reduction, shape, p_shape):
    z = torch.randn(shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    dims = DIMS[reduction](z)
    assert group_dims(z, reduction) == dims
    p = competition(z, reduction=reduction)
    assert p.shape == p_shape
    torch.testing.assert_close(p, _p(z, "energy", dims, 1e-6).reshape(p_shape), rtol=1e-12, atol=1e-12)
    expected, _, _ = _forward(z, 0.8, 0.1, 2.0, "energy", dims, 1e-6)
    torch.testing.assert_close(carelu(z, 0.8, 0.1, reduction=reduction), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("reduction,shape,message", [
    ("sample", (5,), "reduction='sample' needs an input with at least 2 dims (N, ...), got shape (5,); "
                     "accepted reductions for this input: token"),
    ("channel", (2, 3), "reduction='channel' needs an input with at least 3 dims (N, C, ...), got shape (2, 3); "
                        "accepted reductions for this input: sample, token"),
    ("token", (), "reduction='token' needs an input with at least 1 dims (..., C), got shape (); "
                  "accepted reductions for this input: "),
])
def test_too_few_dims_message_names_layout_and_accepted_reductions(reduction, shape, message):
    with pytest.raises(ValueError) as info:
        group_dims(torch.zeros(shape), reduction)
    assert str(info.value) == message
    with pytest.raises(ValueError) as info:
        carelu(torch.zeros(shape), 0.0, 0.5, reduction=reduction)
    assert str(info.value) == message


@pytest.mark.parametrize("kwargs,message", [
    (dict(variant="softmax"), "variant='softmax' is not supported; accepted values: energy, l1, count"),
    (dict(reduction="batch"), "reduction='batch' is not supported; accepted values: sample, channel, token"),
    (dict(impl="cuda"), "impl='cuda' is not supported; accepted values: auto, eager, triton, reference"),
])
def test_unknown_option_message_lists_accepted_values(kwargs, message):
    with pytest.raises(ValueError) as info:
        carelu(torch.randn(2, 3, 4), 0.0, 0.5, **kwargs)
    assert str(info.value) == message


@pytest.mark.parametrize("argument", ["K", "eps"])
@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan, True, "2", None])
def test_K_and_eps_must_be_finite_positive_numbers(argument, value):
    expected = f"{argument}={value!r} is not supported; accepted values: a finite number > 0"
    with pytest.raises(ValueError) as info:
        carelu(torch.randn(2, 3, 4), 0.0, 0.5, **{argument: value})
    assert str(info.value) == expected
    if argument == "eps":
        with pytest.raises(ValueError) as info:
            competition(torch.randn(2, 3, 4), eps=value)
        assert str(info.value) == expected


# ----------------------------------------------------------------------------------------------- impl choice


@pytest.fixture
def support(monkeypatch):
    """Replaces the Triton support check seen by `resolve_impl`: records its calls, answers `support.reason`."""
    state = types.SimpleNamespace(reason=None, calls=[])

    def fake(z, dims, per_channel=False):
        state.calls.append((z, dims, per_channel))
        return state.reason

    monkeypatch.setattr(functional, "unsupported_reason", fake)
    return state


@pytest.mark.parametrize("is_cuda,reason,expected", [
    (True, None, "triton"), (True, "dtype torch.float64", "eager"), (False, None, "eager"),
])
def test_auto_takes_triton_only_for_cuda_tensors_it_supports(support, is_cuda, reason, expected):
    z = types.SimpleNamespace(is_cuda=is_cuda)
    support.reason = reason
    assert functional.resolve_impl("auto", z, (1, 2, 3)) == expected
    assert all(call == (z, [1, 2, 3], False) for call in support.calls) and (support.calls or not is_cuda)
    support.calls.clear()
    functional.resolve_impl("auto", z, (1, 2, 3), per_channel=True)
    assert all(call == (z, [1, 2, 3], True) for call in support.calls)


def test_explicit_triton_asks_about_the_reduced_dims_and_names_the_reason(support):
    z = types.SimpleNamespace(is_cuda=True)
    assert functional.resolve_impl("triton", z, (2, 3)) == "triton"
    support.reason = "layout with strides (1, 2) (supported: contiguous, channels_last)"
    with pytest.raises(ValueError) as info:
        functional.resolve_impl("triton", z, (2, 3))
    assert str(info.value) == ("impl='triton' cannot take this input: layout with strides (1, 2) (supported: "
                               "contiguous, channels_last); use impl='auto' or impl='eager'")
    assert support.calls == [(z, [2, 3], False), (z, [2, 3], False)]
    assert functional.resolve_impl("eager", z, (2, 3)) == "eager" and len(support.calls) == 2


@pytest.mark.skipif(not AVAILABLE, reason="triton is not installed")
def test_cpu_tensors_pass_the_device_check_only_under_the_interpreter(monkeypatch):
    # the kernels module is imported (jit, not interpreted) before TRITON_INTERPRET is set: the variable is
    # read when kernels are decorated, and this process must not switch to the interpreter
    import caer_lightning.ops.triton_kernels  # noqa: F401

    z64 = torch.zeros(2, 3, dtype=torch.float64)
    cpu_message = "a CPU tensor runs Triton kernels only under TRITON_INTERPRET=1 (set before triton is imported)"
    for value in (None, "0", "true"):
        if value is None:
            monkeypatch.delenv("TRITON_INTERPRET", raising=False)
        else:
            monkeypatch.setenv("TRITON_INTERPRET", value)
        assert unsupported_reason(z64, [1]) == cpu_message
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert unsupported_reason(z64, [1]) == "dtype torch.float64 (supported: float32, float16, bfloat16)"
    transposed = torch.zeros(3, 4, 5).transpose(0, 2)
    assert unsupported_reason(transposed, [1]) == (
        f"layout with strides {tuple(transposed.stride())} (supported: contiguous, channels_last)")
    assert unsupported_reason(torch.zeros(3, 4, 5), [1]) is None


@pytest.mark.skipif(not AVAILABLE, reason="triton is not installed")
def test_tensors_of_other_devices_are_refused_by_device(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    reason = unsupported_reason(torch.zeros(2, 3, device="meta"), [1])
    assert reason == "device meta (supported: cuda, and cpu under TRITON_INTERPRET=1)"


@pytest.mark.parametrize("dtype,capability,message", [
    (torch.float16, (6, 1), "compute capability 6.1 (Triton needs 7.0 or newer)"),
    (torch.bfloat16, (7, 5), "bfloat16 on compute capability 7.5 (bfloat16 needs 8.0 or newer)"),
])
def test_capability_messages_give_major_and_minor(dtype, capability, message):
    assert capability_reason(dtype, capability) == message


class _OnCuda:
    """A CPU tensor that reports itself on cuda:0: the support check reads only metadata (device, dtype,
    shape, strides), so its decisions for CUDA tensors can be checked on a machine without a GPU."""

    device = torch.device("cuda", 0)
    is_cuda = True

    def __init__(self, tensor: torch.Tensor):
        self._tensor = tensor

    def __getattr__(self, name):
        return getattr(self._tensor, name)


@pytest.fixture
def gpu(monkeypatch):
    """torch.cuda.get_device_capability answering `gpu.capability` and recording the device asked about."""
    state = types.SimpleNamespace(capability=(8, 0), asked=[])

    def capability(device=None):
        state.asked.append(device)
        return state.capability

    monkeypatch.setattr(torch.cuda, "get_device_capability", capability)
    return state


@pytest.mark.skipif(not AVAILABLE, reason="triton is not installed")
@pytest.mark.parametrize("dtype,capability,expected", [
    (torch.float32, (8, 0), None), (torch.bfloat16, (8, 0), None), (torch.float16, (7, 0), None),
    (torch.bfloat16, (7, 5), "bfloat16 on compute capability 7.5 (bfloat16 needs 8.0 or newer)"),
    (torch.float16, (6, 1), "compute capability 6.1 (Triton needs 7.0 or newer)"),
])
def test_cuda_tensors_are_checked_against_their_gpus_capability(gpu, dtype, capability, expected):
    gpu.capability = capability
    z = _OnCuda(torch.zeros(2, 3, 4, dtype=dtype))
    assert unsupported_reason(z, [1]) == expected
    assert gpu.asked == [torch.device("cuda", 0)]
    assert functional.resolve_impl("auto", z, (1, 2)) == ("triton" if expected is None else "eager")
    if expected is not None:
        with pytest.raises(ValueError) as info:
            functional.resolve_impl("triton", z, (1, 2))
        assert str(info.value) == f"impl='triton' cannot take this input: {expected}; use impl='auto' or impl='eager'"


@pytest.mark.skipif(not AVAILABLE, reason="triton is not installed")
def test_cuda_tensors_of_other_dtypes_or_layouts_are_refused_by_name(gpu):
    assert unsupported_reason(_OnCuda(torch.zeros(2, 3, dtype=torch.float64)), [1]) == (
        "dtype torch.float64 (supported: float32, float16, bfloat16)")
    assert gpu.asked == []  # the dtype decides before the GPU is asked
    transposed = torch.zeros(3, 4, 5).transpose(0, 2)
    assert unsupported_reason(_OnCuda(transposed), [1]) == (
        f"layout with strides {tuple(transposed.stride())} (supported: contiguous, channels_last)")
    assert functional.resolve_impl("auto", _OnCuda(transposed), (1, 2)) == "eager"
    # channels_last: per sample (dims 1..) and per channel (dims 2..) without a copy, per token (dim 3) not
    channels_last = _OnCuda(torch.zeros(2, 3, 4, 5).contiguous(memory_format=torch.channels_last))
    assert unsupported_reason(channels_last, [1, 2, 3]) is None and unsupported_reason(channels_last, [2, 3]) is None
    assert unsupported_reason(channels_last, [3]) == (
        f"layout with strides {tuple(channels_last.stride())} (supported: contiguous, channels_last)")


def _dense(shape, memory_format=None, permute=None) -> torch.Tensor:
    """Distinct values 0, 1, 2, ... in memory order, in the layout asked for."""
    z = torch.arange(math.prod(shape), dtype=torch.float32)
    if memory_format is not None:
        dense = torch.empty(shape).contiguous(memory_format=memory_format)
        dense.as_strided((dense.numel(),), (1,)).copy_(z)
        return dense
    z = z.view(shape)
    return z.permute(permute) if permute else z


@pytest.mark.skipif(not AVAILABLE, reason="triton is not installed")
@pytest.mark.parametrize("shape,memory_format,permute,d,expected", [
    ((2, 3, 4, 5), None, None, 1, (2, 60, 1)),
    ((2, 3, 4, 5), None, None, 2, (6, 20, 1)),
    ((2, 3, 4, 5), None, None, 3, (24, 5, 1)),
    ((3, 5, 6), None, None, 2, (15, 6, 1)),
    ((2, 3, 4, 5), torch.channels_last, None, 1, (2, 60, 1)),
    ((2, 3, 4, 5), torch.channels_last, None, 2, (2, 20, 3)),
    ((2, 3, 4, 5), torch.channels_last, None, 3, None),  # tokens along W of a channels_last map: a copy
    ((2, 3, 2, 4, 5), torch.channels_last_3d, None, 1, (2, 120, 1)),
    ((2, 3, 2, 4, 5), torch.channels_last_3d, None, 2, (2, 40, 3)),
    ((2, 3, 4, 5), None, (0, 2, 1, 3), 1, None),  # neither contiguous nor channels_last
    ((2, 3, 4, 5), None, (0, 2, 1, 3), 2, None),
    ((2, 3, 2, 4, 5), None, (0, 2, 1, 3, 4), 1, None),
    ((2, 3, 2, 4, 5), None, (0, 2, 1, 3, 4), 2, None),
    ((3, 4, 5), None, (0, 2, 1), 1, None),
])
def test_group_layout_views_each_group_without_a_copy(shape, memory_format, permute, d, expected):
    """(A, R, B) with strides (sA, sR, sB): element r of group (a, b) sits at a·sA + r·sR + b·sB, so each
    group's R elements, read through that view, are exactly those of z's dims d.. (group index a·B + b)."""
    from caer_lightning.ops.triton_kernels import group_layout

    z = _dense(shape, memory_format, permute)
    layout = group_layout(z, d)
    if expected is None:
        assert layout is None
        return
    assert (layout.A, layout.R, layout.B) == expected
    view = torch.as_strided(z, (layout.A, layout.R, layout.B), (layout.sA, layout.sR, layout.sB),
                            z.storage_offset())
    through_view = view.permute(0, 2, 1).reshape(layout.A * layout.B, layout.R).sort(-1).values
    groups = z.flatten(d).reshape(-1, layout.R).sort(-1).values
    torch.testing.assert_close(through_view, groups, rtol=0, atol=0)


def test_python_numbers_become_parameters_on_the_inputs_device_and_accumulation_dtype():
    for dtype, expected in ((torch.float16, torch.float32), (torch.float32, torch.float32),
                            (torch.float64, torch.float64)):
        value = functional.layer_parameter("alpha", 0.25, torch.zeros(2, 3, dtype=dtype))
        assert value.shape == () and value.dtype == expected and value.item() == 0.25
    on_meta = functional.layer_parameter("beta", -0.5, torch.zeros(2, 3, device="meta"))
    assert on_meta.device.type == "meta" and on_meta.shape == ()


@pytest.mark.parametrize("argument", ["alpha", "beta"])
@pytest.mark.parametrize("value", [True, False, "0.5", math.inf, math.nan, None])
def test_alpha_and_beta_must_be_finite_numbers(argument, value):
    arguments = {"alpha": 0.0, "beta": 0.5, argument: value}
    with pytest.raises(ValueError) as info:
        carelu(torch.randn(2, 3, 4), arguments["alpha"], arguments["beta"])
    assert str(info.value) == f"{argument}={value!r} is not supported; accepted values: a finite number"
