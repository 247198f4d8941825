"""CAReLU implementations: `reference` (autograd through plain ops, the oracle), and the registered custom op
`op.carelu_op` whose forward and backward run on `eager` PyTorch ops or on `triton` kernels."""

from caer_lightning.ops.common import REDUCTIONS, VARIANTS

__all__ = ["REDUCTIONS", "VARIANTS"]
