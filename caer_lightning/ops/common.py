"""Names, argument checks and group bookkeeping shared by every CAReLU implementation."""

from __future__ import annotations

import math

import torch
from torch import Tensor

VARIANTS = ("energy", "l1", "count")
REDUCTIONS = ("sample", "channel", "token")
PARAMS = ("layer", "channel")  # one α, β pair per layer (the paper), or one per channel
_MIN_DIMS = {"sample": 2, "channel": 3, "token": 1}


def _is_finite_number(value: object) -> bool:
    """A real number other than ±inf and nan. `abs(v) < inf` rather than math.isfinite: once K or eps changed
    between two torch.compile runs, dynamo passes them as symbolic floats, which comparisons read (guarded) and
    math.isfinite does not."""
    return not isinstance(value, bool) and isinstance(value, (int, float)) and abs(value) < math.inf


def check_options(variant: str, reduction: str, K: float, eps: float) -> None:
    """Raise a ValueError naming the argument, its bad value and the accepted values."""
    if variant not in VARIANTS:
        raise ValueError(f"variant={variant!r} is not supported; accepted values: {', '.join(VARIANTS)}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction={reduction!r} is not supported; accepted values: {', '.join(REDUCTIONS)}")
    if not _is_finite_number(K) or K <= 0:
        raise ValueError(f"K={K!r} is not supported; accepted values: a finite number > 0")
    if not _is_finite_number(eps) or eps <= 0:
        raise ValueError(f"eps={eps!r} is not supported; accepted values: a finite number > 0")


def check_params(params: str) -> None:
    """Raise a ValueError naming `params` unless it is one of PARAMS."""
    if params not in PARAMS:
        raise ValueError(f"params={params!r} is not supported; accepted values: {', '.join(PARAMS)}")


def check_finite_number(argument: str, value: object) -> None:
    """Raise a ValueError naming `argument` unless `value` is a finite real number."""
    if not _is_finite_number(value):
        raise ValueError(f"{argument}={value!r} is not supported; accepted values: a finite number")


def group_dims(z: Tensor, reduction: str) -> tuple[int, ...]:
    """The dims reduced to one competition value p for `reduction` (see docs/spec.md §1)."""
    need = _MIN_DIMS[reduction]
    if z.dim() < need:
        layout = {"sample": "(N, ...)", "channel": "(N, C, ...)", "token": "(..., C)"}[reduction]
        raise ValueError(
            f"reduction={reduction!r} needs an input with at least {need} dims {layout}, "
            f"got shape {tuple(z.shape)}; accepted reductions for this input: "
            f"{', '.join(r for r, n in _MIN_DIMS.items() if z.dim() >= n)}"
        )
    if reduction == "sample":
        return tuple(range(1, z.dim()))
    if reduction == "channel":
        return tuple(range(2, z.dim()))
    return (z.dim() - 1,)


def channel_dim(z: Tensor, reduction: str) -> int:
    """The channel axis of per-channel α, β (params="channel"): dim 1 of (N, C, ...) inputs for the sample and
    channel reductions, the last dim of (..., C) inputs for token."""
    return z.dim() - 1 if reduction == "token" else 1


def channel_view(parameter: Tensor, ndim: int, dim: int) -> Tensor:
    """A (C,) parameter shaped to broadcast along `dim` of an `ndim`-dim tensor."""
    return parameter.reshape([-1 if i == dim else 1 for i in range(ndim)])


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 for float64 inputs, float32 for everything else (half sums of squares overflow)."""
    return torch.float64 if dtype == torch.float64 else torch.float32
