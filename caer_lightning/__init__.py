"""caer_lightning: Competition-based Adaptive ReLU (arXiv 2407.19441) for PyTorch Lightning and timm.

`import caer_lightning` is cheap: each public name is imported on first use (PEP 562), so a plain PyTorch or
Fabric user who takes `CAReLU`, `swap_activations` or `carelu_param_groups` never imports Lightning.
"""

from __future__ import annotations

import importlib
from importlib import metadata
from typing import TYPE_CHECKING, Any

try:  # the one version string is pyproject.toml's, as installed
    __version__ = metadata.version("caer-lightning")
except metadata.PackageNotFoundError:  # a checkout on sys.path that was never installed
    __version__ = "0+unknown"

# public name -> the module that defines it
_EXPORTS = {
    "CAReLU": "caer_lightning.activation",
    "swap_activations": "caer_lightning.swap",
    "carelu_param_groups": "caer_lightning.param_groups",
    "CAReLUCallback": "caer_lightning.callbacks.carelu",
    "load_checkpoint": "caer_lightning.checkpoint",
}
__all__ = list(_EXPORTS)

if TYPE_CHECKING:
    from caer_lightning.activation import CAReLU
    from caer_lightning.callbacks.carelu import CAReLUCallback
    from caer_lightning.checkpoint import load_checkpoint
    from caer_lightning.param_groups import carelu_param_groups
    from caer_lightning.swap import swap_activations


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'caer_lightning' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
