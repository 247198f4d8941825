"""Triton kernels for CAReLU: a split reduction and an elementwise apply, for forward and backward.

A tensor is seen as (A, R, B): A·B groups of R elements, element (a, r, b) at a·sA + r·sR + b·sB. Contiguous
inputs give B = 1 (each group a dense run: sample, channel of NCHW, token); channels_last inputs reduced per
channel give B = C (a column reduction, read in place, no copy). Every kernel loads the input in its own
dtype and accumulates in float32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch import Tensor

VARIANT_CODES = {"energy": 0, "l1": 1, "count": 2}
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class GroupLayout:
    """Shape and strides of the (A, R, B) view of a tensor whose dims[0:] are reduced."""

    A: int
    R: int
    B: int
    sA: int
    sR: int
    sB: int


def group_layout(z: Tensor, first_reduced_dim: int) -> GroupLayout | None:
    """The (A, R, B) view of `z` reduced over dims [first_reduced_dim, ndim), or None if it needs a copy."""
    d, shape = first_reduced_dim, z.shape
    A, R = math.prod(shape[:d]), math.prod(shape[d:])
    if z.is_contiguous():
        return GroupLayout(A, R, 1, R, 1, 0)
    channels_last = (z.dim() == 4 and z.is_contiguous(memory_format=torch.channels_last)) or (
        z.dim() == 5 and z.is_contiguous(memory_format=torch.channels_last_3d)
    )
    if channels_last and d == 1:  # each sample is still one dense block
        return GroupLayout(A, R, 1, R, 1, 0)
    if channels_last and d == 2:  # per (sample, channel): stride C along the spatial positions
        C = shape[1]
        return GroupLayout(shape[0], R, C, R * C, C, 1)
    return None


def _launch_shape(layout: GroupLayout, reduce: bool) -> tuple[int, int, int, int]:
    """(BLOCK_R, BLOCK_B, splits of R per group, R per split) for a layout."""
    block_b = 1 if layout.B == 1 else min(triton.next_power_of_2(layout.B), 64)
    block_r = max(16, 2048 // block_b)
    block_r = min(block_r, max(16, triton.next_power_of_2(layout.R)))
    programs = layout.A * triton.cdiv(layout.B, block_b)
    blocks = triton.cdiv(layout.R, block_r)
    splits = max(1, min(blocks, triton.cdiv(1024, programs))) if reduce else blocks  # enough programs to fill a GPU
    per_split = triton.cdiv(blocks, splits) * block_r
    return block_r, block_b, triton.cdiv(layout.R, per_split), per_split


@triton.jit
def _offsets(a, r, b, sA, sR, sB):
    return a.to(tl.int64) * sA + r[:, None].to(tl.int64) * sR + b[None, :].to(tl.int64) * sB


@triton.jit
def _tanh(x):
    return 1.0 - 2.0 / (tl.exp(2.0 * x) + 1.0)  # saturates to ±1 without overflow trouble


@triton.jit
def _sum_splits(partial_ptr, group, mask, splits, groups):
    """Σ over the splits of one partial-sum buffer (splits, groups), for this program's groups."""
    total = tl.load(partial_ptr + group, mask=mask, other=0.0)
    for split in range(1, splits):
        total += tl.load(partial_ptr + split * groups + group, mask=mask, other=0.0)
    return total


@triton.jit
def _reduce_forward(z_ptr, pos_ptr, tot_ptr, A, R, B, sA, sR, sB, per_split,
                    VARIANT: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_B: tl.constexpr):
    """Partial sums per (split, a, b): positives' share (pos) and total (tot) for the competition value."""
    a, b_block, split = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    b = b_block * BLOCK_B + tl.arange(0, BLOCK_B)
    r_start = split * per_split
    r_end = tl.minimum(r_start + per_split, R)
    pos = tl.zeros([BLOCK_R, BLOCK_B], dtype=tl.float32)
    tot = tl.zeros([BLOCK_R, BLOCK_B], dtype=tl.float32)
    for r0 in range(r_start, r_end, BLOCK_R):
        r = r0 + tl.arange(0, BLOCK_R)
        mask = (r < r_end)[:, None] & (b < B)[None, :]
        x = tl.load(z_ptr + _offsets(a, r, b, sA, sR, sB), mask=mask, other=0.0).to(tl.float32)
        if VARIANT == 0:
            pos += tl.where(x > 0, x * x, 0.0)
            tot += x * x
        elif VARIANT == 1:
            pos += tl.maximum(x, 0.0)
            tot += tl.abs(x)
        else:
            pos += (x > 0).to(tl.float32)
    out = (split * A + a).to(tl.int64) * B + b
    tl.store(pos_ptr + out, tl.sum(pos, axis=0), mask=b < B)
    tl.store(tot_ptr + out, tl.sum(tot, axis=0), mask=b < B)


@triton.jit
def _apply_forward(z_ptr, pos_ptr, tot_ptr, alpha_ptr, beta_ptr, out_ptr, p_ptr, tanh_ptr, norm_ptr,
                   A, R, B, sA, sR, sB, splits, K, eps,
                   VARIANT: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_B: tl.constexpr):
    """Per group: p from the split partial sums, s = K·tanh(α·p + β) (α, β read on the device); then
    out = ReLU(s · z) in z's dtype and strides. The first row of programs also stores p, tanh and the
    normaliser of p for backward and the dashboards."""
    a, r_block, b_block = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    r = r_block * BLOCK_R + tl.arange(0, BLOCK_R)
    b = b_block * BLOCK_B + tl.arange(0, BLOCK_B)
    in_b = b < B
    group = a.to(tl.int64) * B + b
    positive = _sum_splits(pos_ptr, group, in_b, splits, A * B)
    if VARIANT == 2:
        normaliser = tl.zeros([BLOCK_B], dtype=tl.float32) + R
    else:
        normaliser = _sum_splits(tot_ptr, group, in_b, splits, A * B) + eps
    p = positive / normaliser
    tanh = _tanh(tl.load(alpha_ptr).to(tl.float32) * p + tl.load(beta_ptr).to(tl.float32))
    if r_block == 0:
        tl.store(p_ptr + group, p, mask=in_b)
        tl.store(tanh_ptr + group, tanh, mask=in_b)
        tl.store(norm_ptr + group, normaliser, mask=in_b)
    s = K * tanh
    mask = (r < R)[:, None] & in_b[None, :]
    offsets = _offsets(a, r, b, sA, sR, sB)
    x = tl.load(z_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    y = tl.maximum(x * s[None, :], 0.0)
    tl.store(out_ptr + offsets, y.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _reduce_backward(g_ptr, z_ptr, tanh_ptr, G_ptr, A, R, B, sA, sR, sB, per_split, K,
                     BLOCK_R: tl.constexpr, BLOCK_B: tl.constexpr):
    """Partial G = Σ g·[s·z > 0]·z per (split, a, b), s = K·tanh."""
    a, b_block, split = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    b = b_block * BLOCK_B + tl.arange(0, BLOCK_B)
    s = K * tl.load(tanh_ptr + a.to(tl.int64) * B + b, mask=b < B, other=0.0)
    r_start = split * per_split
    r_end = tl.minimum(r_start + per_split, R)
    acc = tl.zeros([BLOCK_R, BLOCK_B], dtype=tl.float32)
    for r0 in range(r_start, r_end, BLOCK_R):
        r = r0 + tl.arange(0, BLOCK_R)
        mask = (r < r_end)[:, None] & (b < B)[None, :]
        offsets = _offsets(a, r, b, sA, sR, sB)
        x = tl.load(z_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        g = tl.load(g_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        acc += tl.where(x * s[None, :] > 0, g * x, 0.0)
    out = (split * A + a).to(tl.int64) * B + b
    tl.store(G_ptr + out, tl.sum(acc, axis=0), mask=b < B)


@triton.jit
def _apply_backward(g_ptr, z_ptr, G_ptr, p_ptr, tanh_ptr, norm_ptr, alpha_ptr, dz_ptr, du_ptr,
                    A, R, B, sA, sR, sB, splits, K,
                    VARIANT: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_B: tl.constexpr):
    """dL/dz = g·[s·z > 0]·s + c·∂p/∂z-term (energy: max(z,0) − p z; l1: [z>0] − p sign z; count: none), with
    du = G·K·(1 − t²) and c = du·α·(2 for energy)/normaliser per group. The first row of programs stores du·p
    and du per group, summed afterwards into dL/dα and dL/dβ."""
    a, r_block, b_block = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    r = r_block * BLOCK_R + tl.arange(0, BLOCK_R)
    b = b_block * BLOCK_B + tl.arange(0, BLOCK_B)
    in_b = b < B
    group = a.to(tl.int64) * B + b
    tanh = tl.load(tanh_ptr + group, mask=in_b, other=0.0)
    p = tl.load(p_ptr + group, mask=in_b, other=0.0)
    du = _sum_splits(G_ptr, group, in_b, splits, A * B) * (K * (1.0 - tanh * tanh))
    if r_block == 0:
        tl.store(du_ptr + group, du * p, mask=in_b)
        tl.store(du_ptr + A * B + group, du, mask=in_b)
    s = (K * tanh)[None, :]
    mask = (r < R)[:, None] & in_b[None, :]
    offsets = _offsets(a, r, b, sA, sR, sB)
    x = tl.load(z_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(g_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    dz = tl.where(x * s > 0, g * s, 0.0)
    if VARIANT != 2:
        normaliser = tl.load(norm_ptr + group, mask=in_b, other=1.0)
        c = (du * tl.load(alpha_ptr).to(tl.float32) * (2.0 if VARIANT == 0 else 1.0) / normaliser)[None, :]
        if VARIANT == 0:
            dz += c * (tl.maximum(x, 0.0) - p[None, :] * x)
        else:
            dz += c * (tl.where(x > 0, 1.0, 0.0) - p[None, :] * tl.where(x > 0, 1.0, tl.where(x < 0, -1.0, 0.0)))
    tl.store(dz_ptr + offsets, dz.to(dz_ptr.dtype.element_ty), mask=mask)


def forward(z: Tensor, alpha: Tensor, beta: Tensor, K: float, variant: str, eps: float,
            layout: GroupLayout) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(ReLU(s·z), p, tanh, normaliser): two launches; p, tanh, normaliser float32 (A·B,) tensors."""
    block_r, block_b, splits, per_split = _launch_shape(layout, reduce=True)
    partial = torch.empty((2, splits, layout.A, layout.B), device=z.device, dtype=torch.float32)
    grid = (layout.A, triton.cdiv(layout.B, block_b), splits)
    _reduce_forward[grid](z, partial[0], partial[1], layout.A, layout.R, layout.B, layout.sA, layout.sR, layout.sB,
                          per_split, VARIANT=VARIANT_CODES[variant], BLOCK_R=block_r, BLOCK_B=block_b)
    out = torch.empty_like(z)  # same strides as z for the dense layouts accepted by group_layout
    p, tanh, normaliser = (torch.empty(layout.A * layout.B, device=z.device, dtype=torch.float32) for _ in range(3))
    block_r, block_b, _, _ = _launch_shape(layout, reduce=False)
    grid = (layout.A, triton.cdiv(layout.R, block_r), triton.cdiv(layout.B, block_b))
    _apply_forward[grid](z, partial[0], partial[1], alpha, beta, out, p, tanh, normaliser,
                         layout.A, layout.R, layout.B, layout.sA, layout.sR, layout.sB, splits, float(K), float(eps),
                         VARIANT=VARIANT_CODES[variant], BLOCK_R=block_r, BLOCK_B=block_b)
    return out, p, tanh, normaliser


def backward(grad: Tensor, z: Tensor, p: Tensor, tanh: Tensor, normaliser: Tensor, alpha: Tensor, K: float,
             variant: str, layout: GroupLayout) -> tuple[Tensor, Tensor]:
    """(dL/dz, (dL/dα, dL/dβ)): two launches and one sum; `grad` must have z's strides."""
    block_r, block_b, splits, per_split = _launch_shape(layout, reduce=True)
    G = torch.empty((splits, layout.A, layout.B), device=z.device, dtype=torch.float32)
    grid = (layout.A, triton.cdiv(layout.B, block_b), splits)
    _reduce_backward[grid](grad, z, tanh, G, layout.A, layout.R, layout.B, layout.sA, layout.sR, layout.sB, per_split,
                           float(K), BLOCK_R=block_r, BLOCK_B=block_b)
    dz = torch.empty_like(z)
    du = torch.empty((2, layout.A * layout.B), device=z.device, dtype=torch.float32)
    block_r, block_b, _, _ = _launch_shape(layout, reduce=False)
    grid = (layout.A, triton.cdiv(layout.R, block_r), triton.cdiv(layout.B, block_b))
    _apply_backward[grid](grad, z, G, p, tanh, normaliser, alpha, dz, du, layout.A, layout.R, layout.B, layout.sA,
                          layout.sR, layout.sB, splits, float(K), VARIANT=VARIANT_CODES[variant],
                          BLOCK_R=block_r, BLOCK_B=block_b)
    return dz, du.sum(1)
