"""The learning rate α, β train at, by optimizer family (README, "Stable by default", has the sweep behind it)."""

from __future__ import annotations

import inspect

import torch
from torch.optim import Optimizer

GROUP_NAME = "carelu"

# Adam-like optimizers step each parameter by about lr whatever its gradient: α, β move like any weight.
# SGD-like ones step in proportion to the gradient, and α, β's gradients sum over a whole layer: a smaller scale.
ADAPTIVE_LR_SCALE = 1.0
SGD_LR_SCALE = 0.1
ADAPTIVE_OPTIMIZERS = tuple(
    getattr(torch.optim, name) for name in (
        "Adam", "AdamW", "Adamax", "NAdam", "RAdam", "Adagrad", "Adadelta", "RMSprop", "Rprop", "SparseAdam",
        "Adafactor",
    ) if hasattr(torch.optim, name)
)


def is_adaptive(optimizer: Optimizer | type[Optimizer]) -> bool:
    """Whether `optimizer` (an instance or a class) normalises each parameter's step (Adam-like): a torch.optim
    class of that family, or one that takes Adam's `betas` (timm's Lamb, AdaBelief, Lion, ...)."""
    if isinstance(optimizer, type):
        if issubclass(optimizer, ADAPTIVE_OPTIMIZERS):
            return True
        try:
            return "betas" in inspect.signature(optimizer).parameters
        except (TypeError, ValueError):
            return False
    groups = optimizer.param_groups
    return isinstance(optimizer, ADAPTIVE_OPTIMIZERS) or (bool(groups) and all("betas" in g for g in groups))


def default_lr_scale(optimizer: Optimizer | type[Optimizer]) -> float:
    """The lr_scale used when none is given: ADAPTIVE_LR_SCALE for Adam-like optimizers, SGD_LR_SCALE otherwise."""
    return ADAPTIVE_LR_SCALE if is_adaptive(optimizer) else SGD_LR_SCALE


def lr_rule(optimizer: Optimizer | type[Optimizer], lr: float | None, lr_scale: float | None) -> str:
    """How the carelu group's lr was chosen, in words (for log messages)."""
    if lr is not None:
        return f"lr={lr:g}"
    if lr_scale is not None:
        return f"lr_scale={lr_scale:g}"
    name = optimizer.__name__ if isinstance(optimizer, type) else type(optimizer).__name__
    return f"lr_scale={default_lr_scale(optimizer):g}, the default for {name}"
