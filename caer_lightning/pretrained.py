"""Hugging Face `save_pretrained` / `from_pretrained` round trips of swapped models.

`swap_activations` writes what it swapped into the `config` of every Hugging Face model it reaches
(`config.caer_lightning`: each CAReLU layer, relative to that model, with the class it replaced and its
configuration), so `model.save_pretrained(path)` saves the record in `config.json` next to alpha and beta.
`from_pretrained(ModelClass, path)` builds the model as `ModelClass.from_pretrained` does, swaps the recorded
layers back in and loads their alpha and beta from the saved weights. Only this module's loader imports
transformers (and safetensors); recording is duck-typed, so the swap needs neither.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
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
        layers = {n: cls for n, cls in layers.items() if isinstance(pretrained.get_submodule(n), CAReLU)}
        if layers:
            record["layers"] = {
                n: {"replaces": cls, **pretrained.get_submodule(n).layer_config()} for n, cls in layers.items()
            }
            setattr(pretrained.config, RECORD, record)


def from_pretrained(model_cls: Any, path: str | Path, **kwargs: Any) -> nn.Module:
    """`model_cls.from_pretrained(path, **kwargs)` with the CAReLU layers recorded in its config swapped back in
    and their alpha, beta loaded from the saved weights (a local folder, or a Hub id in the local cache)."""
    from caer_lightning.record import configure_layers  # the swap machinery imports this module
    from caer_lightning.swap import swap_activations

    model = model_cls.from_pretrained(path, **kwargs)
    record = getattr(model.config, RECORD, None)
    if not record or not record.get("layers"):
        raise ValueError(
            f"{path}: its config records no CAReLU swap ({RECORD} is missing from config.json); it was saved from a "
            f"model without CAReLU. Use {model_cls.__name__}.from_pretrained instead."
        )
    layers: dict[str, dict[str, Any]] = record["layers"]
    for cls in sorted({layer["replaces"] for layer in layers.values()}):
        names = [name for name, layer in layers.items() if layer["replaces"] == cls]
        swap_activations(model, cls, include=[f"^{re.escape(name)}$" for name in names])
    configure_layers(model, layers)
    missing = [name for name in layers if not isinstance(model.get_submodule(name), CAReLU)]
    if missing:
        raise ValueError(f"{path}: re-applying the recorded swap did not give CAReLU layers at {missing}")
    keys = [f"{name}.{p}" for name in layers for p in ("alpha", "beta")]
    saved = _saved_tensors(Path(path), keys, kwargs)
    absent = [key for key in keys if key not in saved]
    if absent:
        raise ValueError(f"{path}: the saved weights hold no {absent}; they were not saved from the swapped model")
    with torch.no_grad():
        for key, value in saved.items():
            model.get_parameter(key).copy_(value)
    return model


def _saved_tensors(path: Path, keys: list[str], kwargs: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The tensors `keys` from the weights saved at `path` (safetensors, single or sharded, or a .bin file)."""
    folder = path if path.is_dir() else _cached_folder(str(path), kwargs)
    wanted, found = set(keys), {}
    index = folder / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() else []
    files = [folder / f for f in files] or [f for f in (folder / "model.safetensors",) if f.exists()]
    if files:
        from safetensors import safe_open

        for file in files:
            with safe_open(str(file), framework="pt") as weights:
                found.update({k: weights.get_tensor(k) for k in weights.keys() if k in wanted})
        return found
    binary = folder / "pytorch_model.bin"
    if binary.exists():
        state = torch.load(binary, map_location="cpu", weights_only=True)
        return {k: v for k, v in state.items() if k in wanted}
    raise ValueError(f"{path}: no model.safetensors, model.safetensors.index.json or pytorch_model.bin in {folder}")


def _cached_folder(repo_id: str, kwargs: Mapping[str, Any]) -> Path:
    from huggingface_hub import snapshot_download

    options = {k: kwargs[k] for k in ("revision", "cache_dir", "local_files_only", "token") if k in kwargs}
    return Path(snapshot_download(repo_id, allow_patterns=["*.safetensors", "*.json", "*.bin"], **options))
