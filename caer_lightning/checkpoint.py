"""Rebuild a CAReLU-trained LightningModule from a checkpoint, without a Trainer."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, TypeVar

import lightning.pytorch as pl
from lightning.fabric.utilities.cloud_io import _load as load_file

from caer_lightning.activation import CAReLU
from caer_lightning.callbacks.carelu import STATE_KIND
from caer_lightning.callbacks.interplay import SwapRecord
from caer_lightning.swap import swap_activations

ModuleT = TypeVar("ModuleT", bound=pl.LightningModule)


def recorded_swaps(checkpoint: dict[str, Any]) -> list[dict[str, Any]]:
    """The CAReLUCallback states stored in a loaded checkpoint, in callback order (a weights-only checkpoint
    keeps them under its own key)."""
    states = [*checkpoint.get("callbacks", {}).values(), *checkpoint.get(SwapRecord.KEY, [])]
    return [s for s in states if isinstance(s, dict) and s.get("kind") == STATE_KIND]


def load_checkpoint(module_cls: type[ModuleT], path: str | Path, **kwargs: Any) -> ModuleT:
    """Load `module_cls` from a checkpoint written by a run with CAReLUCallback.

    The module is built as `module_cls.load_from_checkpoint(path, **kwargs)` would (hyperparameters, kwargs
    overrides, `map_location`), the recorded swap is re-applied, and the whole state dict is then loaded
    strictly, so α and β are never silently dropped.
    """
    checkpoint = load_file(path, map_location="cpu")
    swaps = recorded_swaps(checkpoint)
    if not swaps:
        raise ValueError(
            f"{path} records no CAReLUCallback swap; it was not trained with CAReLUCallback. "
            f"Use {module_cls.__name__}.load_from_checkpoint instead."
        )
    kwargs.pop("strict", None)
    with warnings.catch_warnings():  # α, β are unexpected until the swap below; the strict load checks all
        warnings.filterwarnings("ignore", message="Found keys that are not in the model state dict")
        model = module_cls.load_from_checkpoint(path, strict=False, **kwargs)
    for swap in swaps:
        config = dict(swap["config"])
        targets, include, exclude = config.pop("targets"), config.pop("include"), config.pop("exclude")
        swap_activations(model, targets, include=include, exclude=exclude, factory=lambda old: CAReLU(**config))
    recorded = [name for swap in swaps for name in swap["swapped"]]
    rebuilt = [name for name, module in model.named_modules() if isinstance(module, CAReLU)]
    if sorted(recorded) != sorted(rebuilt):
        raise ValueError(f"{path}: the checkpoint swapped {recorded}, re-applying its swap gave {rebuilt}")
    model.load_state_dict(checkpoint["state_dict"], strict=True)
    return model
