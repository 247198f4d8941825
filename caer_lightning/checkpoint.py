"""Rebuild a CAReLU-trained LightningModule from a checkpoint, without a Trainer: `load_checkpoint`, or
`restore_swaps` in a module's own `on_load_checkpoint` (then `Module.load_from_checkpoint` works too)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, TypeVar

import lightning.pytorch as pl
import torch
from lightning.fabric.utilities.cloud_io import get_filesystem
from torch import nn

from caer_lightning.record import carelu_layers, rebuild_swaps, recorded_swaps

ModuleT = TypeVar("ModuleT", bound=pl.LightningModule)


def restore_swaps(module: nn.Module, checkpoint: dict[str, Any]) -> list[str]:
    """Give `module` the CAReLU layers `checkpoint` was trained with (nothing if it records none, or the module
    already has them), so its state dict loads. Call it in `on_load_checkpoint` to make
    `YourModule.load_from_checkpoint(path)` rebuild the swap. Returns the CAReLU layers the module now holds."""
    swaps = recorded_swaps(checkpoint)
    return rebuild_swaps(module, swaps) if swaps else carelu_layers(module)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint at `path` (a local path or an fsspec URL), its tensors on the CPU."""
    with get_filesystem(path).open(path, "rb") as file:
        return torch.load(file, map_location="cpu", weights_only=False)  # a Lightning checkpoint holds more than tensors


def load_checkpoint(module_cls: type[ModuleT], path: str | Path, **kwargs: Any) -> ModuleT:
    """Load `module_cls` from a checkpoint written by a run with CAReLUCallback.

    The module is built as `module_cls.load_from_checkpoint(path, **kwargs)` would (hyperparameters, kwargs
    overrides, `map_location`), the recorded swap is re-applied (each layer with the configuration it was
    trained with), and the whole state dict is then loaded strictly, so α and β are never silently dropped.
    """
    checkpoint = read_checkpoint(path)
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
    rebuilt = rebuild_swaps(model, swaps)
    recorded = [name for swap in swaps for name in swap["swapped"]]
    if sorted(recorded) != sorted(rebuilt):
        raise ValueError(f"{path}: the checkpoint swapped {recorded}, re-applying its swap gave {rebuilt}")
    model.load_state_dict(checkpoint["state_dict"], strict=True)
    return model
