"""params="channel": one α, β per channel (shape (C,)) on the op (gradcheck, eager against the reference and
against a by-hand computation), the module (lazy creation, errors), statistics, dashboards, guards, the callback,
checkpoints, the CLI and export."""

from __future__ import annotations

import csv
import itertools
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import nn

from caer_lightning import CAReLU, CAReLUCallback, dashboard, load_checkpoint, statistics, swap_activations
from caer_lightning.activation import LazyCAReLU
from caer_lightning.callbacks.monitor import Monitor
from caer_lightning.functional import carelu, carelu_with_statistics
from caer_lightning.guards import NonFiniteCAReLUError
from caer_lightning.ops import REDUCTIONS, VARIANTS
from caer_lightning.ops.op import carelu_op
from caer_lightning.ops.triton import PER_CHANNEL_REASON, unsupported_reason
from helpers import NUM_CLASSES, SPAWN_TEARDOWN_RERUN, TinyNet, loader, trainer

CASES = list(itertools.product(VARIANTS, REDUCTIONS))
SHAPES = {"sample": (3, 4, 5, 6), "channel": (3, 4, 5, 6), "token": (3, 7, 6)}
K = 2.0


def _input(shape: tuple[int, ...], dtype=torch.float64, seed: int = 0) -> torch.Tensor:
    """Values with a per-row offset from -2 to 2 along dim 0 and 1: p spreads over (0, 1)."""
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn(shape, generator=generator, dtype=torch.float64)
    offset = torch.linspace(-2, 2, shape[0] * shape[1], dtype=torch.float64)
    offset = offset[torch.randperm(offset.numel(), generator=generator)].view(shape[:2] + (1,) * (len(shape) - 2))
    return (z + offset).to(dtype)


def _channels(z: torch.Tensor, reduction: str) -> int:
    return z.shape[-1] if reduction == "token" else z.shape[1]


def _params(count: int, dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """α_c from -2.5 to 1.5 (some channels flip the competition, s < 0) and β_c from -0.35 to 0.55 (no channel with β_c = 0: an all-negative group has p = 0)."""
    alpha = torch.linspace(-2.5, 1.5, count, dtype=dtype).requires_grad_()
    beta = torch.linspace(-0.35, 0.55, count, dtype=dtype).requires_grad_()
    return alpha, beta


def by_hand(z: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor, variant: str, reduction: str,
            eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(output, p, s) written out from the definition, without the library: p per group (its own sums), α, β
    broadcast by hand along dim 1 (sample, channel) or the last dim (token)."""
    x = z.double()
    flat = {"sample": x.flatten(1), "channel": x.flatten(2), "token": x}[reduction]
    if variant == "energy":
        p = flat.relu().square().sum(-1) / (flat.square().sum(-1) + eps)
    elif variant == "l1":
        p = flat.relu().sum(-1) / (flat.abs().sum(-1) + eps)
    else:
        p = (flat > 0).double().sum(-1).detach() / flat.shape[-1]
    p = p.reshape(p.shape + (1,) * (x.dim() - p.dim()))  # kept dims, to broadcast against x
    if reduction == "token":
        a, b = alpha.double(), beta.double()
    else:
        a, b = (v.double().reshape((1, -1) + (1,) * (x.dim() - 2)) for v in (alpha, beta))
    s = K * torch.tanh(a * p + b)
    return torch.relu(s * x), p, s


# --- the op --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("impl", ["eager", "reference"])
@pytest.mark.parametrize("variant,reduction", CASES)
def test_gradcheck_per_channel(impl, variant, reduction):
    z = _input(SHAPES[reduction]).requires_grad_()
    alpha, beta = _params(_channels(z, reduction))
    _, _, s = carelu_with_statistics(z, alpha, beta, variant=variant, reduction=reduction, params="channel")
    assert (s < 0).any() and (s > 0).any(), "the case must exercise both competition outcomes"
    fn = lambda z, a, b: carelu(z, a, b, variant=variant, reduction=reduction, impl=impl, params="channel")
    assert torch.autograd.gradcheck(fn, (z, alpha, beta), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("impl", ["eager", "reference"])
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("reduction,shape", [("sample", (5, 4)), ("token", (6,))])
def test_gradcheck_per_channel_on_inputs_without_more_dims(impl, variant, reduction, shape):
    """(N, C) for sample (each (group, channel) one element) and (C,) for token (one group)."""
    z = (torch.randn(shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64) + 0.3).requires_grad_()
    alpha, beta = _params(shape[-1])
    fn = lambda z, a, b: carelu(z, a, b, variant=variant, reduction=reduction, impl=impl, params="channel")
    assert torch.autograd.gradcheck(fn, (z, alpha, beta), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("impl", ["eager", "reference"])
@pytest.mark.parametrize("variant,reduction", CASES)
def test_values_and_gradients_equal_the_computation_by_hand(impl, variant, reduction):
    z = _input(SHAPES[reduction], torch.float32)
    weights = torch.linspace(-1, 1, z.numel()).view(z.shape)
    alpha, beta = _params(_channels(z, reduction), torch.float32)
    zi = z.clone().requires_grad_()
    out, p, s = carelu_with_statistics(zi, alpha, beta, variant=variant, reduction=reduction, impl=impl,
                                       params="channel")
    (out * weights).sum().backward()
    a, b = (t.detach().double().requires_grad_() for t in (alpha, beta))
    z64 = z.double().requires_grad_()
    expected, expected_p, expected_s = by_hand(z64, a, b, variant, reduction)
    (expected * weights.double()).sum().backward()
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(p.double(), expected_p.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(s.double(), expected_s.detach().expand_as(s), rtol=1e-5, atol=1e-6)
    assert s.shape == expected_s.shape, "s per (group, channel)"
    assert alpha.grad.shape == beta.grad.shape == alpha.shape
    for got, want in ((zi.grad, z64.grad), (alpha.grad, a.grad), (beta.grad, b.grad)):
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("variant,reduction", CASES)
def test_eager_matches_reference(variant, reduction):
    z = _input(SHAPES[reduction], torch.float32)
    outputs = {}
    for impl in ("eager", "reference"):
        zi = z.clone().requires_grad_()
        alpha, beta = _params(_channels(z, reduction), torch.float32)
        out, p, s = carelu_with_statistics(zi, alpha, beta, variant=variant, reduction=reduction, impl=impl,
                                           params="channel")
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        outputs[impl] = (out, p, s, zi.grad, alpha.grad, beta.grad)
    for fast, ref in zip(outputs["eager"], outputs["reference"]):
        torch.testing.assert_close(fast, ref)


def test_alpha_beta_gradients_follow_the_per_channel_formula():
    """docs/spec.md §1: du_{g,c} = K(1 − t²)·Σ_{k in group g, channel c} g·m·z, dL/dα_c = Σ_g du·p, dL/dβ_c = Σ_g du
    (sample reduction: g = the sample, its channel c = the feature map z[n, c])."""
    z = _input((3, 4, 5, 6))
    alpha, beta = _params(4)
    grad = torch.randn(z.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    out = carelu(z, alpha, beta, params="channel", impl="eager")
    out.backward(grad)
    p = (z.relu().square().sum((1, 2, 3)) / (z.square().sum((1, 2, 3)) + 1e-6))[:, None]  # (N, 1)
    t = torch.tanh(alpha.detach()[None, :] * p + beta.detach()[None, :])  # (N, C)
    winner = (K * t[:, :, None, None] * z) > 0
    du = K * (1 - t * t) * (grad * winner * z).sum((2, 3))  # (N, C)
    torch.testing.assert_close(alpha.grad, (du * p).sum(0))
    torch.testing.assert_close(beta.grad, du.sum(0))


@pytest.mark.parametrize("variant,reduction", CASES)
def test_channels_with_the_layers_values_give_the_layers_output_and_summed_gradients(variant, reduction):
    z = _input(SHAPES[reduction], torch.float32)
    count = _channels(z, reduction)
    weights = torch.linspace(-1, 1, z.numel()).view(z.shape)
    results = {}
    for params, size in (("layer", 1), ("channel", count)):
        zi = z.clone().requires_grad_()
        alpha = torch.full((size,), -1.5, requires_grad=True)
        beta = torch.full((size,), 0.4, requires_grad=True)
        out = carelu(zi, alpha, beta, variant=variant, reduction=reduction, params=params)
        (out * weights).sum().backward()
        results[params] = (out, zi.grad, alpha.grad.sum(), beta.grad.sum())
    layer, channel = results["layer"], results["channel"]
    assert torch.equal(channel[0], layer[0]), "the same s for every entry: the same output"
    for got, want in zip(channel[1:], layer[1:]):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_per_channel_inputs_run_eager_whatever_impl_says():
    """The Triton kernels take one α, β per layer: `unsupported_reason` says so for every input, impl='triton'
    refuses with that reason, and the op itself runs eager ops when given a channel dim."""
    z = _input((2, 3, 4, 4), torch.float32)
    alpha, beta = _params(3, torch.float32)
    assert unsupported_reason(z, [1, 2, 3], per_channel=True) == PER_CHANNEL_REASON
    with pytest.raises(ValueError, match=r"impl='triton' cannot take this input: per-channel alpha, beta "
                                         r"\(params='channel'\): the Triton kernels take one alpha, beta per layer"):
        carelu(z, alpha, beta, params="channel", impl="triton")
    eager = carelu_op(z, alpha, beta, K, "energy", [1, 2, 3], 1e-6, "eager", 1)
    routed = carelu_op(z, alpha, beta, K, "energy", [1, 2, 3], 1e-6, "triton", 1)
    for a, b in zip(eager, routed):
        assert torch.equal(a, b)


@pytest.mark.parametrize("value,message", [
    (torch.zeros(1), r"alpha of shape \(1,\) is not supported with params='channel': an input of shape "
                     r"\(2, 3, 4\) has 3 channels \(dim 1 for reduction='sample'\); accepted: a tensor of shape \(3,\)"),
    (0.5, r"alpha=0.5 is not supported with params='channel'"),
])
def test_functional_refuses_parameters_of_another_size(value, message):
    with pytest.raises(ValueError, match=message):
        carelu(torch.randn(2, 3, 4), value, torch.zeros(3), params="channel")
    with pytest.raises(ValueError, match=r"^params='bad' is not supported; accepted values: layer, channel$"):
        carelu(torch.randn(2, 3, 4), 0.0, 0.5, params="bad")
    with pytest.raises(ValueError, match=r"alpha of shape \(3,\) is not supported; accepted shapes: \(\) or \(1,\)"):
        carelu(torch.randn(2, 3, 4), torch.zeros(3), torch.zeros(3))  # params="layer"


def test_create_graph_through_per_channel_parameters():
    """A gradient penalty differentiates the gradient: the reference path carries the channel axis too."""
    z = _input((2, 3, 4), torch.float64).requires_grad_()
    alpha, beta = _params(3)
    fn = lambda z, a, b: carelu(z, a, b, params="channel", impl="eager")
    assert torch.autograd.gradgradcheck(fn, (z, alpha, beta), eps=1e-6, atol=1e-4)


# --- the module -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("reduction,shape,channels", [("sample", (2, 5, 3, 3), 5), ("channel", (2, 5, 3, 3), 5),
                                                      ("token", (2, 4, 7), 7), ("sample", (3, 6), 6)])
def test_lazy_parameters_are_created_from_the_first_input(reduction, shape, channels):
    layer = CAReLU(reduction=reduction, params="channel", alpha_init=0.25, beta_init=-0.5)
    assert type(layer) is LazyCAReLU and isinstance(layer, CAReLU) and layer.num_channels is None
    alpha, beta = layer.alpha, layer.beta
    assert "num_channels=None" in repr(layer)
    layer(torch.randn(shape))
    assert type(layer) is CAReLU and layer.num_channels == channels
    assert layer.alpha is alpha and layer.beta is beta, "the parameter objects an optimizer holds"
    assert torch.equal(layer.alpha, torch.full((channels,), 0.25))
    assert torch.equal(layer.beta, torch.full((channels,), -0.5))
    assert f"params='channel', num_channels={channels}, alpha mean=0.25, beta mean=-0.5" in repr(layer)


@pytest.mark.parametrize("optimizer", [torch.optim.SGD, torch.optim.Adam])
def test_an_optimizer_built_before_the_first_forward_trains_them(optimizer):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), CAReLU(params="channel"), nn.Conv2d(4, 2, 1))
    opt = optimizer(model.parameters(), lr=0.1)
    x = torch.randn(8, 3, 6, 6)
    for _ in range(3):
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()
    alpha = model[1].alpha.detach()
    assert alpha.shape == (4,) and not torch.equal(alpha, torch.zeros(4)), "alpha trained"
    assert len(set(alpha.tolist())) == 4, "each channel its own value"


def test_a_state_dict_creates_them_and_num_channels_creates_them_at_once():
    trained = CAReLU(params="channel", num_channels=3)
    assert type(trained) is CAReLU and trained.alpha.shape == (3,)
    with torch.no_grad():
        trained.alpha.copy_(torch.tensor([0.1, 0.2, 0.3]))
    fresh = CAReLU(params="channel")
    fresh.load_state_dict(trained.state_dict())
    assert torch.equal(fresh.alpha, trained.alpha) and fresh.num_channels == 3
    z = torch.randn(2, 3, 4)
    assert torch.equal(fresh(z), trained(z))


def test_lazy_parameters_take_dtype_device_and_frozen_flag_set_before_they_exist():
    layer = CAReLU(params="channel").double().requires_grad_(False)
    layer(torch.randn(2, 3, 4, dtype=torch.float64))
    assert layer.alpha.dtype == torch.float64 and not layer.alpha.requires_grad and not layer.beta.requires_grad


def test_module_errors_name_the_argument_the_layer_and_both_counts():
    with pytest.raises(ValueError, match=r"^params='bad' is not supported; accepted values: layer, channel$"):
        CAReLU(params="bad")
    with pytest.raises(ValueError, match=r"^num_channels=4 is not supported with params='layer'"):
        CAReLU(num_channels=4)
    with pytest.raises(ValueError, match=r"^num_channels=0 is not supported; accepted values: None .* or an int >= 1"):
        CAReLU(params="channel", num_channels=0)
    with pytest.raises(ValueError, match=r"^impl='triton' is not supported with params='channel'"):
        CAReLU(params="channel", impl="triton")
    layer = CAReLU(params="channel", num_channels=4)
    layer.site_name = "blocks.1.act"
    with pytest.raises(ValueError, match=r"^CAReLU 'blocks.1.act': params='channel' with num_channels=4 \(alpha, "
                                         r"beta of shape \(4,\)\) cannot take an input with 6 channels \(shape "
                                         r"\(2, 6, 3\), channel dim 1 for reduction='sample'\)"):
        layer(torch.randn(2, 6, 3))
    token = CAReLU(params="channel", reduction="token")
    token.site_name = "mlp.act"
    with pytest.raises(ValueError, match=r"^CAReLU 'mlp.act': reduction='token' needs an input with at least 1"):
        token(torch.tensor(1.0))
    token(torch.randn(2, 5))
    with pytest.raises(ValueError, match=r"num_channels=5 .* cannot take an input with 3 channels .* channel dim 1 "
                                         r"for reduction='token'"):
        token(torch.randn(5, 3))


def test_statistics_count_each_group_and_channel():
    """Σp, Σs, neg-win, Σ|α_c·p + β_c| over every (group, channel), recomputed by hand."""
    layer = CAReLU(params="channel", num_channels=3)
    with torch.no_grad():
        layer.alpha.copy_(torch.tensor([-3.0, 0.5, 2.0]))
        layer.beta.copy_(torch.tensor([0.5, -0.2, 0.1]))
    layer.train()
    layer.track_statistics = True
    z = _input((4, 3, 5), torch.float32)
    layer(z)
    row = layer.pop_statistics()
    p = z.relu().square().sum((1, 2)) / (z.square().sum((1, 2)) + 1e-6)  # (N,)
    u = layer.alpha.detach()[None, :] * p[:, None] + layer.beta.detach()[None, :]  # (N, C)
    s = K * torch.tanh(u)
    assert statistics.column(row, "groups").item() == 12
    torch.testing.assert_close(statistics.column(row, "sum_p"), 3 * p.sum())
    torch.testing.assert_close(statistics.column(row, "sum_p2"), 3 * p.square().sum())
    torch.testing.assert_close(statistics.column(row, "sum_s"), s.sum())
    assert statistics.column(row, "neg_win").item() == (s < 0).sum().item() and 0 < (s < 0).sum() < 12
    torch.testing.assert_close(statistics.column(row, "sum_saturation"), u.abs().sum())
    assert statistics.histogram(row).sum().item() == 12


# --- dashboards and guards ------------------------------------------------------------------------------------


def test_dashboard_parameters_are_the_mean_and_the_spread_over_the_channels():
    layer, channel, lazy = CAReLU(), CAReLU(params="channel", num_channels=4), CAReLU(params="channel")
    values = torch.tensor([0.5, -1.0, 2.0, 0.25])
    with torch.no_grad():
        channel.alpha.copy_(values)
        channel.beta.copy_(values * 3)
        layer.alpha.fill_(0.7)
    table = dashboard.parameters([layer, channel, lazy])
    assert dashboard.layouts([layer, channel, lazy]) == ["layer", "channel", dashboard.UNCREATED]
    mean, std = values.mean().item(), math.sqrt(((values - values.mean()) ** 2).mean().item())
    torch.testing.assert_close(table[1], torch.tensor([mean, 3 * mean, std, 3 * std, 1.0]))
    torch.testing.assert_close(table[0], torch.tensor([0.7, layer.beta.item(), 0.0, 0.0, 1.0]))
    assert table[2, :4].isnan().all() and table[2, 4] == 1.0, "not created yet: no values, nothing non-finite"
    names = ["a", "b", "c"]
    metrics = dashboard.scalars(names, statistics.empty_row().expand(3, -1), table, dashboard.layouts([layer, channel, lazy]))
    assert metrics == pytest.approx({
        "carelu/a/alpha": 0.7, "carelu/a/beta": layer.beta.item(),
        "carelu/b/alpha": mean, "carelu/b/beta": 3 * mean, "carelu/b/alpha_std": std, "carelu/b/beta_std": 3 * std,
    })
    layout = dashboard.custom_scalars_layout(names, per_channel=["b"])["CAReLU"]
    assert layout["alpha_std"] == ["Multiline", ["carelu/b/alpha_std"]] and layout["alpha"][1][2] == "carelu/c/alpha"
    assert "alpha_std" not in dashboard.custom_scalars_layout(names)["CAReLU"]


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_a_non_finite_value_in_one_channel_stops_the_run(bad):
    layer = CAReLU(params="channel", num_channels=5)
    monitor = Monitor()
    monitor.start({"act": layer}, every=1)
    monitor.begin_step(0)
    layer(torch.randn(2, 5, 3))
    with torch.no_grad():
        layer.beta[3] = bad
    with pytest.raises(NonFiniteCAReLUError, match=r"in act \(alpha=0, beta=(nan|inf)\)"):
        monitor.end_step(1, lambda table: table, True, lambda metrics, at: None)


def test_a_per_channel_layer_that_never_ran_is_left_out_of_dashboards_and_guards():
    ran, idle = CAReLU(params="channel"), CAReLU(params="channel")
    monitor = Monitor()
    monitor.start({"ran": ran, "idle": idle}, every=1)
    monitor.begin_step(0)
    ran(torch.randn(2, 3, 4))
    logged = []
    monitor.end_step(1, lambda table: table, True, lambda metrics, at: logged.append(metrics))
    assert {k for k in logged[0] if k.endswith(("alpha", "beta", "_std"))} == {
        "carelu/ran/alpha", "carelu/ran/beta", "carelu/ran/alpha_std", "carelu/ran/beta_std"}
    assert "| idle | – | – | – | – | – |" in monitor.summary()


# --- training with the callback -------------------------------------------------------------------------------


def _trained_channels(model: nn.Module) -> dict[str, CAReLU]:
    return {name: m for name, m in model.named_modules() if isinstance(m, CAReLU)}


def test_callback_trains_per_channel_parameters_on_a_cnn_and_load_checkpoint_rebuilds_them(tmp_path):
    model = TinyNet()
    logger = CSVLogger(tmp_path, name="run")
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "checkpoints", filename="last")
    callback = CAReLUCallback(params="channel", alpha_init=-1.0, lr_scale=1.0, log_every_n_steps=2)
    trainer(callbacks=[callback, checkpoints], logger=logger, max_steps=4, log_every_n_steps=2,
            enable_checkpointing=True).fit(model, loader())
    layers = _trained_channels(model)
    assert list(layers) == ["net.2", "net.5"]
    for layer in layers.values():
        assert type(layer) is CAReLU and layer.alpha.shape == layer.beta.shape == (8,)
        assert not torch.equal(layer.alpha.detach(), torch.full((8,), -1.0)), "alpha trained"
        assert layer.alpha.detach().std() > 0 and layer.beta.detach().std() > 0, "the channels differ"
    group = next(g for g in model.trainer.optimizers[0].param_groups if g.get("name") == "carelu")
    assert [id(p) for p in group["params"]] == [id(p) for m in layers.values() for p in (m.alpha, m.beta)]
    with open(f"{logger.log_dir}/metrics.csv") as handle:
        rows = [r for r in csv.DictReader(handle) if r.get("carelu/net.2/alpha_std")]
    assert [r["step"] for r in rows] == ["0", "2"] and {"carelu/net.5/alpha_std", "carelu/net.5/beta_std"} <= set(rows[0])
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    (record,) = [s for k, s in state["callbacks"].items() if k.startswith("CAReLUCallback")]
    assert record["config"]["params"] == "channel"
    assert record["layers"]["net.2"]["params"] == "channel" and record["layers"]["net.2"]["num_channels"] == 8
    loaded = load_checkpoint(TinyNet, tmp_path / "checkpoints" / "last.ckpt").eval()
    for name, layer in _trained_channels(loaded).items():
        assert not layer.has_uninitialized_params() and layer.num_channels == 8, "created from the record"
        assert torch.equal(layer.alpha, layers[name].alpha) and torch.equal(layer.beta, layers[name].beta)
    x = loader(seed=3).dataset.tensors[0]
    with torch.no_grad():
        assert torch.equal(loaded(x), model.eval()(x))
    assert {type(layer) for layer in _trained_channels(loaded).values()} == {CAReLU}


def test_logged_mean_and_spread_are_recomputed_from_alpha_beta(tmp_path):
    model = TinyNet()
    logger = CSVLogger(tmp_path, name="run")
    trainer(callbacks=[CAReLUCallback(params="channel", log_every_n_steps=1)], logger=logger, max_steps=1,
            log_every_n_steps=1).fit(model, loader())  # logged after the one step: the final α, β
    with open(f"{logger.log_dir}/metrics.csv") as handle:
        row = next(r for r in csv.DictReader(handle) if r.get("carelu/net.2/alpha_std"))
    for name, layer in _trained_channels(model).items():
        for quantity in ("alpha", "beta"):
            values = getattr(layer, quantity).detach().double()
            assert float(row[f"carelu/{name}/{quantity}"]) == pytest.approx(values.mean().item(), rel=1e-5)
            spread = (values - values.mean()).square().mean().sqrt().item()
            assert float(row[f"carelu/{name}/{quantity}_std"]) == pytest.approx(spread, rel=1e-4, abs=1e-9)
        assert float(row[f"carelu/{name}/beta_std"]) > 0, "one step moved the channels apart"


class TokenMLP(TinyNet):
    """Tokens through a Transformer-style MLP (Linear-ReLU-Linear per token), mean-pooled to classes."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(3, 16), nn.ReLU(), nn.Linear(16, 8))
        self.head = nn.Linear(8, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.flatten(2).transpose(1, 2)  # (N, 64 positions, 3 features)
        return self.head(self.net(tokens).mean(1))


def test_callback_trains_per_channel_parameters_with_token_reduction():
    model = TokenMLP()
    trainer(callbacks=[CAReLUCallback(params="channel", reduction="token", alpha_init=0.5, lr_scale=1.0)],
            max_steps=4).fit(model, loader())
    (layer,) = _trained_channels(model).values()
    assert layer.alpha.shape == (16,), "one per feature of the (..., C) input"
    assert layer.alpha.detach().std() > 0 and layer.beta.detach().std() > 0
    assert not torch.equal(layer.alpha.detach(), torch.full((16,), 0.5))


def test_a_strategy_that_wraps_the_model_first_gets_them_from_example_input_array_or_says_what_to_do():
    """DDP (and FSDP, DeepSpeed) wrap the model after the callback's setup and before any forward: setup runs the
    module on its example_input_array, in eval mode without gradients, or stops saying what to do."""
    from lightning.pytorch.strategies import DDPStrategy

    def setup(model):
        callback = CAReLUCallback(params="channel")
        run = trainer(strategy=DDPStrategy(process_group_backend="gloo"), callbacks=[callback])
        callback.setup(run, model, "fit")  # what Trainer.fit calls before the strategy wraps the model
        return _trained_channels(model)

    with pytest.raises(MisconfigurationException, match=(
        r"CAReLUCallback\(params='channel'\): DDPStrategy wraps the model before its first forward, and the "
        r"per-channel alpha, beta of \['net.2', 'net.5'\] are created at that forward .* set `example_input_array`")):
        setup(TinyNet())
    model = TinyNet()
    model.example_input_array = torch.randn(2, 3, 8, 8)
    model.net[1].eval()  # a frozen BatchNorm stays in eval mode
    before = {name: buffer.clone() for name, buffer in model.named_buffers()}
    layers = setup(model)
    assert [type(m) for m in layers.values()] == [CAReLU, CAReLU]
    assert [m.alpha.shape for m in layers.values()] == [(8,), (8,)]
    assert model.training and model.net[4].training and not model.net[1].training, "modes as they were"
    for name, buffer in model.named_buffers():
        assert torch.equal(buffer, before[name]), f"{name}: the forward ran in eval mode"
    assert all(p.grad is None for p in model.parameters())
    partial = TinyNet()
    partial.example_input_array = torch.randn(2, 3, 8, 8)
    partial.extra = nn.ReLU()  # a layer the forward never reaches
    with pytest.raises(MisconfigurationException, match=r"the forward on example_input_array did not run \['extra'\]"):
        setup(partial)


@pytest.mark.slow
@SPAWN_TEARDOWN_RERUN
def test_ddp_spawn_trains_per_channel_parameters_alike_on_both_ranks():
    model = TinyNet()
    model.example_input_array = torch.randn(2, 3, 8, 8)
    trainer(devices=2, strategy="ddp_spawn", max_steps=3,
            callbacks=[CAReLUCallback(params="channel", lr_scale=1.0)]).fit(model, loader())
    layers = _trained_channels(model)  # the main process's model, given the workers' trained weights
    assert [m.alpha.shape for m in layers.values()] == [(8,), (8,)]
    assert all(m.alpha.detach().std() > 0 for m in layers.values())


def test_per_channel_from_the_cli(tmp_path):
    from caer_lightning.cli import build_cli

    config = Path(__file__).resolve().parent.parent / "configs" / "quickstart.yaml"
    (tmp_path / "params.yaml").write_text(
        "trainer:\n  logger: false\n  callbacks:\n    - class_path: caer_lightning.CAReLUCallback\n"
        "      init_args:\n        params: channel\n"
    )
    cli = build_cli(["--config", str(config), "--config", str(tmp_path / "params.yaml")], run=False)
    (callback,) = [c for c in cli.trainer.callbacks if isinstance(c, CAReLUCallback)]
    assert callback.config["params"] == "channel"
    (tmp_path / "bad.yaml").write_text((tmp_path / "params.yaml").read_text().replace("channel", "bad"))
    with pytest.raises(ValueError, match=r"params='bad' is not supported; accepted values: layer, channel"):
        build_cli(["--config", str(config), "--config", str(tmp_path / "bad.yaml")], run=False)


def test_shipped_per_channel_config_is_the_quickstart_with_params_channel():
    import yaml

    root = Path(__file__).resolve().parent.parent / "configs"
    quickstart = yaml.safe_load((root / "quickstart.yaml").read_text())
    channel = yaml.safe_load((root / "digits" / "resnet18_carelu_channel.yaml").read_text())
    callback = channel["trainer"]["callbacks"][0]
    assert callback["init_args"].pop("params") == "channel"
    for config in (quickstart, channel):  # where runs are written
        config["trainer"].pop("default_root_dir")
        config["trainer"]["logger"]["init_args"].pop("name")
    assert channel == quickstart


# --- export -----------------------------------------------------------------------------------------------------


def test_torch_export_round_trip_with_per_channel_parameters(tmp_path):
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), CAReLU(params="channel"), nn.Flatten(2),
                          CAReLU(params="channel", reduction="token", variant="l1")).eval()
    x = torch.randn(5, 3, 6, 6)
    model(x)  # creates α, β: (4,) and (36,)
    with torch.no_grad():
        for layer in (model[1], model[3]):
            layer.alpha.copy_(torch.linspace(-1.5, 1.0, layer.num_channels))
            layer.beta.copy_(torch.linspace(0.6, -0.2, layer.num_channels))
    program = torch.export.export(model, (x,))
    torch.export.save(program, tmp_path / "m.pt2")
    loaded = torch.export.load(tmp_path / "m.pt2")
    torch.testing.assert_close(loaded.module()(x), model(x))
    assert "caer_lightning" not in str(program.graph), "the exported graph is plain ATen ops"


def test_hugging_face_round_trip_of_per_channel_layers(tmp_path):
    """config.json records the layers when they are swapped, before their first forward sized them: from_pretrained
    sizes them from the saved weights."""
    transformers = pytest.importorskip("transformers")
    from caer_lightning.pretrained import from_pretrained

    config = transformers.BertConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=16, num_labels=2,
    )
    model = transformers.BertForSequenceClassification(config).eval()
    names = swap_activations(model, ("torch.nn.GELU",), factory=lambda old: CAReLU(reduction="token", params="channel"))
    ids = torch.randint(0, 50, (3, 8), generator=torch.Generator().manual_seed(0))
    model(ids)  # creates α, β: one per intermediate feature
    for name in names:
        torch.nn.init.normal_(model.get_submodule(name).alpha)
    model.save_pretrained(tmp_path)
    loaded = from_pretrained(transformers.BertForSequenceClassification, tmp_path).eval()
    assert [loaded.get_submodule(n).num_channels for n in names] == [32, 32]
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)


def test_a_checkpoint_from_before_params_resumes_without_a_configuration_warning():
    import warnings

    callback = CAReLUCallback()
    state = callback.state_dict()
    del state["config"]["params"]  # what checkpoints written before params existed hold
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        callback.load_state_dict(state)
    with pytest.warns(UserWarning, match=r"the checkpoint was made with .*'params': 'channel'"):
        callback.load_state_dict({**state, "config": {**state["config"], "params": "channel"}})


def test_ab_recorder_and_report_title_with_per_channel_layers(tmp_path):
    """`caer ab`'s recorder: the parameters counted once per-channel α, β exist, α, β as their means; the report
    names params=channel as a setting of the CAReLU arm."""
    import json

    from caer_lightning import runner

    model = TinyNet()
    recorder = runner.RunRecorder(str(tmp_path / "metrics.json"))
    trainer(callbacks=[CAReLUCallback(params="channel"), recorder], max_steps=2).fit(model, loader())
    record = json.loads((tmp_path / "metrics.json").read_text())
    assert record["params"] == sum(p.numel() for p in model.parameters()) == sum(
        p.numel() for p in TinyNet().parameters()) + 2 * 2 * 8
    (epoch,) = record["carelu"]
    for name, layer in _trained_channels(model).items():
        assert epoch[name] == pytest.approx([layer.alpha.mean().item(), layer.beta.mean().item()])
    base = {"trainer": {"callbacks": [{"class_path": runner.CALLBACK, "init_args": {"params": "channel"}}]}}
    assert runner.carelu_title(base) == "CAReLU, `params=channel`"


def test_load_checkpoint_gives_each_layer_its_recorded_layout(tmp_path):
    """Layers swapped per channel before a per-layer callback keep their layout; the checkpoint records it per
    layer, and load_checkpoint lays the rebuilt layers out so (the callback's own config would give (1,))."""
    model = TinyNet()
    swap_activations(model, factory=lambda old: CAReLU(params="channel", num_channels=8, alpha_init=0.3))
    checkpoints = ModelCheckpoint(dirpath=tmp_path, filename="last")
    with pytest.warns(UserWarning, match=r"configured otherwise, which keep their configuration: net\.2 \(.*"
                                         r"params='channel'\)"):
        trainer(callbacks=[CAReLUCallback(lr_scale=1.0), checkpoints], max_steps=2,
                enable_checkpointing=True).fit(model, loader())
    loaded = load_checkpoint(TinyNet, tmp_path / "last.ckpt")
    for name, layer in _trained_channels(loaded).items():
        assert layer.params == "channel" and layer.alpha.shape == (8,)
        assert torch.equal(layer.alpha, model.get_submodule(name).alpha)
    with pytest.raises(ValueError, match=r"cannot give a params='layer' CAReLU per-channel alpha, beta of unknown "
                                         r"size; pass num_channels"):
        CAReLU().set_layout("channel", None)
    layer = CAReLU(params="channel", num_channels=3)
    layer.set_layout("layer", None)
    assert layer.params == "layer" and layer.alpha.shape == (1,) and layer.num_channels is None


@pytest.mark.slow
def test_compiled_per_channel_model_matches_eager_in_outputs_and_gradients():
    """torch.compile(fullgraph=True) traces the op with a channel dim (its fake implementation gives tanh per
    (group, channel) and (2, C) gradients)."""
    def model() -> nn.Sequential:
        torch.manual_seed(0)
        net = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), CAReLU(params="channel", num_channels=8, alpha_init=0.5),
            nn.Conv2d(8, 8, 3, padding=1), CAReLU(variant="l1", reduction="channel", params="channel", num_channels=8),
            nn.Flatten(2), CAReLU(reduction="token", params="channel", num_channels=64, alpha_init=-1.0),
            nn.Flatten(), nn.Linear(8 * 64, 4),
        )
        with torch.no_grad():
            for layer in (net[1], net[3], net[5]):
                layer.alpha.add_(torch.linspace(-0.5, 0.5, layer.num_channels))
        return net

    eager, compiled = model(), model()
    run = torch.compile(compiled, fullgraph=True)
    x = torch.randn(4, 3, 8, 8)
    for fn in (eager, run):
        fn(x).square().sum().backward()
    torch.testing.assert_close(run(x), eager(x))
    for (name, expected), (_, got) in zip(eager.named_parameters(), compiled.named_parameters()):
        torch.testing.assert_close(got.grad, expected.grad, msg=name)
    assert all(compiled[i].alpha.grad.abs().sum() > 0 for i in (1, 3, 5)), "the gradients reach every layer"
    rows = {}
    for name, fn, net in (("eager", eager, eager), ("compiled", run, compiled)):  # s per (group, channel) traced
        for layer in (net[1], net[3], net[5]):
            layer.track_statistics = True
        fn(x)
        rows[name] = torch.stack([net[i].pop_statistics() for i in (1, 3, 5)])
    torch.testing.assert_close(rows["compiled"], rows["eager"])
    assert statistics.column(rows["eager"], "groups").tolist() == [4 * 8, 4 * 8, 4 * 8 * 64]


def test_a_swap_refused_on_a_sharded_model_says_per_channel_layers_need_num_channels(monkeypatch):
    from caer_lightning import _compat
    from caer_lightning.callbacks.layer_swap import LayerSwap, SwapRefused

    monkeypatch.setattr(_compat, "sharded_modules", lambda model: [""])  # as if fully_shard had run
    swap = LayerSwap(("torch.nn.ReLU",), activation_config={"params": "channel"})
    with pytest.raises(SwapRefused, match=r"factory=lambda old: CAReLU\(params='channel'\)\) on the model before "
                                          r"fully_shard.* With params='channel', give each CAReLU num_channels=C"):
        swap.swap(nn.Sequential(nn.Linear(2, 2), nn.ReLU()))


@pytest.mark.parametrize("averaging", ["ema", pytest.param("swa", marks=pytest.mark.slow)])
@pytest.mark.parametrize("first", [True, False], ids=["averaging-first", "averaging-last"])
def test_weight_averaging_copies_get_the_per_channel_parameters_the_model_created(averaging, first):
    """The averaged copy never runs a forward before it is averaged into: after the model's first forward its
    lazy layers get the model's channel counts, then average like any weight."""
    from lightning.pytorch.callbacks import EMAWeightAveraging, StochasticWeightAveraging

    model = TinyNet()
    if averaging == "ema":
        averager = EMAWeightAveraging(decay=0.5)
    else:  # averaged from the end of epoch 1 on: at the start of epochs 1 and 2
        averager = StochasticWeightAveraging(swa_lrs=0.05, swa_epoch_start=2, annealing_epochs=1)
    callback = CAReLUCallback(params="channel", lr_scale=1.0)
    trainer(callbacks=[averager, callback] if first else [callback, averager], max_epochs=3).fit(model, loader())
    copy = averager._average_model
    copy = getattr(copy, "module", copy)  # EMA's AveragedModel wraps it
    for layer in _trained_channels(copy).values():
        assert layer.alpha.shape == (8,) and layer.alpha.std() > 0, "averaged from the trained channels"
