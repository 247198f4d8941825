"""carelu: gradients (gradcheck, float64), fast path against the reference, numerical edge cases."""

from __future__ import annotations

import itertools
import math
import re

import pytest
import torch

from caer_lightning.functional import carelu, carelu_with_statistics, competition
from caer_lightning.ops import REDUCTIONS, VARIANTS

CASES = list(itertools.product(VARIANTS, REDUCTIONS))
SHAPES = {"sample": (3, 4, 5, 6), "channel": (3, 4, 5, 6), "token": (3, 7, 6)}


def _input(reduction: str, dtype=torch.float64, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    # a per-group offset from -2 to 2 spreads p over (0, 1): some groups lean positive, some negative
    z = torch.randn(SHAPES[reduction], generator=generator, dtype=torch.float64)
    group_shape = {"sample": z.shape[:1] + (1, 1, 1), "channel": z.shape[:2] + (1, 1), "token": z.shape[:-1] + (1,)}
    offset = torch.linspace(-2, 2, math.prod(group_shape[reduction]), dtype=torch.float64)
    offset = offset[torch.randperm(offset.numel(), generator=generator)].view(group_shape[reduction])
    return (z + offset).to(dtype)


def _params(alpha: float, beta: float, dtype=torch.float64, shape: tuple[int, ...] = (1,)):
    """α, β as CAReLU holds them (shape (1,)), or as a user may pass them (shape ())."""
    return tuple(torch.full(shape, value, dtype=dtype, requires_grad=True) for value in (alpha, beta))


@pytest.mark.parametrize("impl", ["eager", "reference"])
@pytest.mark.parametrize("variant,reduction", CASES)
@pytest.mark.parametrize("alpha,beta", [(0.8, 0.3), (-2.5, 0.4)])  # second: some groups get s < 0
@pytest.mark.parametrize("shape", [(1,), ()])
def test_gradcheck(impl, variant, reduction, alpha, beta, shape):
    z = _input(reduction).requires_grad_()
    a, b = _params(alpha, beta, shape=shape)
    fn = lambda z, a, b: carelu(z, a, b, variant=variant, reduction=reduction, impl=impl)
    _, _, s = carelu_with_statistics(z, a, b, variant=variant, reduction=reduction)
    if alpha < 0:
        assert (s < 0).any() and (s > 0).any(), "the case must exercise both competition outcomes"
    assert torch.autograd.gradcheck(fn, (z, a, b), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("variant,reduction", CASES)
def test_eager_matches_reference_float32(variant, reduction):
    z = _input(reduction, torch.float32)
    outputs = {}
    for impl in ("eager", "reference"):
        zi = z.clone().requires_grad_()
        a, b = _params(-1.5, 0.4, torch.float32)
        out, p, s = carelu_with_statistics(zi, a, b, variant=variant, reduction=reduction, impl=impl)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        outputs[impl] = (out, p, s, zi.grad, a.grad, b.grad)
    for fast, ref in zip(outputs["eager"], outputs["reference"]):
        torch.testing.assert_close(fast, ref)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("variant,reduction", CASES)
def test_eager_matches_reference_under_autocast(dtype, variant, reduction):
    """A conv under CPU autocast feeds a half input; statistics and α, β grads are float32 in both paths."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 4, 3, padding=1)
    x = torch.randn(3, 3, 6, 6) + 0.3
    outputs = {}
    for impl in ("eager", "reference"):
        a, b = _params(-1.5, 0.4, torch.float32)
        conv.zero_grad()
        with torch.autocast("cpu", dtype=dtype):
            z = conv(x)
            z = z.flatten(2).transpose(1, 2) if reduction == "token" else z
            assert z.dtype == dtype
            out, p, s = carelu_with_statistics(z, a, b, variant=variant, reduction=reduction, impl=impl)
        assert out.dtype == dtype and p.dtype == torch.float32
        out.float().square().sum().backward()
        outputs[impl] = (out, p, s, conv.weight.grad.clone(), a.grad, b.grad)
    for fast, ref in zip(outputs["eager"], outputs["reference"]):
        torch.testing.assert_close(fast.float(), ref.float())


def test_float16_large_magnitude_stays_finite():
    """Σz² of a 64×56×56 map of magnitude 1e3 is ~2e11: it must not be summed in float16."""
    z = (torch.randn(2, 64, 56, 56) * 1e3).clamp(-6e4, 6e4).half()
    a, b = _params(1.0, 0.2, torch.float32)
    for variant in VARIANTS:
        out, p, s = carelu_with_statistics(z, a, b, variant=variant)
        assert torch.isfinite(p).all() and torch.isfinite(out.float()).all()
        assert ((p > 0.4) & (p < 0.6)).all(), f"{variant}: p of a symmetric input should be near 0.5, got {p}"
        ref, _, _ = carelu_with_statistics(z, a, b, variant=variant, impl="reference")
        torch.testing.assert_close(out, ref)


@pytest.mark.parametrize("impl", ["eager", "reference"])
@pytest.mark.parametrize("variant,reduction", CASES)
def test_all_zero_group_gives_zeros_not_nan(impl, variant, reduction):
    z = _input(reduction, torch.float32)
    z[0] = 0.0
    zi = z.clone().requires_grad_()
    a, b = _params(0.7, 0.2, torch.float32)
    out = carelu(zi, a, b, variant=variant, reduction=reduction, impl=impl)
    out.sum().backward()
    assert torch.equal(out[0], torch.zeros_like(out[0]))
    for tensor in (out, zi.grad, a.grad, b.grad):
        assert torch.isfinite(tensor).all()


@pytest.mark.parametrize("impl", ["eager", "reference"])
@pytest.mark.parametrize("variant,reduction", CASES)
def test_nan_in_one_sample_leaves_others_unchanged(impl, variant, reduction):
    z = _input(reduction, torch.float32)
    a, b = _params(0.7, 0.2, torch.float32)
    clean = carelu(z, a, b, variant=variant, reduction=reduction, impl=impl)
    z[1].view(-1)[3] = math.nan
    dirty = carelu(z, a, b, variant=variant, reduction=reduction, impl=impl)
    others = [0, 2]
    assert torch.equal(dirty[others], clean[others])


@pytest.mark.parametrize("impl", ["eager", "reference"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_parameters_of_shape_one_or_none_give_the_same_values_and_grads_in_their_own_shape(impl, variant):
    z = _input("channel", torch.float32)
    weights = torch.linspace(-1, 1, z.numel()).view_as(z)
    results = {}
    for shape in ((1,), ()):
        a, b = _params(-1.5, 0.4, torch.float32, shape)
        out = carelu(z, a, b, variant=variant, reduction="channel", impl=impl)
        (out * weights).sum().backward()
        assert a.grad.shape == shape and b.grad.shape == shape
        results[shape] = (out, a.grad.reshape(()), b.grad.reshape(()))
    from_numbers = carelu(z, -1.5, 0.4, variant=variant, reduction="channel", impl=impl)
    for one, none in zip(results[(1,)], results[()]):
        torch.testing.assert_close(one, none, rtol=0, atol=0)
    torch.testing.assert_close(from_numbers, results[(1,)][0], rtol=0, atol=0)
    # dL/dβ recomputed with plain autograd: Σ over groups of du (here by the reference through a scalar)
    beta = torch.tensor(0.4, requires_grad=True)
    z64 = z.double()
    p = competition(z64, variant=variant, reduction="channel").unsqueeze(-1).unsqueeze(-1)
    expected = (torch.relu(2.0 * torch.tanh(-1.5 * p + beta.double()) * z64) * weights.double()).sum()
    expected.backward()
    torch.testing.assert_close(results[(1,)][2].double(), beta.grad.double(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shape", [(2,), (1, 1)])
def test_parameters_of_other_shapes_are_refused_naming_the_argument(shape):
    z = torch.randn(2, 3, 4)
    with pytest.raises(ValueError, match=rf"alpha of shape {re.escape(str(shape))} is not supported; accepted shapes"):
        carelu(z, torch.zeros(shape), torch.zeros(1))
    with pytest.raises(ValueError, match=r"beta=nan is not supported"):
        carelu(z, torch.zeros(1), math.nan)


def test_default_init_is_relu_and_negative_scale_flips():
    z = torch.randn(4, 3, 5, 5)
    alpha, beta = torch.tensor(0.0), torch.tensor(math.atanh(0.5))
    torch.testing.assert_close(carelu(z, alpha, beta), torch.relu(z), rtol=0, atol=1e-6)
    # s = K·tanh(-atanh(0.5)) = -1: negatives win and pass flipped, |z| for z < 0
    torch.testing.assert_close(carelu(z, alpha, -beta), torch.relu(-z), rtol=0, atol=1e-6)


@pytest.mark.parametrize("reduction,shape,expected", [
    ("sample", (2, 3, 4, 4), (2,)), ("channel", (2, 3, 4, 4), (2, 3)), ("token", (2, 5, 6), (2, 5)),
])
def test_competition_shapes_and_values(reduction, shape, expected):
    z = torch.randn(shape)
    for variant in VARIANTS:
        p = competition(z, variant=variant, reduction=reduction)
        assert p.shape == expected and ((p >= 0) & (p <= 1)).all()
    p = competition(z, variant="count", reduction=reduction)
    dims = {"sample": (1, 2, 3), "channel": (2, 3), "token": (2,)}[reduction]
    torch.testing.assert_close(p, (z > 0).float().mean(dims))


@pytest.mark.parametrize("kwargs,argument", [
    (dict(variant="softmax"), "variant"), (dict(reduction="batch"), "reduction"), (dict(K=0.0), "K"),
    (dict(K=-1.0), "K"), (dict(eps=0.0), "eps"), (dict(impl="cuda"), "impl"),
])
def test_invalid_arguments_name_argument_and_accepted_values(kwargs, argument):
    with pytest.raises(ValueError, match=rf"{argument}=.*accepted values"):
        carelu(torch.randn(2, 3, 4, 4), torch.tensor(0.0), torch.tensor(0.5), **kwargs)


def test_too_few_dims_for_reduction():
    with pytest.raises(ValueError, match=r"reduction='channel' needs .* at least 3 dims"):
        carelu(torch.randn(2, 3), torch.tensor(0.0), torch.tensor(0.5), reduction="channel")


@pytest.mark.slow
@pytest.mark.parametrize("variant,reduction", CASES)
def test_gradgradcheck_double_backward(variant, reduction):
    """Gradient penalties (WGAN-GP, R1, input-gradient regularisers) differentiate the gradient itself."""
    z = _input(reduction).requires_grad_()
    a, b = _params(-1.3, 0.4)  # s = 0 (a kink) at p = 0.31, which no group's p hits
    fn = lambda z, a, b: carelu(z, a, b, variant=variant, reduction=reduction, impl="eager")
    assert torch.autograd.gradgradcheck(fn, (z, a, b), eps=1e-6, atol=1e-5)


def test_gradient_penalty_matches_the_reference():
    """An R1-style penalty through the op's double backward equals the one through plain ops."""
    results = {}
    for impl in ("eager", "reference"):
        z = _input("channel").requires_grad_()
        a, b = _params(0.9, 0.2)
        out = carelu(z, a, b, variant="energy", reduction="channel", impl=impl)
        (grad_z,) = torch.autograd.grad(out.square().sum(), z, create_graph=True)
        grad_z.square().sum().backward()
        results[impl] = (z.grad, a.grad, b.grad)
    for fast, ref in zip(results["eager"], results["reference"]):
        torch.testing.assert_close(fast, ref)


def test_backward_saves_only_input_output_and_group_scalars():
    # z is a leaf: nothing before it keeps what rebuilding it would take (tests/test_recompute.py for the rest)
    z = torch.randn(4, 8, 6, 6, requires_grad=True)
    a, b = _params(0.5, 0.5, torch.float32)
    out = carelu(z, a, b)
    saved = out.grad_fn.saved_tensors
    full = [t for t in saved if t.numel() == z.numel()]
    assert len(full) == 2 and {t.data_ptr() for t in full} == {z.data_ptr(), out.data_ptr()}
    assert all(t.numel() <= z.shape[0] for t in saved if t.numel() != z.numel())
