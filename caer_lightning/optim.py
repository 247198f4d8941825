"""Give CAReLU parameters their own optimizer group and keep every LR scheduler in step with it."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn
from torch.optim import Optimizer, lr_scheduler

GROUP_NAME = "carelu"

# The default lr_scale, by optimizer family (README, "Stable by default", has the sweep behind the numbers).
# Adam-like optimizers step each parameter by about lr whatever its gradient: α, β move like any weight.
# SGD-like ones step in proportion to the gradient, and α, β's sums over a whole layer: a smaller scale.
ADAPTIVE_LR_SCALE = 1.0
SGD_LR_SCALE = 0.1
ADAPTIVE_OPTIMIZERS = tuple(
    getattr(torch.optim, name) for name in (
        "Adam", "AdamW", "Adamax", "NAdam", "RAdam", "Adagrad", "Adadelta", "RMSprop", "Rprop", "SparseAdam",
        "Adafactor",
    ) if hasattr(torch.optim, name)
)

# Built-in schedulers whose per-group state this module knows how to extend (subclasses included).
KNOWN_SCHEDULERS = (
    lr_scheduler.StepLR, lr_scheduler.MultiStepLR, lr_scheduler.ExponentialLR, lr_scheduler.CosineAnnealingLR,
    lr_scheduler.CosineAnnealingWarmRestarts, lr_scheduler.LambdaLR, lr_scheduler.MultiplicativeLR,
    lr_scheduler.LinearLR, lr_scheduler.ConstantLR, lr_scheduler.PolynomialLR, lr_scheduler.OneCycleLR,
    lr_scheduler.CyclicLR, lr_scheduler.ReduceLROnPlateau, lr_scheduler.SequentialLR, lr_scheduler.ChainedScheduler,
)
# Per-group learning rates a scheduler keeps in lists or in the param group: scaled by the group's lr ratio.
_LR_LISTS = ("base_lrs", "_last_lr", "max_lrs", "min_lrs")
_LR_GROUP_KEYS = ("initial_lr", "max_lr", "min_lr")
# Per-group values copied as they are from the source group's entry.
_COPIED_LISTS = ("lr_lambdas", "base_momentums", "max_momentums")


@dataclass(frozen=True)
class NewGroup:
    """Where the CAReLU group of one optimizer came from: its source group and lr ratio to it."""

    index: int
    source: int
    ratio: float


def is_adaptive(optimizer: Optimizer) -> bool:
    """Whether `optimizer` normalises each parameter's step (Adam-like): a torch.optim class of that family, or
    any optimizer whose groups all carry Adam's `betas` (timm's Lamb, AdaBelief, Lion, ...)."""
    groups = optimizer.param_groups
    return isinstance(optimizer, ADAPTIVE_OPTIMIZERS) or (bool(groups) and all("betas" in g for g in groups))


def default_lr_scale(optimizer: Optimizer) -> float:
    """The lr_scale used when none is given: ADAPTIVE_LR_SCALE for Adam-like optimizers, SGD_LR_SCALE otherwise."""
    return ADAPTIVE_LR_SCALE if is_adaptive(optimizer) else SGD_LR_SCALE


def move_to_own_group(
    optimizer: Optimizer,
    params: Iterable[nn.Parameter],
    *,
    lr: float | None = None,
    lr_scale: float | None = None,
    weight_decay: float = 0.0,
) -> NewGroup:
    """Remove `params` (by identity) from every group of `optimizer` and add them as one group named "carelu".

    Its base lr is `lr`, or `lr_scale` (default: `default_lr_scale(optimizer)`) × the base lr of the group they
    came from (group 0 if none held them);
    its current lr keeps that ratio to the source group's current lr; other keys are copied from the source.
    """
    params = list(params)
    ids = {id(p) for p in params}
    source = next((i for i, g in enumerate(optimizer.param_groups) if any(id(p) in ids for p in g["params"])), 0)
    for group in optimizer.param_groups:
        group["params"] = [p for p in group["params"] if id(p) not in ids]

    source_group = optimizer.param_groups[source]
    source_base = float(source_group.get("initial_lr", source_group["lr"]))
    if lr_scale is None:
        lr_scale = default_lr_scale(optimizer)
    base = float(lr) if lr is not None else lr_scale * source_base
    ratio = base / source_base if source_base else 0.0
    group = {k: v for k, v in source_group.items() if k not in ("params", "name")}
    group.update(params=params, name=GROUP_NAME, weight_decay=weight_decay)
    group["lr"] = float(source_group["lr"]) * ratio if source_base else base
    for key in _LR_GROUP_KEYS:
        if key in group:
            group[key] = float(group[key]) * ratio if source_base else base
    optimizer.add_param_group(group)
    return NewGroup(index=len(optimizer.param_groups) - 1, source=source, ratio=ratio)


def extend_scheduler(scheduler: object, new: NewGroup) -> bool:
    """Append the new group's entry to every per-group list of `scheduler` (and its children).

    Returns False when the scheduler class is not a known built-in, so the caller can warn.
    """
    for child in getattr(scheduler, "_schedulers", ()):  # SequentialLR, ChainedScheduler
        extend_scheduler(child, new)
    for attribute in _LR_LISTS + _COPIED_LISTS:
        values = getattr(scheduler, attribute, None)
        if isinstance(values, list) and len(values) == new.index:  # not extended yet
            entry = values[new.source]
            values.append(entry * new.ratio if attribute in _LR_LISTS else entry)
    return isinstance(scheduler, KNOWN_SCHEDULERS)
