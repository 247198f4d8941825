"""Hugging Face `save_pretrained` / `from_pretrained` round trips of swapped models.

`model.save_pretrained(path)` of a swapped model keeps the swap in `config.json` (see `hf_record`).
`from_pretrained(ModelClass, path)` builds the model as `ModelClass.from_pretrained` does, swaps the recorded
layers back in and loads their alpha and beta from the saved weights. safetensors and huggingface_hub (both
transformers dependencies) are imported only when it runs.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parameter import is_lazy

from caer_lightning.activation import CAReLU
from caer_lightning.hf_record import RECORD
from caer_lightning.record import configure_layers
from caer_lightning.swap import swap_activations


def from_pretrained(model_cls: Any, path: str | Path, **kwargs: Any) -> nn.Module:
    """`model_cls.from_pretrained(path, **kwargs)` with the CAReLU layers recorded in its config swapped back in
    and their alpha, beta loaded from the saved weights (a local folder, or a Hub id in the local cache)."""
    model = model_cls.from_pretrained(path, **kwargs)
    record = getattr(model.config, RECORD, None)
    if not record or not record.get("layers"):
        raise ValueError(
            f"{path}: its config records no CAReLU swap ({RECORD} is missing from config.json); it was saved from a "
            f"model without CAReLU. Use {model_cls.__name__}.from_pretrained instead."
        )
    layers: dict[str, dict[str, Any]] = record["layers"]
    # each layer with its alpha, beta layout (per-channel ones recorded before their first forward have no
    # num_channels yet: they are created lazily, then sized by the saved weights below)
    kinds = sorted({(layer["replaces"], layer.get("params", "layer")) for layer in layers.values()})
    for cls, params in kinds:
        names = [name for name, layer in layers.items() if (layer["replaces"], layer.get("params", "layer")) == (cls, params)]
        swap_activations(model, cls, include=[f"^{re.escape(name)}$" for name in names],
                         factory=lambda old, params=params: CAReLU(params=params))
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
            parameter = model.get_parameter(key)
            if is_lazy(parameter):  # per-channel alpha, beta recorded before the layer's first forward
                parameter.materialize(value.shape)
            parameter.copy_(value)
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
