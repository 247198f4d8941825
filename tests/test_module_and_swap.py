"""CAReLU module statistics and repr; swap_activations on real timm and torchvision models."""

from __future__ import annotations

import math
import warnings

import pytest
import timm
import torch
from torch import nn

from caer_lightning import CAReLU, swap_activations
from caer_lightning.activation import HISTOGRAM_BINS, STATISTICS
from caer_lightning.functional import competition


def test_statistics_accumulate_on_device_and_reset():
    act = CAReLU(alpha_init=-3.0, beta_init=0.5)
    batches = [torch.randn(4, 3, 5, 5) + shift for shift in (-1.0, 0.5)]
    act(batches[0])
    assert act.pop_statistics() is None, "statistics are off unless asked for"
    act.track_statistics = True
    for z in batches:
        act(z)
    row = act.pop_statistics()
    totals = dict(zip(STATISTICS, row.tolist()))
    histogram = row[len(STATISTICS):]
    p = torch.cat([competition(z) for z in batches])
    s = 2.0 * torch.tanh(-3.0 * p + 0.5)
    assert totals["groups"] == 8
    assert totals["sum_p"] == pytest.approx(p.sum().item(), rel=1e-5)
    assert totals["sum_p2"] == pytest.approx(p.square().sum().item(), rel=1e-5)
    assert torch.equal(histogram, torch.histc(p, bins=HISTOGRAM_BINS, min=0, max=1))
    assert totals["sum_s"] == pytest.approx(s.sum().item(), rel=1e-5, abs=1e-5)
    assert totals["neg_win"] == (s < 0).sum().item() and 0 < totals["neg_win"] < 8
    assert act.pop_statistics() is None
    act.eval()
    act(batches[0])
    assert act.pop_statistics() is None, "evaluation forwards must not count"


def test_repr_and_parameters():
    act = CAReLU(variant="l1", reduction="channel", K=3.0)
    assert isinstance(act.alpha, nn.Parameter) and act.alpha.shape == (1,) and act.beta.shape == (1,)
    assert act.beta.item() == pytest.approx(math.atanh(1 / 3))
    assert "variant='l1'" in repr(act) and "reduction='channel'" in repr(act) and "K=3" in repr(act)
    assert act.competition(torch.randn(2, 5, 4, 4)).shape == (2, 5)


def test_K_at_most_one_needs_explicit_beta():
    with pytest.raises(ValueError, match=r"K=1.0 cannot reproduce ReLU.*beta_init"):
        CAReLU(K=1.0)
    assert CAReLU(K=1.0, beta_init=0.5).beta.item() == pytest.approx(0.5)


def test_resnet18_swap_keeps_outputs_at_default_init():
    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False, num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = model(x)
    names = swap_activations(model)
    assert len(names) == 17 and names[0] == "act1"
    assert not any(isinstance(m, nn.ReLU) for m in model.modules())
    with torch.no_grad():
        after = model(x)
    assert (after - before).abs().max().item() <= 1e-5
    assert swap_activations(model) == [], "a second swap must be a no-op"
    assert sum(isinstance(m, CAReLU) for m in model.modules()) == 17


def test_targets_by_string_include_exclude_and_factory():
    model = timm.create_model("resnet18", pretrained=False, num_classes=10)
    names = swap_activations(
        model, ("torch.nn.ReLU",), include=r"^layer[12]\.", exclude=r"act2$",
        factory=lambda old: CAReLU(variant="count", reduction="channel"),
    )
    assert names == ["layer1.0.act1", "layer1.1.act1", "layer2.0.act1", "layer2.1.act1"]
    assert model.get_submodule("layer1.0.act1").variant == "count"
    assert isinstance(model.get_submodule("layer1.0.act2"), nn.ReLU)
    assert isinstance(model.get_submodule("act1"), nn.ReLU)


def test_gelu_targets_in_a_vit():
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2)
    names = swap_activations(model, ("torch.nn.GELU",), factory=lambda old: CAReLU(reduction="token"))
    assert names == ["blocks.0.mlp.act", "blocks.1.mlp.act"]
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 1000)


def test_nothing_matched_says_what_was_looked_for():
    model = nn.Sequential(nn.Linear(4, 4), nn.GELU(), nn.Linear(4, 2))
    with pytest.raises(ValueError, match=r"matched no module: targets=\['torch.nn.modules.activation.ReLU'\].*GELU"):
        swap_activations(model)


@pytest.mark.parametrize("targets,message", [
    (("torch.nn.NoSuchAct",), r"targets entry 'torch.nn.NoSuchAct' does not import"),
    (("ReLU",), r"targets entry 'ReLU' does not import"),
    ((int,), r"targets entry .* is not an nn.Module class"),
])
def test_bad_targets(targets, message):
    with pytest.raises(ValueError, match=message):
        swap_activations(nn.Sequential(nn.ReLU()), targets)


def test_bad_regex_names_argument():
    with pytest.raises(ValueError, match=r"exclude='\[' is not a valid regular expression"):
        swap_activations(nn.Sequential(nn.ReLU()), exclude="[")


def test_a_module_registered_at_two_places_gets_one_carelu_per_place():
    shared = nn.ReLU()
    model = nn.Sequential(nn.Linear(3, 3), shared, nn.Sequential(nn.Linear(3, 3), shared))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        names = swap_activations(model)
    assert names == ["1", "2.1"] and model[1] is not model[2][1]
    assert isinstance(model[1], CAReLU) and isinstance(model[2][1], CAReLU)


def test_new_module_lands_on_the_old_modules_device():
    model = nn.Sequential(nn.Linear(3, 3), nn.ReLU()).to(torch.float64).to("meta")
    swap_activations(model)
    assert model[1].alpha.device.type == "meta"


class _FailOnSync(torch.utils._python_dispatch.TorchDispatchMode):
    """Fails on the ops that read a device value back to the host (a sync per call on CUDA)."""

    SYNCING = {"bincount", "nonzero", "_local_scalar_dense", "item", "unique", "_unique", "_unique2",
               "unique_consecutive", "masked_select", "repeat_interleave", "histc", "equal", "is_nonzero"}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__ in self.SYNCING:
            raise AssertionError(f"{func} syncs with the host")
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("reduction", ["sample", "channel"])
def test_tracked_forward_and_backward_never_sync(reduction):
    act = CAReLU(reduction=reduction)
    act.train()
    act.track_statistics = True
    z = torch.randn(4, 3, 5, 5, requires_grad=True)
    with _FailOnSync():
        act(z).sum().backward()
        act(z).sum().backward()
    statistics = act.pop_statistics()
    p = act.competition(z.detach()).reshape(-1)
    expected = torch.histc(p, bins=HISTOGRAM_BINS, min=0, max=1) * 2
    assert torch.equal(statistics[len(STATISTICS):], expected), "the histogram counts each group once per call"


def test_densenet_norm_act_layers_are_refused_as_targets():
    """timm's BatchNormAct2d holds BatchNorm weights and statistics: replacing it would drop them."""
    from timm.layers import BatchNormAct2d

    model = timm.create_model("densenet121", pretrained=False, num_classes=10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"BatchNormAct2d: 'features.norm0' holds parameters or buffers \(weight, "
                                         r"bias, running_mean.*torch\.nn\.ReLU"):
        swap_activations(model, (BatchNormAct2d,))
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)


def test_channel_reduction_on_a_2d_input_names_the_layer():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.Flatten(), nn.Linear(64, 8), nn.ReLU())
    swap_activations(model, factory=lambda old: CAReLU(reduction="channel"))
    with pytest.raises(ValueError, match=r"CAReLU '4': reduction='channel' needs an input with at least 3 dims "
                                         r"\(N, C, \.\.\.\), got shape \(2, 8\); accepted reductions for this "
                                         r"input: sample, token"):
        model(torch.randn(2, 3, 4, 4))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet18", "efficientnet_b0", "mobilenetv3_small_050"])
def test_carelu_as_a_timm_act_layer(name):
    """timm builds activations as act_layer(inplace=True): CAReLU takes the argument (and never works in place)."""
    model = timm.create_model(name, pretrained=False, num_classes=4, act_layer=CAReLU).eval()
    layers = [m for m in model.modules() if isinstance(m, CAReLU)]
    assert len(layers) >= 10
    x = torch.randn(2, 3, 64, 64)
    reference = timm.create_model(name, pretrained=False, num_classes=4, act_layer=nn.ReLU)
    reference.load_state_dict({k: v for k, v in model.state_dict().items() if not k.endswith(("alpha", "beta"))})
    assert CAReLU(inplace=True).beta.item() == pytest.approx(math.atanh(0.5))
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference.eval()(x), rtol=0, atol=1e-5)


def test_repr_on_the_meta_device():
    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(3, 3), CAReLU(variant="l1"))
    assert "CAReLU(variant='l1', reduction='sample', K=2, eps=1e-06)" in repr(model)
    assert "alpha=0, beta=0.5493" in repr(CAReLU())


@pytest.mark.parametrize("argument,value", [("alpha_init", float("nan")), ("beta_init", float("inf")),
                                            ("alpha_init", "0.1")])
def test_non_finite_initial_values_are_refused(argument, value):
    with pytest.raises(ValueError, match=rf"{argument}=.* accepted values: a finite number"):
        CAReLU(**{argument: value})


@pytest.mark.parametrize("variant", ["l1", "count"])
def test_module_competition_uses_the_layers_own_variant_and_eps(variant):
    z = torch.randn(4, 6, generator=torch.Generator().manual_seed(0))
    layer = CAReLU(variant=variant, reduction="sample", eps=0.5)
    expected = competition(z, variant=variant, reduction="sample", eps=0.5)
    torch.testing.assert_close(layer.competition(z), expected)
    if variant == "l1":  # eps reaches the normaliser: Σ relu / (Σ|z| + 0.5)
        torch.testing.assert_close(expected, z.relu().sum(1) / (z.abs().sum(1) + 0.5))


def test_module_runs_the_custom_op_outside_export(monkeypatch):
    from caer_lightning import functional

    calls = []
    op = functional.carelu_op
    monkeypatch.setattr(functional, "carelu_op", lambda *args: calls.append(args[-1]) or op(*args))
    z = torch.randn(2, 3)
    CAReLU(impl="eager")(z)
    CAReLU(impl="reference")(z)
    assert calls == ["eager"]


def test_statistics_row_is_float32_on_the_inputs_device_whatever_the_default_dtype():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        layer = CAReLU()
        layer.train()
        layer.track_statistics = True
        layer(torch.randn(2, 3, dtype=torch.float32))
        assert layer.pop_statistics().dtype == torch.float32
    finally:
        torch.set_default_dtype(previous)
    meta = CAReLU().to("meta")  # a device other than the default one: the row is made where p is
    meta.train()
    meta.track_statistics = True
    meta(torch.randn(2, 3, device="meta"))
    assert meta.pop_statistics().device.type == "meta"


def test_an_unnamed_layer_reports_a_bad_input_without_a_name_even_if_unpickled_from_before_names():
    layer = CAReLU(reduction="channel")
    with pytest.raises(ValueError, match=r"^reduction='channel' needs an input with at least 3 dims"):
        layer(torch.randn(4))
    del layer.site_name  # a layer pickled before site_name existed
    with pytest.raises(ValueError, match=r"^reduction='channel' needs an input with at least 3 dims"):
        layer(torch.randn(4))
    layer.site_name = "blocks.0.act"
    with pytest.raises(ValueError, match=r"^CAReLU 'blocks.0.act': reduction='channel' needs"):
        layer(torch.randn(4))
