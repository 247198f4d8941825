"""How CAReLUCallback meets the rest of Lightning where no callback hook is in the right place.

- `averaged_models`: copies of the model that weight-averaging callbacks took in their own `setup` (the swap
  must reach them too, whatever the callback order); `size_like`: their per-channel α, β, created lazily, get
  the shapes the model's got at its first forward (a copy never runs one before it is averaged into).
- `HookAfter`: runs a function after one of the LightningModule's own hooks (`configure_model`, which comes
  after every callback's `setup`; `on_save_checkpoint`, the only hook a weights-only checkpoint calls).
- `context_parameters`, `in_frozen_part`: the parameters an activation works for, to tell frozen parts and
  parts no optimizer holds from the rest.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import lightning.pytorch as pl
from torch import nn

from caer_lightning import _compat
from caer_lightning.activation import CAReLU
from caer_lightning.callbacks import packages
from caer_lightning.record import WEIGHTS_ONLY_KEY

def averaged_models(trainer: pl.Trainer) -> Iterator[nn.Module]:
    """The model copies held by StochasticWeightAveraging and WeightAveraging (EMA) callbacks."""
    for callback in trainer.callbacks:
        if isinstance(callback, packages.classes("callbacks.StochasticWeightAveraging")
                      + packages.classes("callbacks.WeightAveraging")):  # of either Lightning package
            copy = _compat.averaged_model(callback)
            if copy is not None:
                yield copy


def size_like(model: nn.Module, copies: Iterable[nn.Module]) -> bool:
    """Give each CAReLU of `copies` whose per-channel α, β are not created yet the number of channels of the
    layer of that name in `model`, once that one has them. Returns whether some copy's layer still waits."""
    layers = {name: m for name, m in model.named_modules() if isinstance(m, CAReLU)}
    waiting = False
    for copy in copies:
        for name, layer in copy.named_modules():
            if not (isinstance(layer, CAReLU) and layer.has_uninitialized_params()):
                continue
            source = layers.get(name)
            if source is None or source.num_channels is None:
                waiting = waiting or source is not None
                continue
            layer.set_layout("channel", source.num_channels)
    return waiting


# What runs after each wrapped hook: module → hook name → key → function. Kept outside the module so that
# copies of it (deepcopy by weight averaging, pickling for spawned workers) carry no callback or Trainer.
_AFTER: weakref.WeakKeyDictionary[nn.Module, dict[str, dict[str, Callable[..., None]]]] = weakref.WeakKeyDictionary()


class HookAfter:
    """Stands in for `module.<hook>` (an instance attribute): calls the module's own hook, then the functions
    registered with `HookAfter.add` for this module object. `__wrapped__` lets Lightning's `is_overridden`
    see the module's own code; a copy of the module runs its own hook only."""

    def __init__(self, module: nn.Module, hook: str) -> None:
        self.module, self.hook = module, hook

    @property
    def __wrapped__(self) -> Callable[..., Any]:
        return getattr(type(self.module), self.hook).__get__(self.module)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        result = self.__wrapped__(*args, **kwargs)
        for after in list(_AFTER.get(self.module, {}).get(self.hook, {}).values()):
            after(*args, **kwargs)
        return result

    @staticmethod
    def add(module: nn.Module, hook: str, key: str, after: Callable[..., None]) -> None:
        """Run `after(*hook_args)` after `module.<hook>`; one function per key (adding again replaces it)."""
        if not isinstance(module.__dict__.get(hook), HookAfter):
            setattr(module, hook, HookAfter(module, hook))
        _AFTER.setdefault(module, {}).setdefault(hook, {})[key] = after

    @staticmethod
    def discard(module: nn.Module, hook: str, key: str) -> None:
        afters = _AFTER.get(module, {}).get(hook, {})
        afters.pop(key, None)
        if not afters and isinstance(module.__dict__.get(hook), HookAfter):
            delattr(module, hook)


class SwapRecord:
    """Runs after `on_save_checkpoint`: writes the swaps into checkpoints that carry no callback states
    (`ModelCheckpoint(save_weights_only=True)`), so `load_checkpoint` can rebuild the model from them."""

    KEY = WEIGHTS_ONLY_KEY

    def __init__(self) -> None:
        self.swaps: dict[str, dict[str, Any]] = {}

    def __call__(self, checkpoint: dict[str, Any]) -> None:
        if "callbacks" not in checkpoint:
            checkpoint[self.KEY] = list(self.swaps.values())

    @classmethod
    def of(cls, module: nn.Module) -> SwapRecord:
        """The module's record, run after its `on_save_checkpoint` from the first use on."""
        record = _AFTER.get(module, {}).get("on_save_checkpoint", {}).get(cls.KEY)
        if record is None:
            record = cls()
            HookAfter.add(module, "on_save_checkpoint", cls.KEY, record)
        return record


# Normalization layers (a frozen backbone commonly keeps them trainable: BaseFinetuning's `train_bn`).
_NORMALIZATION = (
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.InstanceNorm1d, nn.InstanceNorm2d,
    nn.InstanceNorm3d, nn.LazyBatchNorm1d, nn.LazyBatchNorm2d, nn.LazyBatchNorm3d, nn.LazyInstanceNorm1d,
    nn.LazyInstanceNorm2d, nn.LazyInstanceNorm3d, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm,
)


def _enclosing(model: nn.Module, name: str) -> tuple[nn.Module, list[nn.Parameter]]:
    """The smallest module enclosing `name` that has parameters besides CAReLU's own, and those parameters."""
    path = name.split(".")
    for depth in range(len(path) - 1, -1, -1):
        owner = model.get_submodule(".".join(path[:depth]))
        carelu = {id(p) for m in owner.modules() if isinstance(m, CAReLU) for p in m.parameters(recurse=False)}
        params = [p for p in owner.parameters() if id(p) not in carelu]
        if params:
            return owner, params
    return model, []


def context_parameters(model: nn.Module, name: str) -> list[nn.Parameter]:
    """The parameters of what the activation at `name` works for (its block, a backbone, a loss network)."""
    return _enclosing(model, name)[1]


def in_frozen_part(model: nn.Module, name: str) -> bool:
    """Whether every parameter around the activation at `name` is frozen, normalization layers aside (a
    frozen backbone commonly keeps those trainable: BaseFinetuning's `train_bn`)."""
    owner, params = _enclosing(model, name)
    norm = {id(p) for m in owner.modules() if isinstance(m, _NORMALIZATION) for p in m.parameters(recurse=False)}
    weights = [p for p in params if id(p) not in norm] or params
    return bool(weights) and not any(p.requires_grad for p in weights)
