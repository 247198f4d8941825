"""CAReLU implementations: `reference` (the oracle) and `eager` (custom autograd.Function)."""

from caer_lightning.ops.common import REDUCTIONS, VARIANTS
from caer_lightning.ops.eager import carelu_eager
from caer_lightning.ops.reference import carelu_reference

IMPLEMENTATIONS = {"eager": carelu_eager, "reference": carelu_reference}

__all__ = ["IMPLEMENTATIONS", "REDUCTIONS", "VARIANTS", "carelu_eager", "carelu_reference"]
