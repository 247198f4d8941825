"""The CAReLU module: learnable α, β per layer, and cheap on-device statistics for the dashboards."""

from __future__ import annotations

import inspect
import math
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.lazy import LazyModuleMixin
from torch.nn.parameter import is_lazy

from caer_lightning import _compat, statistics
from caer_lightning.functional import IMPLS, carelu_parts, competition
from caer_lightning.ops.common import (
    channel_dim, channel_view, check_finite_number, check_options, check_params, group_dims,
)
from caer_lightning.statistics import HISTOGRAM_BINS, FIELDS as STATISTICS

LAYER_FIELDS = ("variant", "reduction", "K", "eps")  # what a layer computes with, besides alpha and beta
# How its alpha, beta are laid out: params ("layer": shape (1,); "channel": shape (num_channels,)), num_channels
# (None for params="layer", and before a lazy per-channel layer's first forward). Checkpoints record both.
LAYOUT_FIELDS = ("params", "num_channels")
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

    `params` lays out α, β: "layer" (default, the paper) gives one pair per layer, shape (1,); "channel" gives
    one pair per channel, shape (C,): s = K·tanh(α_c·p + β_c), C the size of dim 1 of (N, C, ...) inputs for the
    sample and channel reductions, of the last dim of (..., C) inputs for token. Pass `num_channels` to create
    them at once; without it they are created at the first forward (or when a state dict is loaded), from the
    input, as nn.LazyLinear does (the module is a `LazyCAReLU` until then). Per-channel layers run on the eager
    implementation, not on the Triton kernels.

    While training with `track_statistics` on (CAReLUCallback turns it on for logging steps), each forward
    adds, on the device and without a host sync, Σp, Σp², Σs, the number of groups with s < 0, Σ|α·p + β|, the
    number of groups and a histogram of p to a running total (each (group, channel) pair counting as a group with
    params="channel"); `pop_statistics()` returns and resets it.
    """

    params = "layer"  # class default: layers pickled before params existed hold one α, β pair

    def __new__(cls, *args: Any, **kwargs: Any) -> CAReLU:
        # CAReLU(params="channel") without num_channels: a LazyCAReLU, which becomes a CAReLU at its first forward
        if cls is CAReLU and kwargs.get("params") == "channel" and kwargs.get("num_channels") is None:
            cls = LazyCAReLU
        return super().__new__(cls)

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
        *,
        params: str = "layer",
        num_channels: int | None = None,
    ) -> None:
        super().__init__()
        check_options(variant, reduction, K, eps)
        check_finite_number("alpha_init", alpha_init)
        if beta_init is None:
            beta_init = default_beta(K)
        check_finite_number("beta_init", beta_init)
        if impl not in IMPLS:
            raise ValueError(f"impl={impl!r} is not supported; accepted values: {', '.join(IMPLS)}")
        check_layout(params, num_channels, impl)
        self.variant, self.reduction, self.K, self.eps = variant, reduction, float(K), float(eps)
        self.initial_values = (float(alpha_init), float(beta_init))
        self.params = params
        if params == "channel" and num_channels is None:  # created from the first input (LazyCAReLU)
            self.alpha, self.beta = nn.UninitializedParameter(), nn.UninitializedParameter()
        else:
            # 1-D (one pair per layer: shape (1,)): FSDP2's fully_shard refuses 0-d parameters
            self._create_parameters(1 if params == "layer" else num_channels)
        self.impl = impl
        self.site_name: str | None = None
        self.track_statistics = False
        self._statistics: Tensor | None = None  # a plain attribute, not a buffer: DDP must not broadcast it

    def _create_parameters(self, size: int) -> None:
        """α, β of shape (size,) at their initial values (replacing any held before)."""
        alpha_init, beta_init = self.initial_values
        self.alpha = nn.Parameter(torch.full((size,), alpha_init))
        self.beta = nn.Parameter(torch.full((size,), beta_init))

    @property
    def num_channels(self) -> int | None:
        """The channels of per-channel α, β; None for params="layer" and before a lazy layer's first forward."""
        if self.params != "channel" or self.has_uninitialized_params():
            return None
        return self.alpha.shape[0]

    def has_uninitialized_params(self) -> bool:
        """Whether α, β are yet to be created (a per-channel layer before its first forward)."""
        return is_lazy(self.alpha) or is_lazy(self.beta)

    def requires_grad_(self, requires_grad: bool = True) -> CAReLU:
        """As nn.Module's, also before a lazy layer's α, β exist (an uninitialized parameter takes the flag only)."""
        for parameter in self.parameters():
            parameter.requires_grad = requires_grad
        return self

    def forward(self, z: Tensor) -> Tensor:
        # Exporting (torch.export, torch.onnx.export): plain ops, so the graph needs no custom op to run
        impl = "reference" if exporting() else self.impl
        try:
            if self.params == "channel":
                self._check_channels(z)
            out, p, tanh = carelu_parts(
                z, self.alpha, self.beta, K=self.K, variant=self.variant, reduction=self.reduction,
                eps=self.eps, impl=impl, params=self.params,
            )
        except ValueError as error:  # an input this layer cannot take: say which layer
            named = self._named(error)
            if named is error:
                raise
            raise named from None
        if self.training and self.track_statistics:
            self._accumulate(z, p, self.K * tanh)
        return out

    def _named(self, error: ValueError) -> ValueError:
        """`error` with this layer's name in front (itself when the layer has no `site_name`)."""
        name = getattr(self, "site_name", None)
        return error if name is None else ValueError(f"CAReLU {name!r}: {error}")

    def _check_channels(self, z: Tensor) -> None:
        """Raise ValueError when `z` has another number of channels than this layer's α, β."""
        if torch.jit.is_tracing():  # a check would be recorded into the trace
            return
        group_dims(z, self.reduction)  # an input with too few dims gets that error
        dim, count = channel_dim(z, self.reduction), self.alpha.shape[0]
        if z.shape[dim] != count:
            raise ValueError(
                f"params='channel' with num_channels={count} (alpha, beta of shape ({count},)) cannot take an "
                f"input with {z.shape[dim]} channels (shape {tuple(z.shape)}, channel dim {dim} for "
                f"reduction={self.reduction!r}); accepted: inputs with {count} channels"
            )

    def _accumulate(self, z: Tensor, p: Tensor, s: Tensor) -> None:
        if self._statistics is None or self._statistics.device != p.device:
            self._statistics = statistics.empty_row(p.device)
        alpha, beta = self.alpha, self.beta
        if self.params == "channel":  # s is per (group, channel): α, β along the channel dim
            dim = channel_dim(z, self.reduction)
            alpha, beta = channel_view(alpha, z.dim(), dim), channel_view(beta, z.dim(), dim)
        statistics.accumulate(self._statistics, p, s, alpha, beta)

    def pop_statistics(self) -> Tensor | None:
        """Totals since the last call: one row laid out as `caer_lightning.statistics` says (float32, on the
        device); None if no tracked forward ran."""
        statistics, self._statistics = self._statistics, None
        return statistics

    def layer_config(self) -> dict[str, str | float | int | None]:
        """`LAYER_FIELDS` and `LAYOUT_FIELDS` with their values: what checkpoints record to rebuild this layer."""
        return {field: getattr(self, field) for field in (*LAYER_FIELDS, *LAYOUT_FIELDS)}

    def set_layout(self, params: str, num_channels: int | None) -> None:
        """Lay out α, β as recorded (`layer_config`), at their initial values when the layout changes: for
        rebuilding a layer whose trained values a state dict then loads. A per-channel layer recorded before it
        ran (num_channels None) keeps the layer's α, β if it is per-channel: loading a state dict sizes them."""
        check_layout(params, num_channels, self.impl)
        if params == "channel" and num_channels is None:
            if self.params != "channel":
                raise ValueError(
                    "params='channel' with num_channels=None: cannot give a params='layer' CAReLU per-channel "
                    "alpha, beta of unknown size; pass num_channels"
                )
            return
        if (params, num_channels) != (self.params, self.num_channels):
            self.params = params
            self._create_parameters(1 if params == "layer" else num_channels)

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
        if self.params == "channel":
            text += f", params='channel', num_channels={self.num_channels}"
        if self.has_uninitialized_params() or self.alpha.is_meta or self.beta.is_meta:
            return text  # no values yet (before a lazy layer's first forward, or built under torch.device("meta"))
        if _compat.is_sharded(self.alpha) or _compat.is_sharded(self.beta):  # reading them is a collective
            return f"{text}, sharded"
        if self.params == "channel":
            return f"{text}, alpha mean={self.alpha.mean().item():.4g}, beta mean={self.beta.mean().item():.4g}"
        return f"{text}, alpha={self.alpha.item():.4g}, beta={self.beta.item():.4g}"


class LazyCAReLU(LazyModuleMixin, CAReLU):
    """A CAReLU(params="channel") built without num_channels: its α, β are `UninitializedParameter`s until the
    first forward creates them with one value per channel of that input (or a state dict loads them); then it
    becomes a CAReLU. The parameter objects stay the same, so an optimizer built before holds them."""

    cls_to_become = CAReLU

    def initialize_parameters(self, z: Tensor) -> None:
        """LazyModuleMixin's first-forward hook: create α, β at their initial values, one per channel of `z`."""
        if not self.has_uninitialized_params():
            return
        try:
            group_dims(z, self.reduction)  # an input with too few dims for the reduction gets that error
        except ValueError as error:
            named = self._named(error)
            if named is error:
                raise
            raise named from None
        count = z.shape[channel_dim(z, self.reduction)]
        with torch.no_grad():
            for parameter, value in zip((self.alpha, self.beta), self.initial_values):
                parameter.materialize((count,))
                parameter.fill_(value)


def check_layout(params: str, num_channels: int | None, impl: str = "auto") -> None:
    """Raise a ValueError naming the argument, its bad value and the accepted values."""
    check_params(params)
    if num_channels is not None:
        if params != "channel":
            raise ValueError(
                f"num_channels={num_channels!r} is not supported with params={params!r}; accepted values: None "
                "(num_channels sizes per-channel alpha, beta: pass params='channel')"
            )
        if isinstance(num_channels, bool) or not isinstance(num_channels, int) or num_channels < 1:
            raise ValueError(
                f"num_channels={num_channels!r} is not supported; accepted values: None (alpha, beta are created "
                "at the first forward, one per channel of its input) or an int >= 1"
            )
    if params == "channel" and impl == "triton":
        raise ValueError(
            f"impl='triton' is not supported with params='channel' (the Triton kernels take one alpha, beta per "
            f"layer); accepted values with params='channel': {', '.join(i for i in IMPLS if i != 'triton')}"
        )


# `__new__` takes (*args, **kwargs): tell inspect (and so jsonargparse, LayerSwap.recipe) the real arguments
CAReLU.__signature__ = inspect.signature(CAReLU.__init__).replace(
    parameters=list(inspect.signature(CAReLU.__init__).parameters.values())[1:]
)
