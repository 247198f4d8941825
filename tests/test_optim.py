"""Unit tests of the optimizer policy without a Trainer: `optim` (the carelu group in a built optimizer, the
schedulers extended to it, the ratio held), `lr_policy` (which optimizers count as Adam-like) and `CAReLUGroup`
(which optimizer takes which α, β, at which lr, with which log lines). Every expected value is recomputed here
from the optimizer's own numbers."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from caer_lightning import CAReLU, carelu_param_groups, swap_activations
from caer_lightning.callbacks.lr_group import CAReLUGroup
from caer_lightning.lr_policy import ADAPTIVE_LR_SCALE, SGD_LR_SCALE, default_lr_scale, is_adaptive
from caer_lightning.optim import SOURCE_KEY, NewGroup, extend_scheduler, keep_ratio, move_to_own_group


def net() -> nn.Sequential:
    """Two CAReLU layers (at "1" and "3") between linear layers, and a head ("4")."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    swap_activations(model)
    return model


def layers_of(model: nn.Module) -> dict[str, CAReLU]:
    return {name: module for name, module in model.named_modules() if isinstance(module, CAReLU)}


def carelu_of(model: nn.Module) -> list[nn.Parameter]:
    return [p for module in layers_of(model).values() for p in (module.alpha, module.beta)]


def others_of(model: nn.Module) -> list[nn.Parameter]:
    ids = {id(p) for p in carelu_of(model)}
    return [p for p in model.parameters() if id(p) not in ids]


def ids(params) -> list[int]:
    return [id(p) for p in params]


def two_group_sgd(model: nn.Module) -> torch.optim.SGD:
    """Group 0: the head at lr 0.1; group 1: the rest, α, β included, at lr 0.02 with settings of its own."""
    head = list(model[4].parameters())
    rest = [p for p in model.parameters() if id(p) not in ids(head)]
    return torch.optim.SGD(
        [{"params": head, "lr": 0.1}, {"params": rest, "lr": 0.02, "momentum": 0.5, "dampening": 0.25}],
        lr=0.3, momentum=0.9, weight_decay=5e-4,
    )


# --- optim.move_to_own_group ------------------------------------------------------------------------------------


def test_new_group_takes_scale_times_the_source_lr_the_source_settings_and_no_weight_decay():
    model = net()
    optimizer = two_group_sgd(model)
    new = move_to_own_group(optimizer, carelu_of(model))
    assert new == NewGroup(index=2, source=1, ratio=pytest.approx(SGD_LR_SCALE))
    source, group = optimizer.param_groups[1], optimizer.param_groups[2]
    assert group["lr"] == pytest.approx(SGD_LR_SCALE * 0.02)
    assert (group["momentum"], group["dampening"]) == (0.5, 0.25)  # the source group's, not the optimizer's 0.9, 0
    assert group["weight_decay"] == 0.0 and source["weight_decay"] == 5e-4
    assert group["name"] == "carelu" and group[SOURCE_KEY] == 1 and "name" not in source
    assert ids(group["params"]) == ids(carelu_of(model))
    held_elsewhere = {id(p) for g in optimizer.param_groups[:2] for p in g["params"]}
    assert held_elsewhere.isdisjoint(ids(carelu_of(model)))
    assert sorted(held_elsewhere) == sorted(ids(others_of(model)))


def test_explicit_lr_is_a_ratio_to_the_source_base_lr_applied_to_its_current_lr():
    """A scheduler moved the source from its base lr 0.1 (initial_lr) to 0.05: lr=0.02 is 0.2 × the base, so
    the group starts at 0.2 × 0.05 and its own initial_lr is 0.02."""
    model = net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    optimizer.step()
    scheduler.step()
    assert (optimizer.param_groups[0]["lr"], optimizer.param_groups[0]["initial_lr"]) == (0.05, 0.1)
    new = move_to_own_group(optimizer, carelu_of(model), lr=0.02)
    assert (new.index, new.source, new.ratio) == (1, 0, pytest.approx(0.02 / 0.1))
    group = optimizer.param_groups[1]
    assert group["lr"] == pytest.approx(0.05 * 0.02 / 0.1)
    assert group["initial_lr"] == pytest.approx(0.02)


def test_one_cycle_keys_of_the_group_are_scaled_and_the_scheduler_follows_the_ratio():
    model = net()
    optimizer = torch.optim.SGD(others_of(model), lr=0.1)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1.0, total_steps=10, cycle_momentum=False)
    source = dict(optimizer.param_groups[0])
    assert source["max_lr"] == 1.0 and source["min_lr"] < source["initial_lr"] < source["max_lr"]
    new = move_to_own_group(optimizer, carelu_of(model), lr_scale=0.5)  # no group held α, β: group 0 is the source
    assert (new.index, new.source, new.ratio) == (1, 0, pytest.approx(0.5))
    group = optimizer.param_groups[1]
    for key in ("lr", "initial_lr", "max_lr", "min_lr"):
        assert group[key] == pytest.approx(0.5 * source[key]), key
    extend_scheduler(scheduler, new)
    assert scheduler.base_lrs == pytest.approx([source["initial_lr"], 0.5 * source["initial_lr"]])
    for _ in range(6):  # no keep_ratio: the scheduler alone holds the ratio through the cycle
        optimizer.step()
        scheduler.step()
        assert optimizer.param_groups[1]["lr"] == pytest.approx(0.5 * optimizer.param_groups[0]["lr"])


def test_a_source_group_at_lr_zero_leaves_the_group_its_own_lr_and_no_ratio():
    model = net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)  # gives the groups an initial_lr
    new = move_to_own_group(optimizer, carelu_of(model), lr=0.01)
    assert new == NewGroup(index=1, source=0, ratio=None)
    group = optimizer.param_groups[1]
    assert (group["lr"], group["initial_lr"]) == (0.01, 0.01)
    keep_ratio(optimizer, "carelu", new.ratio)  # no ratio: nothing to hold
    assert optimizer.param_groups[1]["lr"] == 0.01


def test_a_source_group_at_lr_zero_schedules_the_group_from_its_own_base_lr():
    model = net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # a part trained at lr 0, e.g. frozen by its lr
    decay = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 ** step)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, min_lr=0.0)
    new = move_to_own_group(optimizer, carelu_of(model), lr=0.01)
    extend_scheduler(decay, new)
    extend_scheduler(plateau, new)
    assert decay.base_lrs == [0.0, 0.01] and plateau.min_lrs == [0.0, 0.0]
    for step in range(1, 4):
        optimizer.step()
        decay.step()
        assert optimizer.param_groups[1]["lr"] == pytest.approx(0.01 * 0.5 ** step)


def test_an_existing_group_is_reused_with_the_source_it_recorded():
    model = net()
    optimizer = two_group_sgd(model)
    move_to_own_group(optimizer, carelu_of(model))
    optimizer.param_groups[2]["weight_decay"] = 0.3  # e.g. restored from elsewhere
    optimizer.param_groups[1]["lr"] = 0.04
    optimizer.param_groups[0]["lr"] = 0.7
    again = move_to_own_group(optimizer, carelu_of(model), lr_scale=0.5, weight_decay=0.001)
    assert again == NewGroup(index=2, source=1, ratio=pytest.approx(0.5))
    assert len(optimizer.param_groups) == 3 and ids(optimizer.param_groups[2]["params"]) == ids(carelu_of(model))
    assert optimizer.param_groups[2]["weight_decay"] == 0.001 and optimizer.param_groups[2][SOURCE_KEY] == 1
    explicit = move_to_own_group(optimizer, carelu_of(model), lr=0.008)
    assert explicit == NewGroup(index=2, source=1, ratio=pytest.approx(0.008 / 0.04))


def test_a_group_made_by_carelu_param_groups_follows_group_zero_and_records_it():
    model = net()
    optimizer = torch.optim.SGD(carelu_param_groups(model, torch.optim.SGD, lr=0.1), lr=0.1)
    assert SOURCE_KEY not in optimizer.param_groups[1]
    keep_ratio(optimizer, "carelu", 0.5)  # no source recorded: group 0
    assert optimizer.param_groups[1]["lr"] == pytest.approx(0.5 * 0.1)
    new = move_to_own_group(optimizer, carelu_of(model))
    assert new == NewGroup(index=1, source=0, ratio=pytest.approx(SGD_LR_SCALE))
    assert optimizer.param_groups[1][SOURCE_KEY] == 0 and len(optimizer.param_groups) == 2


def test_keep_ratio_without_the_group_changes_nothing():
    model = net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    keep_ratio(optimizer, "carelu", 0.5)
    assert len(optimizer.param_groups) == 1 and optimizer.param_groups[0]["lr"] == 0.1


# --- optim.extend_scheduler -------------------------------------------------------------------------------------


def test_extend_scheduler_scales_lr_lists_and_copies_lambdas():
    model = net()
    optimizer = torch.optim.SGD(others_of(model), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 ** step)
    new = move_to_own_group(optimizer, carelu_of(model), lr_scale=0.2)
    extend_scheduler(scheduler, new)
    extend_scheduler(scheduler, new)  # once only
    assert scheduler.base_lrs == pytest.approx([0.1, 0.02]) and scheduler._last_lr == pytest.approx([0.1, 0.02])
    assert len(scheduler.lr_lambdas) == 2 and scheduler.lr_lambdas[1] is scheduler.lr_lambdas[0]
    optimizer.step()
    scheduler.step()
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.05, 0.01])


def test_extend_scheduler_reaches_the_children_of_sequential_and_chained_schedulers():
    model = net()
    optimizer = torch.optim.SGD(others_of(model), lr=0.1)
    warmup = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.5, total_iters=2)
    decay = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=0.9)
    sequential = torch.optim.lr_scheduler.SequentialLR(optimizer, [warmup, decay], milestones=[2])
    new = move_to_own_group(optimizer, carelu_of(model), lr_scale=0.3)
    extend_scheduler(sequential, new)
    for child in (warmup, decay):
        assert child.base_lrs == pytest.approx([0.1, 0.03])
    for _ in range(4):
        optimizer.step()
        sequential.step()
        assert optimizer.param_groups[1]["lr"] == pytest.approx(0.3 * optimizer.param_groups[0]["lr"])


def test_extend_scheduler_scales_the_floor_of_reduce_on_plateau():
    model = net()
    optimizer = torch.optim.SGD(others_of(model), lr=0.1)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, min_lr=0.01)
    new = move_to_own_group(optimizer, carelu_of(model), lr_scale=0.2)
    extend_scheduler(plateau, new)
    assert plateau.min_lrs == pytest.approx([0.01, 0.002])


# --- lr_policy.is_adaptive --------------------------------------------------------------------------------------


class Lion(torch.optim.Optimizer):
    """timm's Lion, AdaBelief, Lamb: Adam's betas, no torch.optim base class of the Adam family."""

    def __init__(self, params, lr=1e-4, betas=(0.9, 0.99)):
        super().__init__(params, dict(lr=lr, betas=betas))


class PlainDescent(torch.optim.Optimizer):
    def __init__(self, params, lr=0.1):
        super().__init__(params, dict(lr=lr))


def test_an_optimizer_instance_whose_groups_carry_betas_is_adaptive():
    weight = nn.Parameter(torch.ones(2))
    assert is_adaptive(Lion([weight])) and default_lr_scale(Lion([weight])) == ADAPTIVE_LR_SCALE
    assert is_adaptive(torch.optim.Adam([weight])) and is_adaptive(torch.optim.Adam)
    assert not is_adaptive(PlainDescent([weight])) and default_lr_scale(PlainDescent([weight])) == SGD_LR_SCALE
    assert not is_adaptive(torch.optim.SGD([weight], lr=0.1)) and not is_adaptive(PlainDescent)


def test_a_lion_instance_gets_the_adaptive_scale_in_its_new_group():
    model = net()
    optimizer = Lion(model.parameters(), lr=1e-3)
    new = move_to_own_group(optimizer, carelu_of(model))
    assert new.ratio == pytest.approx(ADAPTIVE_LR_SCALE)
    assert optimizer.param_groups[1]["lr"] == pytest.approx(ADAPTIVE_LR_SCALE * 1e-3)


# --- callbacks.lr_group.CAReLUGroup -----------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs,message", [
    (dict(lr=-1.0), "lr=-1.0 is not supported; accepted values: None or a finite number > 0"),
    (dict(lr_scale=0.0), "lr_scale=0.0 is not supported; accepted values: None or a finite number > 0"),
    (dict(weight_decay=-0.1), "weight_decay=-0.1 is not supported; accepted values: a finite number >= 0"),
])
def test_group_arguments_are_named_in_the_error(kwargs, message):
    with pytest.raises(ValueError) as raised:
        CAReLUGroup(**kwargs)
    assert str(raised.value) == message


def test_a_group_not_attached_yet_holds_nothing():
    group = CAReLUGroup(lr_scale=0.5)
    assert group.groups == [] and group.config == dict(lr=None, lr_scale=0.5, weight_decay=0.0)
    group.keep_ratios()
    group.apply_settings()
    assert group.groups == []


@pytest.mark.parametrize("kwargs,lr,rule", [
    (dict(), SGD_LR_SCALE * 0.02, f"lr_scale={SGD_LR_SCALE:g}, the default for SGD"),
    (dict(lr_scale=0.5), 0.5 * 0.02, "lr_scale=0.5"),
    (dict(lr=0.003), 0.003, "lr=0.003"),
])
def test_attach_sets_the_lr_and_says_how(kwargs, lr, rule, caplog):
    model = net()
    optimizer = two_group_sgd(model)
    group = CAReLUGroup(**kwargs)
    with caplog.at_level(logging.INFO):
        group.attach([optimizer], [], model, layers_of(model))
    (held, new), = group.groups
    assert held is optimizer and new.index == 2 and optimizer.param_groups[2]["lr"] == pytest.approx(lr)
    line = f"CAReLUCallback: alpha, beta of 2 layers train in group 'carelu' of SGD at lr {lr:.4g} ({rule})"
    assert line in caplog.messages


def test_attach_extends_only_the_schedulers_of_the_optimizer_that_takes_the_group():
    model = net()
    carelu = carelu_of(model)
    weights = torch.optim.SGD([p for p in others_of(model) if id(p) not in ids(model[4].parameters())] + carelu,
                              lr=0.1)
    head = torch.optim.SGD(model[4].parameters(), lr=0.2)
    own, other = (torch.optim.lr_scheduler.LambdaLR(o, lambda step: 1.0) for o in (weights, head))

    class Counter:  # a scheduler-like object of the user's that drives no optimizer
        def step(self):
            pass

    group = CAReLUGroup(lr_scale=0.5)
    group.attach([head, weights], [Counter(), other, own], model, layers_of(model))
    assert [held for held, _ in group.groups] == [weights] and len(head.param_groups) == 1
    assert own.base_lrs == pytest.approx([0.1, 0.05]) and other.base_lrs == [0.2]


def test_attach_re_attached_to_the_same_optimizer_holds_the_ratio_to_the_sources_current_lr():
    """A cached optimizer, fit twice: one group, its lr at the ratio to where the source group is now."""
    model = net()
    optimizer = two_group_sgd(model)
    group = CAReLUGroup()
    group.attach([optimizer], [], model, layers_of(model))
    optimizer.param_groups[1]["lr"] = 0.04
    group.attach([optimizer], [], model, layers_of(model))
    (_, new), = group.groups
    assert new.index == 2 and len(optimizer.param_groups) == 3
    assert optimizer.param_groups[2]["lr"] == pytest.approx(SGD_LR_SCALE * 0.04)


def test_a_second_group_under_its_own_name_takes_its_own_layers():
    model = net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    layers = layers_of(model)
    first, second = CAReLUGroup(), CAReLUGroup(lr=0.002)
    second.name = "carelu_1"  # what the Trainer's second CAReLUCallback calls its group
    first.attach([optimizer], [], model, {"1": layers["1"]})
    second.attach([optimizer], [], model, {"3": layers["3"]})
    assert [g.get("name") for g in optimizer.param_groups] == [None, "carelu", "carelu_1"]
    assert ids(optimizer.param_groups[1]["params"]) == ids([layers["1"].alpha, layers["1"].beta])
    assert ids(optimizer.param_groups[2]["params"]) == ids([layers["3"].alpha, layers["3"].beta])
    assert optimizer.param_groups[1]["lr"] == pytest.approx(SGD_LR_SCALE * 0.1)
    assert optimizer.param_groups[2]["lr"] == pytest.approx(0.002)


def test_attach_names_the_layers_no_optimizer_holds(caplog):
    model = nn.Sequential(nn.Sequential(nn.Linear(2, 2), nn.ReLU()), nn.Sequential(nn.Linear(2, 2), nn.ReLU()),
                          nn.Linear(2, 2))
    swap_activations(model)
    optimizer = torch.optim.SGD(model[2].parameters(), lr=0.1)
    with caplog.at_level(logging.INFO):
        CAReLUGroup().attach([optimizer], [], model, layers_of(model))
    assert (
        "CAReLUCallback: no optimizer holds the parts of the model around ['0.1', '1.1'] (frozen or unused "
        "sub-networks): their alpha, beta are frozen and not trained (pass include=... to train them)"
    ) in caplog.messages


def test_apply_settings_after_a_resume_restores_this_runs_weight_decay_and_ratio():
    model = net()
    optimizer = two_group_sgd(model)
    group = CAReLUGroup(weight_decay=0.002)
    group.attach([optimizer], [], model, layers_of(model))
    (_, new), = group.groups
    restored = optimizer.param_groups[new.index]
    restored["weight_decay"], restored["lr"] = 0.5, 0.9  # what the checkpoint's run used
    optimizer.param_groups[1]["lr"] = 0.01
    group.apply_settings()
    assert restored["weight_decay"] == 0.002 and restored["lr"] == pytest.approx(SGD_LR_SCALE * 0.01)
    assert optimizer.param_groups[1]["weight_decay"] == 5e-4
