"""`carelu_param_groups`: the callback's optimizer policy for code that builds its own optimizer
(`configure_optimizers`, Lightning Fabric, a plain PyTorch loop)."""

from __future__ import annotations

from typing import Any

from torch import nn
from torch.optim import Optimizer

from caer_lightning.activation import CAReLU
from caer_lightning.arguments import check_non_negative, check_positive
from caer_lightning.lr_policy import GROUP_NAME, default_lr_scale


def carelu_parameters(model: nn.Module) -> list[nn.Parameter]:
    """α and β of every CAReLU layer of `model`, in model order."""
    return [p for module in model.modules() if isinstance(module, CAReLU) for p in (module.alpha, module.beta)]


def carelu_param_groups(
    model: nn.Module,
    optimizer: type[Optimizer],
    lr: float,
    *,
    lr_scale: float | None = None,
    carelu_lr: float | None = None,
    weight_decay: float = 0.0,
    name: str = GROUP_NAME,
) -> list[dict[str, Any]]:
    """Parameter groups for `optimizer(groups, lr=lr, ...)`: every parameter of `model` but α, β in the first
    group (it takes the optimizer's own settings), and α, β of its CAReLU layers in a group `name` of their own,
    the policy `CAReLUCallback` applies:

    - lr: `carelu_lr`, or `lr_scale` × `lr`; `lr_scale` defaults by the optimizer's family, 1.0 for Adam-like
      optimizers and 0.1 for SGD and the rest (README, "Stable by default");
    - weight decay: `weight_decay`, 0.0 by default (decay pulls β, and so the scale, toward 0).

    LR schedulers built on the optimizer scale both groups alike. Raises ValueError naming a bad argument, or
    when `model` has no CAReLU layer yet (swap first: `swap_activations`, or inside `configure_optimizers` when a
    CAReLUCallback swapped it at setup).
    """
    if not (isinstance(optimizer, type) and issubclass(optimizer, Optimizer)):
        raise ValueError(
            f"optimizer={optimizer!r} is not supported; accepted values: a torch.optim.Optimizer class "
            "(e.g. torch.optim.SGD), the one these groups are for"
        )
    check_positive("lr", lr)
    check_positive("lr_scale", lr_scale, allow_none=True)
    check_positive("carelu_lr", carelu_lr, allow_none=True)
    check_non_negative("weight_decay", weight_decay)
    carelu = carelu_parameters(model)
    if not carelu:
        raise ValueError(
            f"model ({type(model).__name__}) has no CAReLU layer: swap its activations first "
            "(caer_lightning.swap_activations(model), or let CAReLUCallback swap it before configure_optimizers)"
        )
    held = {id(p) for p in carelu}
    others = [p for p in model.parameters() if id(p) not in held]
    if carelu_lr is None:
        carelu_lr = (default_lr_scale(optimizer) if lr_scale is None else lr_scale) * lr
    return [
        {"params": others},
        {"params": carelu, "name": name, "lr": float(carelu_lr), "weight_decay": float(weight_decay)},
    ]

