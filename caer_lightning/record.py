"""What a checkpoint records about a swap, and how a model is rebuilt from it (torch only).

A CAReLUCallback state is a dict: `kind` (STATE_KIND), `config` (targets, include, exclude and the CAReLU
arguments the callback was given), `swapped` (the layers it trains, in model order) and `layers` (what each of
those layers holds: variant, reduction, K, eps, params and num_channels; a layer that was a CAReLU before the
callback came keeps its own).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from caer_lightning.activation import LAYER_FIELDS, CAReLU
from caer_lightning.hf_record import record_swaps
from caer_lightning.swap import swap_activations

STATE_KIND = "caer_lightning.CAReLUCallback"
WEIGHTS_ONLY_KEY = "caer_lightning_swaps"  # where a weights-only checkpoint (no callback states) keeps them


def recorded_swaps(checkpoint: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The CAReLUCallback states stored in a loaded checkpoint, in callback order."""
    states = [*checkpoint.get("callbacks", {}).values(), *checkpoint.get(WEIGHTS_ONLY_KEY, [])]
    return [s for s in states if isinstance(s, dict) and s.get("kind") == STATE_KIND]


def carelu_layers(model: nn.Module) -> list[str]:
    return [name for name, module in model.named_modules() if isinstance(module, CAReLU)]


def layers_in_state_dict(state_dict: Mapping[str, Any], model: nn.Module) -> list[str]:
    """The CAReLU layers a state dict holds α, β for (names with both keys, except modules of `model` that have
    parameters of those names and are not CAReLU)."""
    others = {
        name for name, module in model.named_modules()
        if not isinstance(module, CAReLU) and {"alpha", "beta"} & {n for n, _ in module.named_parameters(recurse=False)}
    }
    names = {key[: -len(".alpha")] for key in state_dict if key.endswith(".alpha")}
    return sorted(n for n in names if f"{n}.beta" in state_dict and n not in others)


def rebuild_swaps(model: nn.Module, swaps: list[dict[str, Any]]) -> list[str]:
    """Re-apply recorded swaps to a freshly built `model` (a no-op where it already holds CAReLU layers), give
    each layer the configuration recorded for it, and return the CAReLU layers the model now holds."""
    for swap in swaps:
        config = dict(swap["config"])
        targets, include, exclude = config.pop("targets"), config.pop("include"), config.pop("exclude")
        swap_activations(model, targets, include=include, exclude=exclude, factory=lambda old: CAReLU(**config))
    for swap in swaps:
        configure_layers(model, swap.get("layers", {}))
    return carelu_layers(model)


def configure_layers(model: nn.Module, layers: Mapping[str, Mapping[str, Any]]) -> None:
    """Give each named CAReLU layer of `model` its recorded configuration (`LAYER_FIELDS`) and the layout of its
    alpha, beta (`LAYOUT_FIELDS`; records written before per-channel parameters existed hold one pair per layer)."""
    for name, fields in layers.items():
        module = model.get_submodule(name)
        for field in LAYER_FIELDS:
            setattr(module, field, fields[field])
        module.set_layout(fields.get("params", "layer"), fields.get("num_channels"))
    record_swaps(model)  # Hugging Face configs record what the layers now hold


def describe(swaps: list[dict[str, Any]]) -> str:
    """One line per recorded swap: its configuration and the layers it trained."""
    lines = []
    for swap in swaps:
        config = ", ".join(f"{k}={v!r}" for k, v in swap["config"].items())
        lines.append(f"CAReLUCallback({config}) swapped {swap['swapped']}")
    return "; ".join(lines) or "no CAReLUCallback swap"
