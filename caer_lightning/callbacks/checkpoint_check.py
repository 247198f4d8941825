"""Before the Trainer loads a checkpoint's weights: a checkpoint whose CAReLU layers are not the model's stops
with what each side holds and the way out (Lightning's own error only lists missing or unexpected keys)."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from caer_lightning.record import carelu_layers, describe, layers_in_state_dict, recorded_swaps

HOOK_KEY = "caer_lightning_fits_checkpoint"  # its key among the functions run after on_load_checkpoint


def check_fits(pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
    """Runs after the module's `on_load_checkpoint` (see `interplay.HookAfter`); raises a
    MisconfigurationException when the checkpoint's CAReLU layers are not the model's."""
    state = checkpoint.get("state_dict")
    if not isinstance(state, dict) or pl_module.strict_loading is False:
        return
    in_model = set(carelu_layers(pl_module))
    in_checkpoint = set(layers_in_state_dict(state, pl_module))
    if in_model == in_checkpoint:
        return
    raise MisconfigurationException(
        "CAReLUCallback: this checkpoint's CAReLU layers are not this model's, so its weights cannot be loaded. "
        f"The checkpoint holds alpha, beta of {sorted(in_checkpoint - in_model) or 'no other layer'} that this "
        f"model has no CAReLU at, and none for its CAReLU layers {sorted(in_model - in_checkpoint) or '(none)'}. "
        f"It was written by: {describe(recorded_swaps(checkpoint))}. Run with the same CAReLUCallback settings, "
        "or load the trained model with caer_lightning.load_checkpoint(YourModule, path)."
    )
