"""What a Hugging Face model's config records of a swap (torch only, duck-typed: no transformers import).

`swap_activations` writes what it swapped into the `config` of every Hugging Face model it reaches
(`config.caer_lightning`: each CAReLU layer, relative to that model, with the class it replaced and its
configuration), so `model.save_pretrained(path)` saves the record in `config.json` next to alpha and beta;
`caer_lightning.pretrained.from_pretrained` reads it back.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import nn

from caer_lightning.activation import CAReLU

RECORD = "caer_lightning"  # the config attribute (and config.json key) that holds the record


def pretrained_models(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(prefix, module) of the outermost Hugging Face models inside `model`: modules with `save_pretrained` and a
    `config` that serialises with `to_dict` (an inner one, e.g. BertForSequenceClassification's `bert`, shares
    the outer one's config)."""
    found: list[tuple[str, nn.Module]] = []
    for prefix, module in model.named_modules():
        inside = any(prefix.startswith(f"{outer}.") or outer == "" for outer, _ in found)
        config = getattr(module, "config", None)
        if not inside and callable(getattr(module, "save_pretrained", None)) and callable(getattr(config, "to_dict",
                                                                                                  None)):
            found.append((prefix, module))
    return found


def record_swaps(model: nn.Module, replaced: Mapping[str, str] | None = None) -> None:
    """Add the CAReLU layers in `replaced` (qualified name -> import path of the class each replaced) to the
    record in the config of every Hugging Face model that contains them, and bring the configuration of every
    recorded layer up to date."""
    replaced = replaced or {}
    for prefix, pretrained in pretrained_models(model):
        start = f"{prefix}." if prefix else ""
        record = dict(getattr(pretrained.config, RECORD, None) or {})
        layers = {n: layer["replaces"] for n, layer in record.get("layers", {}).items()}
        layers.update({name[len(start):]: cls for name, cls in replaced.items() if name.startswith(start)})
        modules = dict(pretrained.named_modules())
        layers = {n: cls for n, cls in layers.items() if isinstance(modules.get(n), CAReLU)}
        if layers:
            record["layers"] = {n: {"replaces": cls, **modules[n].layer_config()} for n, cls in layers.items()}
            setattr(pretrained.config, RECORD, record)
