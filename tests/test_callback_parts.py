"""Each part of CAReLUCallback used alone, without a Trainer: the swap and the layers it owns, the optimizer group
and its ratio, the monitor (statistics, guards, scalars), the heat maps' budget, the call-place probe."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from caer_lightning import CAReLU, swap_activations
from caer_lightning.callbacks import heat_maps as heat_maps_module
from caer_lightning.callbacks.call_probe import CallProbe
from caer_lightning.callbacks.heat_maps import HeatMaps
from caer_lightning.callbacks.layer_swap import LayerSwap, SwapRefused
from caer_lightning.callbacks.lr_group import CAReLUGroup
from caer_lightning.callbacks.monitor import Monitor
from caer_lightning.functional import competition
from caer_lightning.guards import NonFiniteCAReLUError
from caer_lightning.lr_policy import SGD_LR_SCALE


def net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                         nn.Flatten(), nn.Linear(4 * 8 * 8, 2))


def test_layer_swap_owns_what_it_swaps_and_leaves_others_layers():
    model = net()
    first = LayerSwap(("torch.nn.ReLU",), include=r"^1$", activation_config=dict(K=3.0), impl="eager")
    assert first.swap(model) == ["1"] and first.names == ["1"]
    assert first.layers["1"].K == 3.0 and first.layers["1"].impl == "eager"
    assert first.owned == {id(model[1])} and first.config["include"] == r"^1$" and first.config["K"] == 3.0
    second = LayerSwap(("torch.nn.ReLU",))
    assert second.swap(model, others=first.owned) == ["3"] and second.names == ["3"]
    third = LayerSwap(("torch.nn.ReLU",))
    with pytest.raises(SwapRefused, match="matched no module: every CAReLU of the model .* belongs to another"):
        third.swap(model, others=first.owned | second.owned)
    assert third.swap(model, others=first.owned | second.owned, final=False) == [] and third.names == []


def test_layer_swap_claims_selected_layers_of_a_model_swapped_beforehand():
    model = net()
    swap_activations(model)
    claimer = LayerSwap(("torch.nn.ReLU",), exclude=r"^3$")
    assert claimer.swap(model) == [] and claimer.names == ["1"]


def test_layer_swap_freezes_new_layers_in_frozen_parts():
    model = nn.Sequential(nn.Sequential(nn.Linear(2, 2), nn.ReLU()), nn.Sequential(nn.Linear(2, 2), nn.ReLU()))
    model[0].requires_grad_(False)
    swap = LayerSwap(("torch.nn.ReLU",))
    swap.swap(model)
    assert swap.frozen == ["0.1"] and not model[0][1].alpha.requires_grad and model[1][1].alpha.requires_grad
    swap.report_frozen()
    assert swap.frozen == []


def test_layer_swap_freezes_an_activation_of_the_model_root_in_a_frozen_model():
    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU())  # the activation's enclosing module is the root itself
    model.requires_grad_(False)
    swap = LayerSwap(("torch.nn.ReLU",))
    swap.swap(model)
    assert swap.frozen == ["1"] and not model[1].alpha.requires_grad and not model[1].beta.requires_grad


def test_optimizer_group_finds_the_optimizer_of_the_root_around_a_top_level_activation():
    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)  # built before the swap (LightningCLI): no alpha in it
    swap_activations(model)
    layers = {n: m for n, m in model.named_modules() if isinstance(m, CAReLU)}
    group = CAReLUGroup()
    group.attach([optimizer], [], model, layers)
    assert [held for held, _ in group.groups] == [optimizer] and model[1].alpha.requires_grad
    assert optimizer.param_groups[-1]["params"] == [model[1].alpha, model[1].beta]


def test_optimizer_group_alone_keeps_its_ratio_under_a_floor():
    model = net()
    swap_activations(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=4, eta_min=0.05)
    group = CAReLUGroup()
    layers = {n: m for n, m in model.named_modules() if isinstance(m, CAReLU)}
    group.attach([optimizer], [scheduler], model, layers)
    (held, new), = group.groups
    assert held is optimizer and optimizer.param_groups[new.index]["name"] == "carelu"
    assert optimizer.param_groups[new.index]["lr"] == pytest.approx(SGD_LR_SCALE * 0.1)
    for _ in range(3):
        optimizer.step()
        scheduler.step()
        group.keep_ratios()
        source, carelu = (optimizer.param_groups[i]["lr"] for i in (0, new.index))
        assert carelu == pytest.approx(SGD_LR_SCALE * source) and source > 0.05
    assert group.config == dict(lr=None, lr_scale=None, weight_decay=0.0)


def test_optimizer_group_keeps_its_ratio_to_the_group_alpha_came_from_not_group_zero():
    model = net()
    swap_activations(model)
    layers = {n: m for n, m in model.named_modules() if isinstance(m, CAReLU)}
    carelu = [p for m in layers.values() for p in (m.alpha, m.beta)]
    head = list(model[5].parameters())
    rest = [p for p in model.parameters() if all(p is not q for q in head + carelu)]
    optimizer = torch.optim.SGD([{"params": head, "lr": 0.1}, {"params": rest + carelu, "lr": 0.01}])
    group = CAReLUGroup()
    group.attach([optimizer], [], model, layers)
    (_, new), = group.groups
    assert new.source == 1 and optimizer.param_groups[new.index]["lr"] == pytest.approx(SGD_LR_SCALE * 0.01)
    optimizer.param_groups[0]["lr"], optimizer.param_groups[1]["lr"] = 0.3, 0.002  # a scheduler moved both
    group.keep_ratios()
    assert optimizer.param_groups[new.index]["lr"] == pytest.approx(SGD_LR_SCALE * 0.002)


def test_optimizer_group_goes_to_the_optimizer_holding_alpha_with_its_weight_decay():
    model = net()
    swap_activations(model)
    layers = {n: m for n, m in model.named_modules() if isinstance(m, CAReLU)}
    carelu = [p for m in layers.values() for p in (m.alpha, m.beta)]
    weights = torch.optim.SGD([p for p in model.parameters() if all(p is not q for q in carelu)], lr=0.1)
    own = torch.optim.Adam(carelu, lr=0.01)
    group = CAReLUGroup(weight_decay=0.002)
    group.attach([weights, own], [], model, layers)
    assert [held for held, _ in group.groups] == [own] and len(weights.param_groups) == 1
    assert own.param_groups[-1]["weight_decay"] == 0.002 and own.param_groups[-1]["lr"] == pytest.approx(0.01)


def test_optimizer_group_leaves_unheld_parts_frozen():
    model = nn.Sequential(nn.Sequential(nn.Linear(2, 2), nn.ReLU()), nn.Sequential(nn.Linear(2, 2), nn.ReLU()),
                          nn.Linear(2, 2))
    swap_activations(model)
    optimizer = torch.optim.SGD(model[2].parameters(), lr=0.1)  # the blocks around the activations are no one's
    layers = {n: m for n, m in model.named_modules() if isinstance(m, CAReLU)}
    CAReLUGroup().attach([optimizer], [], model, layers)
    assert not any(m.alpha.requires_grad for m in layers.values()) and len(optimizer.param_groups) == 1
    CAReLUGroup().attach([optimizer], [], model, layers, train_unheld=True)
    assert len(optimizer.param_groups[1]["params"]) == 4


def test_monitor_alone_logs_the_measured_step_only():
    model = net()
    swap_activations(model)
    layers = {n: m for n, m in model.named_modules() if isinstance(m, CAReLU)}
    monitor, logged = Monitor(), []
    monitor.start(layers, every=2)
    inputs = {}
    layers["3"].register_forward_pre_hook(lambda m, args: inputs.setdefault("3", []).append(args[0].detach()))
    for step in range(3):  # steps 0 and 2 are logging steps
        monitor.begin_step(step)
        model(torch.randn(5, 3, 8, 8))
        monitor.end_step(step + 1, lambda table: table, True, lambda metrics, at: logged.append((at, metrics)))
    assert [at for at, _ in logged] == [0, 2]
    expected = competition(inputs["3"][0]).mean().item()
    assert logged[0][1]["carelu/3/energy_ratio"] == pytest.approx(expected, rel=1e-5)
    assert logged[0][1]["carelu/3/scale"] == pytest.approx(1.0, rel=1e-5)  # at the swap: s = 1
    assert monitor.history_of("sum_p").shape == (2, 2) and monitor.history_steps == [0, 2]
    assert "| 3 |" in monitor.summary()


def test_monitor_guard_stops_every_rank_on_non_finite_parameters():
    layer = CAReLU()
    monitor = Monitor()
    monitor.start({"act": layer}, every=1)
    monitor.begin_step(0)
    layer(torch.randn(2, 3))
    with torch.no_grad():
        layer.beta.fill_(float("nan"))
    with pytest.raises(NonFiniteCAReLUError, match="act"):
        monitor.end_step(1, lambda table: table, False, lambda metrics, at: None)  # not rank zero: still raises


def _monitor_of_betas(*betas: float) -> Monitor:
    """A monitor that logged one step of one CAReLU per beta (alpha 0), named act0, act1, ..."""
    layers = {f"act{i}": CAReLU() for i in range(len(betas))}
    for layer, beta in zip(layers.values(), betas):
        with torch.no_grad():
            layer.beta.fill_(beta)
    monitor = Monitor()
    monitor.start(layers, every=1)
    monitor.begin_step(0)
    for layer in layers.values():
        layer(torch.randn(2, 3))
    monitor.end_step(1, lambda table: table, True, lambda metrics, at: None)
    return monitor


@pytest.mark.slow
def test_heat_maps_spend_their_colours_on_the_values_taken():
    class Writer:
        figures: list = []

        def add_figure(self, tag, figure, step, close):
            self.figures.append(figure)

    writer = Writer()
    HeatMaps().draw([writer], _monitor_of_betas(0.4, 0.9), step=1)
    scale, saturation = writer.figures[1], writer.figures[2]
    expected = (2.0 * math.tanh(0.4), 2.0 * math.tanh(0.9))
    assert scale.axes[1].get_ylim() == pytest.approx(expected)  # not -K..K: every layer's positives won
    assert scale.axes[0].get_images()[0].norm(expected[0]) == pytest.approx(0.0, abs=1e-6)  # the lowest colour
    assert "no layer's negatives won" in scale.axes[0].get_title()
    assert saturation.axes[1].get_ylim() == pytest.approx((0.4, 0.9))


def test_heat_maps_budget(monkeypatch):
    maps = HeatMaps("carelu_1")
    maps.start(layers=10)
    assert not maps.due()  # 0.35 s estimated: due after 35 s of training
    monkeypatch.setattr(heat_maps_module, "FIGURE_BUDGET", 1e9)
    assert maps.due()

    class Writer:
        def __init__(self):
            self.tags, self.figures = [], []

        def add_figure(self, tag, figure, step, close):
            self.tags.append((tag, step))
            self.figures.append(figure)

    writer = Writer()
    monitor = _monitor_of_betas(0.5, -0.3)
    maps.draw([writer], monitor, step=1)
    maps.draw([writer], monitor, step=1)  # once per step
    assert writer.tags == [("carelu_1/energy_ratio_map", 1), ("carelu_1/scale_map", 1), ("carelu_1/saturation_map", 1)]
    ranges = [figure.axes[1].get_ylim() for figure in writer.figures]  # the colour bars
    # with alpha = 0: s = K·tanh(beta) and the saturation is |beta|, whatever the input
    scales = (2.0 * math.tanh(0.5), 2.0 * math.tanh(-0.3))
    assert ranges == [pytest.approx((0.0, 1.0)), pytest.approx((scales[1], scales[0])), pytest.approx((0.3, 0.5))]
    scale_image = writer.figures[1].axes[0].get_images()[0]
    assert scale_image.norm(0.0) == pytest.approx(0.5)  # some layer's negatives won: centred on 0, blue below
    assert "blue: negatives won" in writer.figures[1].axes[0].get_title()
    maps.draw([], monitor, step=2)
    assert len(writer.tags) == 3 and maps.step == 1  # nothing to draw into: nothing drawn


class TwoCalls(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.act, self.loop_act = CAReLU(), CAReLU()

    def forward(self, x):
        x = self.act(x)
        for _ in range(3):
            x = self.loop_act(x)
        return self.act(x)


def test_call_probe_alone_reports_a_module_called_at_two_places():
    model = TwoCalls()
    probe = CallProbe()
    probe.start({"act": model.act, "loop_act": model.loop_act})
    model(torch.randn(2, 3))
    assert probe.running
    with pytest.warns(UserWarning, match="called from several places: act from"):
        shared = probe.finish()
    assert list(shared) == ["act"] and not probe.running
    model(torch.randn(2, 3))
    assert len(probe.places["loop_act"]) == 1


def test_monitor_waits_for_the_optimizer_step_under_gradient_accumulation():
    layer, monitor, logged = CAReLU(), Monitor(), []
    monitor.start({"act": layer}, every=1)
    batches = [torch.randn(4, 6), torch.randn(4, 6) - 1.0]
    monitor.begin_step(0)
    layer(batches[0])
    monitor.end_step(0, lambda table: table, True, lambda metrics, at: logged.append((at, metrics)))
    assert logged == []  # the optimizer has not stepped: still measuring step 0
    monitor.begin_step(0)  # the next micro-batch of the same step
    layer(batches[1])
    monitor.end_step(1, lambda table: table, True, lambda metrics, at: logged.append((at, metrics)))
    (at, metrics), = logged
    expected = torch.cat([competition(b) for b in batches]).mean().item()  # both micro-batches, 8 groups
    assert at == 0 and metrics["carelu/act/energy_ratio"] == pytest.approx(expected, rel=1e-5)


def test_monitor_summary_flags_what_happened():
    layers = {"kept": CAReLU(), "flipped": CAReLU(beta_init=-3.5)}  # s = 2·tanh(-3.5) < 0, |α·p + β| = 3.5
    monitor = Monitor()
    monitor.start(layers, every=1)
    monitor.begin_step(0)
    for layer in layers.values():
        layer(torch.randn(3, 5))
    with pytest.warns(UserWarning, match=r"1 layer\(s\) saturated by training step 0: flipped \(mean"):
        monitor.end_step(1, lambda table: table, True, lambda metrics, at: None)
    rows = {line.split(" | ")[0].strip("| "): line for line in monitor.summary().splitlines()[2:]}
    assert rows["kept"].endswith("|  |") and rows["flipped"].endswith("| flipped sign, saturated |")
    assert f"| {-2 * math.tanh(3.5):.4g} |" in rows["flipped"]  # the final scale, recomputed


def test_monitor_summary_rows_follow_the_model_order_not_the_names():
    layers = {f"layer{i}": CAReLU() for i in range(11)}  # sorted by name, layer10 would come before layer2
    monitor = Monitor()
    monitor.start(layers, every=1)
    monitor.begin_step(0)
    for layer in layers.values():
        layer(torch.randn(3, 5))
    monitor.end_step(1, lambda table: table, True, lambda metrics, at: None)
    rows = [line.split(" | ")[0].strip("| ") for line in monitor.summary().splitlines()[2:]]
    assert rows == list(layers)
