"""caer_lightning: Competition-based Adaptive ReLU (arXiv 2407.19441) for PyTorch Lightning and timm."""

from caer_lightning.activation import CAReLU
from caer_lightning.callbacks import CAReLUCallback
from caer_lightning.checkpoint import load_checkpoint
from caer_lightning.swap import swap_activations

__version__ = "0.1.0"
__all__ = ["CAReLU", "CAReLUCallback", "load_checkpoint", "swap_activations"]
