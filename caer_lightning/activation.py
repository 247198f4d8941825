"""The CAReLU module: learnable α, β per layer, and cheap on-device statistics for the dashboards."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from caer_lightning import _compat, statistics
from caer_lightning.functional import IMPLS, carelu_parts, competition
from caer_lightning.ops.common import check_finite_number, check_options
from caer_lightning.statistics import HISTOGRAM_BINS, FIELDS as STATISTICS

LAYER_FIELDS = ("variant", "reduction", "K", "eps")  # what a layer computes with, besides alpha and beta
PARAMETER_NAMES = ("alpha", "beta")


def exporting() -> bool:
    """Whether the model is being captured for export (torch.export, either torch.onnx exporter)."""
    return torch.compiler.is_exporting() or torch.onnx.is_in_onnx_export()


def default_beta(K: float) -> float:
    """β that makes s = K·tanh(β) = 1 when α = 0, so CAReLU equals ReLU at the moment of the swap."""
    if K <= 1:
        raise ValueError(
            f"K={K!r} cannot reproduce ReLU at init (|s| < K <= 1); pass beta_init explicitly or use K > 1"
        )
    return math.atanh(1.0 / K)


class CAReLU(nn.Module):
    """Competition-based Adaptive ReLU (arXiv 2407.19441): ReLU(s·z), s = K·tanh(α·p + β).

    p is the share of the group's pre-activations won by the positives (`variant`), computed per sample,
    per channel or per token (`reduction`). At the default init (α = 0, β = atanh(1/K)) it equals ReLU.
    `inplace` is accepted, as torch's and timm's activations take it (`act_layer(inplace=True)`), and ignored:
    CAReLU never works in place. `impl` picks the implementation (see `functional.carelu`); it changes speed,
    not results, and is not recorded in checkpoints. `site_name` (set by `swap_activations`) names the layer in error messages.

    While training with `track_statistics` on (CAReLUCallback turns it on for logging steps), each forward
    adds, on the device and without a host sync, Σp, Σp², Σs, the number of groups with s < 0, Σ|α·p + β|, the
    number of groups and a histogram of p to a running total; `pop_statistics()` returns and resets it.
    """

    def __init__(
        self,
        variant: str = "energy",
        reduction: str = "sample",
        K: float = 2.0,
        alpha_init: float = 0.0,
        beta_init: float | None = None,
        eps: float = 1e-6,
        inplace: bool | None = False,
        impl: str = "auto",
    ) -> None:
        super().__init__()
        check_options(variant, reduction, K, eps)
        check_finite_number("alpha_init", alpha_init)
        if beta_init is None:
            beta_init = default_beta(K)
        check_finite_number("beta_init", beta_init)
        if impl not in IMPLS:
            raise ValueError(f"impl={impl!r} is not supported; accepted values: {', '.join(IMPLS)}")
        self.variant, self.reduction, self.K, self.eps = variant, reduction, float(K), float(eps)
        # 1-D (one pair per layer: shape (1,)): FSDP2's fully_shard refuses 0-d parameters
        self.alpha = nn.Parameter(torch.full((1,), float(alpha_init)))
        self.beta = nn.Parameter(torch.full((1,), float(beta_init)))
        self.impl = impl
        self.site_name: str | None = None
        self.track_statistics = False
        self._statistics: Tensor | None = None  # a plain attribute, not a buffer: DDP must not broadcast it

    def forward(self, z: Tensor) -> Tensor:
        # Exporting (torch.export, torch.onnx.export): plain ops, so the graph needs no custom op to run
        impl = "reference" if exporting() else self.impl
        try:
            out, p, tanh = carelu_parts(
                z, self.alpha, self.beta, K=self.K, variant=self.variant, reduction=self.reduction,
                eps=self.eps, impl=impl,
            )
        except ValueError as error:  # an input this layer cannot take: say which layer
            name = getattr(self, "site_name", None)
            if name is None:
                raise
            raise ValueError(f"CAReLU {name!r}: {error}") from None
        if self.training and self.track_statistics:
            self._accumulate(p, self.K * tanh)
        return out

    def _accumulate(self, p: Tensor, s: Tensor) -> None:
        if self._statistics is None or self._statistics.device != p.device:
            self._statistics = statistics.empty_row(p.device)
        statistics.accumulate(self._statistics, p, s, self.alpha, self.beta)

    def pop_statistics(self) -> Tensor | None:
        """Totals since the last call: one row laid out as `caer_lightning.statistics` says (float32, on the
        device); None if no tracked forward ran."""
        statistics, self._statistics = self._statistics, None
        return statistics

    def layer_config(self) -> dict[str, str | float]:
        """`LAYER_FIELDS` and their values: what checkpoints record to rebuild this layer."""
        return {field: getattr(self, field) for field in LAYER_FIELDS}

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs) -> None:
        """Checkpoints written before α, β became 1-D hold them as 0-d tensors: read those as shape (1,)."""
        for name in PARAMETER_NAMES:
            value = state_dict.get(prefix + name)
            if isinstance(value, Tensor) and value.dim() == 0:
                state_dict[prefix + name] = value.reshape(1)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def competition(self, z: Tensor) -> Tensor:
        """p per group: (N,) for sample, (N, C) for channel, z.shape[:-1] for token."""
        return competition(z, variant=self.variant, reduction=self.reduction, eps=self.eps)

    def extra_repr(self) -> str:
        text = f"variant={self.variant!r}, reduction={self.reduction!r}, K={self.K:g}, eps={self.eps:g}"
        if self.alpha.is_meta or self.beta.is_meta:  # no values yet (e.g. built under torch.device("meta"))
            return text
        if _compat.is_sharded(self.alpha) or _compat.is_sharded(self.beta):  # reading them is a collective
            return f"{text}, sharded"
        return f"{text}, alpha={self.alpha.item():.4g}, beta={self.beta.item():.4g}"
