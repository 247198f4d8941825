"""The optimizer part of CAReLUCallback: α, β in a group of their own in every optimizer that trains their part of
the model, at the policy's lr (`lr_policy`), without weight decay by default, held at their ratio to the group
they came from whatever the schedulers do."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from torch import nn
from torch.optim import Optimizer

from caer_lightning.activation import CAReLU
from caer_lightning.arguments import check_non_negative, check_positive
from caer_lightning.callbacks.interplay import context_parameters
from caer_lightning.lr_policy import GROUP_NAME, lr_rule
from caer_lightning.optim import (
    NewGroup, extend_scheduler, find_group, keep_ratio, move_to_own_group, upgrade_optimizer_state,
)


class CAReLUGroup:
    """One named group per optimizer for the α, β of `layers` (see `attach`)."""

    def __init__(self, lr: float | None = None, lr_scale: float | None = None, weight_decay: float = 0.0) -> None:
        check_positive("lr", lr, allow_none=True)
        check_positive("lr_scale", lr_scale, allow_none=True)
        check_non_negative("weight_decay", weight_decay)
        self.lr, self.lr_scale, self.weight_decay = lr, lr_scale, weight_decay
        self.name = GROUP_NAME
        self.groups: list[tuple[Optimizer, NewGroup]] = []
        self._upgrades: list[Any] = []  # handles of the optimizers' load_state_dict post hooks

    @property
    def config(self) -> dict[str, Any]:
        """How α, β are optimized (recorded in checkpoints, compared on resume)."""
        return dict(lr=self.lr, lr_scale=self.lr_scale, weight_decay=self.weight_decay)

    def attach(
        self, optimizers: Sequence[Optimizer], schedulers: Sequence[Any], model: nn.Module,
        layers: dict[str, CAReLU], train_unheld: bool = False,
    ) -> None:
        """Move each layer's α, β into this group of the optimizer that holds them (or, when none does, e.g.
        LightningCLI built it before the swap, the one that holds their part of the model) and extend the
        optimizer's `schedulers` to the group. Layers whose part no optimizer holds (a frozen loss network) are
        frozen and left out, unless `train_unheld` (then optimizer 0 takes them). A resume that loads optimizer
        state saved when α, β were 0-d gets it reshaped (`upgrade_optimizer_state`)."""
        self.groups = []
        for handle in self._upgrades:
            handle.remove()
        self._upgrades = []
        if not optimizers:
            rank_zero_warn("CAReLUCallback: the Trainer has no optimizer, so CAReLU's alpha and beta won't train")
            return
        by_optimizer: dict[int, list[nn.Parameter]] = {}
        unheld = []
        for name, module in layers.items():
            index = _holder(optimizers, (module.alpha,))
            if index is None:
                index = _holder(optimizers, context_parameters(model, name))
            if index is None and not train_unheld:
                unheld.append(name)
                module.requires_grad_(False)
                continue
            by_optimizer.setdefault(index or 0, []).extend((module.alpha, module.beta))
        for index, owned in sorted(by_optimizer.items()):
            optimizer = optimizers[index]
            new = move_to_own_group(
                optimizer, owned, name=self.name, lr=self.lr, lr_scale=self.lr_scale, weight_decay=self.weight_decay
            )
            self.groups.append((optimizer, new))
            self._upgrades.append(optimizer.register_load_state_dict_post_hook(upgrade_optimizer_state))
            keep_ratio(optimizer, self.name, new.ratio)
            rank_zero_info(
                f"CAReLUCallback: alpha, beta of {len(owned) // 2} layers train in group '{self.name}' of "
                f"{type(optimizer).__name__} at lr {optimizer.param_groups[new.index]['lr']:.4g} "
                f"({lr_rule(optimizer, self.lr, self.lr_scale)})"
            )
            for scheduler in schedulers:
                if getattr(scheduler, "optimizer", None) is optimizer:
                    extend_scheduler(scheduler, new)
        if unheld:
            rank_zero_info(
                f"CAReLUCallback: no optimizer holds the parts of the model around {unheld} (frozen or unused "
                "sub-networks): their alpha, beta are frozen and not trained (pass include=... to train them)"
            )

    def apply_settings(self) -> None:
        """After a resume restored the optimizers: this run's weight decay, and the lr ratio."""
        for optimizer, new in self.groups:
            index = find_group(optimizer, self.name)
            if index is not None:
                optimizer.param_groups[index]["weight_decay"] = self.weight_decay
        self.keep_ratios()

    def keep_ratios(self) -> None:
        """Hold each group's lr at its ratio to its source group (schedulers stepped since)."""
        for optimizer, new in self.groups:
            keep_ratio(optimizer, self.name, new.ratio)


def _holder(optimizers: Sequence[Optimizer], params: Sequence[nn.Parameter]) -> int | None:
    """Index of the first optimizer holding any of `params`, or None."""
    ids = {id(p) for p in params}
    for index, optimizer in enumerate(optimizers):
        if any(id(p) in ids for group in optimizer.param_groups for p in group["params"]):
            return index
    return None
