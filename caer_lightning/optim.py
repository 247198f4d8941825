"""Move CAReLU parameters into an optimizer group of their own in a built optimizer, and keep every LR scheduler
in step with it (the schedulers' per-group lists are reached through `caer_lightning._compat`)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from torch import Tensor, nn
from torch.optim import Optimizer

from caer_lightning import _compat
from caer_lightning.lr_policy import (  # noqa: F401 - the policy's names, also importable from here
    ADAPTIVE_LR_SCALE,
    ADAPTIVE_OPTIMIZERS,
    GROUP_NAME,
    SGD_LR_SCALE,
    default_lr_scale,
    is_adaptive,
)

# Per-group learning rates schedulers keep in the param group itself: scaled by the group's lr ratio.
_LR_GROUP_KEYS = ("initial_lr", "max_lr", "min_lr")
# Key of the CAReLU group that records which group its lr follows (kept by optimizer checkpoints).
SOURCE_KEY = "carelu_source"


@dataclass(frozen=True)
class NewGroup:
    """A CAReLU group of one optimizer: its index, the group its lr follows, and the lr ratio between them
    (None when that group's base lr is 0: then the CAReLU group keeps its own base lr, which schedulers scale like
    any other group's)."""

    index: int
    source: int
    ratio: float | None


def find_group(optimizer: Optimizer, name: str) -> int | None:
    """Index of the param group called `name`, or None."""
    return next((i for i, g in enumerate(optimizer.param_groups) if g.get("name") == name), None)


def move_to_own_group(
    optimizer: Optimizer,
    params: Iterable[nn.Parameter],
    *,
    name: str = GROUP_NAME,
    lr: float | None = None,
    lr_scale: float | None = None,
    weight_decay: float = 0.0,
) -> NewGroup:
    """Remove `params` (by identity) from every other group of `optimizer` and hold them in one group `name`.

    Its base lr is `lr`, or `lr_scale` (default: `default_lr_scale(optimizer)`) × the base lr of the group they
    came from (group 0 if none held them); its current lr keeps that ratio to the source group's current lr;
    other keys are copied from the source. Idempotent: when a group `name` exists already (a cached optimizer,
    fine-tuning callbacks that restore groups), it is reused with the source it recorded.
    """
    params = list(params)
    ids = {id(p) for p in params}
    existing = find_group(optimizer, name)
    if existing is not None:
        source = optimizer.param_groups[existing].get(SOURCE_KEY, 0)
    else:
        source = next((i for i, g in enumerate(optimizer.param_groups) if any(id(p) in ids for p in g["params"])), 0)
    for index, group in enumerate(optimizer.param_groups):
        if index != existing:
            group["params"] = [p for p in group["params"] if id(p) not in ids]

    source_group = optimizer.param_groups[source]
    source_base = float(source_group.get("initial_lr", source_group["lr"]))
    if lr_scale is None:
        lr_scale = default_lr_scale(optimizer)
    base = float(lr) if lr is not None else lr_scale * source_base
    ratio = base / source_base if source_base else None
    if existing is not None:
        group = optimizer.param_groups[existing]
        held = {id(p) for p in group["params"]}
        group["params"].extend(p for p in params if id(p) not in held)
        group.update(weight_decay=weight_decay, **{SOURCE_KEY: source})
        return NewGroup(index=existing, source=source, ratio=ratio)
    group = {k: v for k, v in source_group.items() if k not in ("params", "name")}
    group.update(params=params, name=name, weight_decay=weight_decay, **{SOURCE_KEY: source})
    group["lr"] = float(source_group["lr"]) * ratio if ratio is not None else base
    for key in _LR_GROUP_KEYS:
        if key in group:
            group[key] = float(group[key]) * ratio if ratio is not None else base
    optimizer.add_param_group(group)
    return NewGroup(index=len(optimizer.param_groups) - 1, source=source, ratio=ratio)


# Per-parameter state torch.optim keeps as 0-d tensors whatever the parameter's shape (step counters, NAdam's
# mu_product, ASGD's eta and mu); every other state tensor has its parameter's shape.
SCALAR_STATE_KEYS = ("step", "mu_product", "eta", "mu")


def upgrade_optimizer_state(optimizer: Optimizer) -> None:
    """Give the optimizer state of one-value parameters their shape (1,) where it is 0-d: the state of α, β saved
    when they were 0-d (checkpoints of earlier caer_lightning versions) holds 0-d moments (Adam's exp_avg, SGD's momentum_buffer, ...),
    which the first step would fail to update. Call it after `optimizer.load_state_dict(old_state)` (or register it:
    `optimizer.register_load_state_dict_post_hook(upgrade_optimizer_state)`; CAReLUCallback does)."""
    for group in optimizer.param_groups:
        for param in group["params"]:
            state = optimizer.state.get(param)
            if not state or param.shape != (1,):
                continue
            for key, value in state.items():
                if key not in SCALAR_STATE_KEYS and isinstance(value, Tensor) and value.dim() == 0:
                    state[key] = value.reshape(1)


def keep_ratio(optimizer: Optimizer, name: str, ratio: float | None) -> None:
    """Set group `name`'s lr to `ratio` × its source group's current lr, whatever a scheduler did to it.

    This is what keeps the ratio under every scheduler: eta_min/min_lr floors (one value for all groups),
    SWALR's swa_lrs, timm's schedulers (which only know the groups that existed when they were built), and
    schedulers stepped by hand.
    """
    index = find_group(optimizer, name)
    if index is None or ratio is None:
        return
    group = optimizer.param_groups[index]
    source = optimizer.param_groups[group.get(SOURCE_KEY, 0)]
    group["lr"] = ratio * float(source["lr"])


def extend_scheduler(scheduler: object, new: NewGroup) -> None:
    """Append the new group's entry to every per-group list of `scheduler` (and its children), so that it
    schedules the group from the first step (`keep_ratio` then holds the ratio exactly)."""
    for child in _compat.child_schedulers(scheduler):  # SequentialLR, ChainedScheduler
        extend_scheduler(child, new)
    for attribute, values in _compat.scheduler_group_lists(scheduler):
        if len(values) == new.index:  # not extended yet
            entry = values[new.source]
            if attribute not in _compat.SCHEDULER_LR_LISTS:
                values.append(entry)
            elif new.ratio is not None:
                values.append(entry * new.ratio)
            else:  # the source's lr is 0: the group's own base lr, scheduled like the others (a floor of 0)
                values.append(0.0 if attribute == "min_lrs" else _own_base_lr(scheduler, new))


def _own_base_lr(scheduler: object, new: NewGroup) -> float:
    group = scheduler.optimizer.param_groups[new.index]
    return float(group.get("initial_lr", group["lr"]))
