"""CAReLU rebuilding its input in backward (ops/recompute.py): what autograd keeps, and gradients unchanged."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from caer_lightning import CAReLU, _compat
from caer_lightning.functional import carelu
from caer_lightning.ops import recompute
from caer_lightning.ops.recompute import ENVIRONMENT_VARIABLE, BatchNormOutput, SavedOutput, Sum


needs_hook_query = pytest.mark.skipif(
    _compat.saved_tensor_hooks_active() is None,
    reason="before torch 2.8 nothing tells whether saved-tensor hooks are in effect: CAReLU keeps its input")
pytestmark = needs_hook_query


@pytest.fixture(autouse=True)
def unverified(monkeypatch):
    """Every test starts with no recipe verified, so that each one's first backward checks its rebuild."""
    monkeypatch.setattr(recompute, "VERIFIED", set())
    monkeypatch.delenv(ENVIRONMENT_VARIABLE, raising=False)


class Block(nn.Module):
    """A ResNet basic block: conv-BN-act, conv-BN, plus the shortcut (a conv-BN where the width changes)."""

    def __init__(self, c_in: int, c_out: int, act, inplace_add: bool = True):
        super().__init__()
        self.conv1, self.bn1, self.act1 = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), act()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2, self.act2 = nn.BatchNorm2d(c_out), act()
        self.down = None
        if c_in != c_out:
            self.down = nn.Sequential(nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out))
        self.inplace_add = inplace_add

    def forward(self, x):
        shortcut = x if self.down is None else self.down(x)
        out = self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x)))))
        if self.inplace_add:
            out += shortcut
        else:
            out = out + shortcut
        return self.act2(out)


class Net(nn.Module):
    def __init__(self, act=CAReLU, inplace_add: bool = True):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), act())
        self.blocks = nn.Sequential(Block(8, 8, act, inplace_add), Block(8, 16, act, inplace_add))
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)).mean((2, 3)))


def _carelus(model: nn.Module) -> list[CAReLU]:
    return [module for module in model.modules() if isinstance(module, CAReLU)]


def _spread_scales(model: nn.Module) -> None:
    """α, β away from the identity start, one layer with s < 0 (its negatives win), so every term matters."""
    with torch.no_grad():
        for i, act in enumerate(_carelus(model)):
            act.alpha.fill_(0.9 - 0.3 * i)
            act.beta.fill_(-0.2 if i != 2 else -1.2)


def _gradients(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    x = x.clone().requires_grad_()
    model.zero_grad()
    (model(x) * torch.linspace(-1, 1, 5)).sum().backward()
    return {"input": x.grad, **{name: p.grad for name, p in model.named_parameters()}}


def _saved_storages(output: torch.Tensor) -> dict[int, int]:
    """{storage: bytes} of what the graph behind `output` keeps for backward, each storage once."""
    return {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in _compat.kept_for_backward(output)}


@pytest.mark.parametrize("inplace_add", [True, False])
def test_carelu_keeps_what_relu_keeps_plus_group_scalars(inplace_add):
    torch.manual_seed(0)
    x = torch.randn(4, 3, 8, 8)
    relu = sum(_saved_storages(Net(nn.ReLU, inplace_add)(x)).values())
    model = Net(CAReLU, inplace_add)
    ours = sum(_saved_storages(model(x)).values())
    layers = len(_carelus(model))
    # per layer: p, tanh(αp+β) and the normaliser, one float32 per sample each, and α, β (one float32 each)
    assert ours - relu == layers * (3 * x.shape[0] * 4 + 2 * 4)
    with pytest.MonkeyPatch.context() as patch:  # keeping the input: one input-sized tensor more per layer
        patch.setenv(ENVIRONMENT_VARIABLE, "0")
        kept = sum(_saved_storages(model(x)).values())
    inputs = 4 * 8 * 8 * 4 * (8 + 8 + 8 + 16 + 16)  # stem, block 1 (two), block 2 (two): N·H·W·4 bytes·channels
    assert kept - ours == inputs


def test_recipes_name_the_layers_that_made_the_input():
    model = Net()
    outputs = {}
    for name, act in model.named_modules():
        if isinstance(act, CAReLU):
            act.register_forward_hook(lambda m, i, o, name=name: outputs.__setitem__(name, o))
    model(torch.randn(2, 3, 8, 8))
    recipe = {name: out.grad_fn.recipe for name, out in outputs.items()}
    assert isinstance(recipe["stem.2"], BatchNormOutput) and isinstance(recipe["blocks.0.act1"], BatchNormOutput)
    # block 0: BN + the stem's CAReLU output; block 1: BN + the shortcut's BN
    assert isinstance(recipe["blocks.0.act2"], Sum) and isinstance(recipe["blocks.0.act2"].second, SavedOutput)
    assert recipe["blocks.0.act2"].second.node is outputs["stem.2"].grad_fn
    assert isinstance(recipe["blocks.1.act2"].first, BatchNormOutput)
    assert isinstance(recipe["blocks.1.act2"].second, BatchNormOutput)
    assert recipe["blocks.1.act2"].second.node.next_functions[0][0].name() == "ConvolutionBackward0"


@pytest.mark.parametrize("inplace_add", [True, False])
@pytest.mark.parametrize("variant", ["energy", "l1", "count"])
@pytest.mark.parametrize("train", [True, False])
def test_gradients_equal_the_reference_and_the_kept_input(variant, train, inplace_add, monkeypatch):
    torch.manual_seed(0)
    model = Net(lambda: CAReLU(variant=variant), inplace_add)
    _spread_scales(model)
    model.train(train)
    x = torch.randn(4, 3, 8, 8)
    reference = copy.deepcopy(model)
    for act in _carelus(reference):
        act.impl = "reference"  # autograd through plain ops: the oracle
    kept = copy.deepcopy(model)
    rebuilt, expected = _gradients(model, x), _gradients(reference, x)
    monkeypatch.setenv(ENVIRONMENT_VARIABLE, "0")
    as_before = _gradients(kept, x)
    for name in expected:
        torch.testing.assert_close(rebuilt[name], expected[name], msg=name)
        torch.testing.assert_close(rebuilt[name], as_before[name], rtol=1e-6, atol=1e-7, msg=name)


def test_gradients_under_bfloat16_autocast_equal_the_kept_input(monkeypatch):
    torch.manual_seed(0)
    model = Net()
    _spread_scales(model)
    x = torch.randn(4, 3, 8, 8)
    kept = copy.deepcopy(model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        rebuilt = _gradients(model, x)
        monkeypatch.setenv(ENVIRONMENT_VARIABLE, "0")
        as_before = _gradients(kept, x)
    for name in rebuilt:
        torch.testing.assert_close(rebuilt[name], as_before[name], msg=name)


def _bn_carelu(variant: str, source: str):
    """u, v, γ, β_bn, α, β, α2, β2 -> CAReLU(BN(u) [+ a shortcut of kind `source`]) in float64."""

    def fn(u, v, weight, bias, alpha, beta, alpha2, beta2):
        if source == "eval":  # normalised with running statistics (an eps other than the default, too)
            running_mean, running_var = torch.linspace(-0.5, 0.5, 4, dtype=u.dtype), torch.linspace(0.5, 2, 4,
                                                                                                    dtype=u.dtype)
            z = F.batch_norm(u, running_mean, running_var, weight, bias, False, 0.1, 1e-3)
        else:
            z = F.batch_norm(u, None, None, weight, bias, True, 0.1, 1e-3)
        if source == "carelu":
            z = z + carelu(v, alpha2, beta2, variant=variant, impl="eager")
        elif source == "relu, in place sum":
            z += torch.relu(v)
        elif source == "bn":
            z = z + F.batch_norm(v, None, None, weight, bias, True, 0.1, 1e-3)
        return carelu(z, alpha, beta, variant=variant, impl="eager")

    return fn


def _float64_inputs(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    u, v = (torch.randn(3, 4, 5, 5, generator=generator, dtype=torch.float64) for _ in range(2))
    weight = torch.rand(4, generator=generator, dtype=torch.float64) + 0.5
    bias = torch.randn(4, generator=generator, dtype=torch.float64)
    # α, β, α2, β2: αp+β ≠ 0 at every p = k/100 of the count variant (no kink where gradcheck probes)
    scalars = [torch.tensor([value], dtype=torch.float64) for value in (0.8, -0.35, -1.5, 0.6)]
    return [t.requires_grad_() for t in (u, v, weight, bias, *scalars)]


@pytest.mark.parametrize("source", ["none", "eval", "carelu", "relu, in place sum", "bn"])
@pytest.mark.parametrize("variant", ["energy", "l1", "count"])
def test_gradcheck_through_the_rebuilt_input(variant, source):
    fn = _bn_carelu(variant, source)
    inputs = _float64_inputs()
    assert fn(*inputs).grad_fn.recipe is not None  # the rebuild is what is checked
    assert torch.autograd.gradcheck(fn, inputs)


@pytest.mark.parametrize("source", ["none", "eval", "carelu", "bn"])
def test_second_derivatives_flow_through_the_rebuilt_input(source):
    # create_graph=True (gradient penalties): the rebuilt z is the same function of u, γ, β as the forward's
    fn = _bn_carelu("energy", source)
    assert torch.autograd.gradgradcheck(fn, _float64_inputs(1))


@pytest.mark.parametrize("case", ["frozen bias", "modified without autograd", "linear", "switched off", "scaled sum"])
def test_input_is_kept_where_it_cannot_be_rebuilt(case, monkeypatch):
    torch.manual_seed(0)
    bn, act = nn.BatchNorm2d(4), CAReLU()
    u = torch.randn(2, 4, 3, 3, requires_grad=True)
    if case == "frozen bias":
        bn.bias.requires_grad_(False)
    if case == "switched off":
        monkeypatch.setenv(ENVIRONMENT_VARIABLE, "0")
    z = nn.Linear(3, 3)(u) if case == "linear" else bn(u)
    if case == "scaled sum":  # a + 2·b: only a + b is rebuilt
        z = torch.add(z, torch.relu(u), alpha=2.0)
    if case == "modified without autograd":  # the BN node's values would rebuild z as it was before this
        with torch.no_grad():
            z.mul_(-3.0)
    out = act(z)
    assert out.grad_fn.recipe is None
    assert any(t.data_ptr() == z.data_ptr() for t in out.grad_fn.saved_tensors if t is not None)
    reference = CAReLU()
    reference.impl = "reference"
    (grad,) = torch.autograd.grad(out.sum(), u, retain_graph=True)
    (expected,) = torch.autograd.grad(reference(z).sum(), u)
    torch.testing.assert_close(grad, expected)


def test_under_checkpoint_the_input_is_kept_and_gradients_are_the_same():
    # the checkpoint's hooks hold what the layers keep, to be unpacked once each: CAReLU must not unpack them
    torch.manual_seed(0)
    block = Block(4, 4, CAReLU)
    x = torch.randn(2, 4, 6, 6)
    plain = copy.deepcopy(block)
    expected = _gradients_of(plain, x, lambda m, t: m(t))
    recipes = []
    block.act1.register_forward_hook(lambda m, i, o: recipes.append(o.grad_fn.recipe))
    got = _gradients_of(block, x, lambda m, t: checkpoint(m, t, use_reentrant=False))
    assert recipes and all(recipe is None for recipe in recipes)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], msg=name)


def _gradients_of(module, x, call):
    x = x.clone().requires_grad_()
    call(module, x).square().sum().backward()
    return {"input": x.grad, **{name: p.grad for name, p in module.named_parameters()}}


@pytest.mark.parametrize("dtype,factor", [(torch.float32, 1.001), (torch.bfloat16, 1.1)])
def test_a_rebuild_that_differs_from_forward_raises_before_any_step(dtype, factor, monkeypatch):
    # float32 rebuilds match to rounding: 0.1% off is wrong; bfloat16 ones to its 0.4% steps: 10% off is wrong
    build = BatchNormOutput.build
    monkeypatch.setattr(BatchNormOutput, "build", lambda self, differentiable: build(self, differentiable) * factor)
    u = torch.randn(2, 4, 3, 3, dtype=dtype, requires_grad=True)  # BN takes bfloat16 with float32 γ, β
    out = CAReLU()(nn.BatchNorm2d(4)(u))
    assert out.dtype == dtype and out.grad_fn.recipe is not None
    with pytest.raises(RuntimeError, match=f"per-group statistics differ.*{ENVIRONMENT_VARIABLE}=0"):
        out.float().sum().backward()


def test_a_single_channel_batch_norm_is_rebuilt_with_its_batch_statistics():
    torch.manual_seed(0)
    bn, act = nn.BatchNorm2d(1), CAReLU()
    _spread_scales(nn.Sequential(act))
    u = torch.randn(3, 1, 4, 4, requires_grad=True)
    out = act(bn(u))
    assert isinstance(out.grad_fn.recipe, BatchNormOutput)
    (got,) = torch.autograd.grad(out.square().sum(), u)
    act.impl = "reference"
    (expected,) = torch.autograd.grad(act(bn(u)).square().sum(), u)
    torch.testing.assert_close(got, expected)


def test_bias_changed_between_forward_and_backward_raises():
    bn = nn.BatchNorm2d(4)
    out = CAReLU()(bn(torch.randn(2, 4, 3, 3, requires_grad=True)))
    with torch.no_grad():
        bn.bias.add_(1.0)
    with pytest.raises(RuntimeError, match="bias of the BatchNorm before it was modified in place"):
        out.sum().backward()


def test_verified_once_per_kind_of_recipe():
    bn = nn.BatchNorm2d(4)
    for _ in range(2):
        CAReLU()(bn(torch.randn(2, 4, 3, 3, requires_grad=True))).sum().backward()
    assert recompute.VERIFIED == {(("batch_norm", "NativeBatchNormBackward0"), "cpu", torch.float32)}


def test_a_batch_norm_run_twice_before_one_backward():
    # two forwards through the same layers (a siamese pair, gradient accumulation within one graph): each rebuild
    # reads its own forward's values although the running statistics moved in between
    torch.manual_seed(0)
    bn, act = nn.BatchNorm2d(4), CAReLU()
    _spread_scales(nn.Sequential(act))
    reference_bn, reference_act = copy.deepcopy(bn), copy.deepcopy(act)
    reference_act.impl = "reference"
    inputs = [torch.randn(2, 4, 3, 3) for _ in range(2)]
    grads = []
    for layer_bn, layer_act in ((bn, act), (reference_bn, reference_act)):
        first, second = (layer_act(layer_bn(x)) for x in inputs)
        (first.sum() + second.square().sum()).backward()
        grads.append((layer_bn.weight.grad, layer_bn.bias.grad, layer_act.alpha.grad))
    assert first is not None and act(bn(inputs[0])).grad_fn.recipe is not None
    for got, expected in zip(*grads):
        torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("case", ["promotes", "broadcasts"])
def test_a_sum_whose_result_is_not_the_batch_norm_output_shape_or_dtype(case):
    # bf16 BN output + float32 addend is float32; an (N, C, 1, 1) BN output + an (N, C, H, W) addend broadcasts:
    # neither sum can be taken in place into the rebuilt BN output
    torch.manual_seed(0)
    bn, act = nn.BatchNorm2d(4), CAReLU()
    _spread_scales(nn.Sequential(act))
    u = torch.randn(3, 4, 5, 5) if case == "promotes" else torch.randn(3, 4, 1, 1)
    u = (u.bfloat16() if case == "promotes" else u).requires_grad_()
    v = torch.randn(3, 4, 5, 5, requires_grad=True)
    out = act(bn(u) + torch.relu(v))
    assert isinstance(out.grad_fn.recipe, Sum) and out.dtype == torch.float32 and out.shape == v.shape
    got = torch.autograd.grad(out.square().sum(), (u, v, bn.weight, act.alpha))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(ENVIRONMENT_VARIABLE, "0")
        bn_again = copy.deepcopy(bn)
        out = act(bn_again(u) + torch.relu(v))
        expected = torch.autograd.grad(out.square().sum(), (u, v, bn_again.weight, act.alpha))
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e)
