"""The per-layer statistics a CAReLU adds up on logging steps: one float32 row per layer, laid out here once and
read everywhere by field name (`column`), never by position."""

from __future__ import annotations

import torch
from torch import Tensor

# Σp, Σp², Σs, groups with s < 0, Σ|α·p + β| (how far tanh is into saturation), number of groups;
# then HISTOGRAM_BINS counts of p.
FIELDS = ("sum_p", "sum_p2", "sum_s", "neg_win", "sum_saturation", "groups")
HISTOGRAM_BINS = 20  # equal-width bins of p over [0, 1]
WIDTH = len(FIELDS) + HISTOGRAM_BINS
_INDEX = {name: i for i, name in enumerate(FIELDS)}
_SUMS = ("sum_p", "sum_p2", "sum_s", "neg_win", "sum_saturation")  # adjacent in FIELDS: added as one slice
_SUMS_AT = slice(_INDEX[_SUMS[0]], _INDEX[_SUMS[-1]] + 1)
assert FIELDS[_SUMS_AT] == _SUMS


def empty_row(device: torch.device | str | None = None) -> Tensor:
    """A row of zeros: no group seen yet."""
    return torch.zeros(WIDTH, dtype=torch.float32, device=device)


def column(table: Tensor, field: str) -> Tensor:
    """The values of `field` (one of FIELDS) in a row or in a (layers, WIDTH) table."""
    return table[..., _INDEX[field]]


def histogram(table: Tensor) -> Tensor:
    """The HISTOGRAM_BINS counts of p of a row or of each row of a table."""
    return table[..., len(FIELDS):]


def mean(table: Tensor, field: str) -> Tensor:
    """`field` per group (NaN for a layer that saw no group)."""
    return column(table, field) / column(table, "groups")


@torch.no_grad()
def accumulate(row: Tensor, p: Tensor, s: Tensor, alpha: Tensor, beta: Tensor) -> None:
    """Add one forward's groups (p and s per group) to `row`, on the device, without a host sync.

    Per-channel α, β (shaped to broadcast against p, as s is per (group, channel)): each (group, channel) pair
    counts as one group, with its group's p, its s and its |α_c·p + β_c|; every group holds all C channels, so
    the mean of p is still its mean over the groups."""
    if s.shape != p.shape:  # per (group, channel)
        p = p.expand_as(s)
    saturation = torch.addcmul(beta.to(p.dtype), alpha.to(p.dtype), p).abs_().reshape(-1)  # |α·p + β|
    p, s = p.reshape(-1), s.reshape(-1)
    sums = {"sum_p": p.sum(), "sum_p2": p.square().sum(), "sum_s": s.sum(), "neg_win": (s < 0).sum(dtype=s.dtype),
            "sum_saturation": saturation.sum()}
    row[_SUMS_AT] += torch.stack([sums[f] for f in _SUMS])
    row[_INDEX["groups"]] += p.numel()
    bins = (p * HISTOGRAM_BINS).long().clamp_(0, HISTOGRAM_BINS - 1)
    # index_add_ into fixed bins: no host sync (bincount reads its bounds back); counts add exactly
    histogram(row).index_add_(0, bins, torch.ones_like(p, dtype=torch.float32))
