"""Triton kernels for :func:`captum_vit.kernels.rollout.rollout_step` and
:func:`~captum_vit.kernels.rollout.rollout_row_step` (imported only on the Triton path), one
program per block of rows: the factor ``(A + I) / s`` in one kernel, or its product with a row
vector without writing the factor."""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from captum_vit.kernels._triton_utils import reduce_sum

TILE = 16  # rows per program


@triton.jit
def rollout_step_kernel(a_ptr, out_ptr, N, TILE: tl.constexpr, CHUNK: tl.constexpr, NORMALIZE: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    rows = tl.program_id(1) * TILE + tl.arange(0, TILE)
    row_ok = rows < N
    base = b * N * N
    # Row sums of A + I (Abnar & Zuidema 2020, §3: residual connections as the identity).
    total = tl.full([TILE], 0.0, dtype=tl.float32)
    for c0 in range(0, N, CHUNK):
        cols = c0 + tl.arange(0, CHUNK)
        ok = row_ok[:, None] & (cols < N)[None, :]
        v = tl.load(a_ptr + base + rows[:, None] * N + cols[None, :], mask=ok, other=0.0).to(tl.float32)
        v += tl.where(rows[:, None] == cols[None, :], 1.0, 0.0)
        total += reduce_sum(v, axis=1)
    total = tl.where(row_ok, total, 1.0)  # rows past N: avoid 0/0 in lanes that are never stored
    if not NORMALIZE:  # GAE's (I + A) factors (Chefer et al. ICCV 2021, rule 6) are not normalised
        total = tl.full([TILE], 1.0, dtype=tl.float32)
    for c0 in range(0, N, CHUNK):
        cols = c0 + tl.arange(0, CHUNK)
        ok = row_ok[:, None] & (cols < N)[None, :]
        idx = base + rows[:, None] * N + cols[None, :]
        v = tl.load(a_ptr + idx, mask=ok, other=0.0).to(tl.float32)
        v += tl.where(rows[:, None] == cols[None, :], 1.0, 0.0)
        tl.store(out_ptr + idx, (v / total[:, None]).to(out_ptr.dtype.element_ty), mask=ok)


def launch(a: Tensor, row_normalize: bool = True) -> Tensor:
    """``(A + I)``, row-normalised unless ``row_normalize=False``, for a contiguous ``(B, N, N)`` tensor."""
    b, n, _ = a.shape
    out = torch.empty_like(a)
    chunk = min(triton.next_power_of_2(n), 256)
    rollout_step_kernel[(b, triton.cdiv(n, TILE))](a, out, n, TILE=TILE, CHUNK=chunk, NORMALIZE=row_normalize)
    return out


@triton.jit
def rollout_row_kernel(a_ptr, v_ptr, part_ptr, N, TILE: tl.constexpr, CHUNK: tl.constexpr, NORMALIZE: tl.constexpr):
    # Program (b, t) owns rows t*TILE.. of A and writes their share of r (A + I) / s to
    # part[b, t, :]; the shares are summed by the launcher in a fixed order (deterministic,
    # unlike atomics).
    b = tl.program_id(0).to(tl.int64)
    t = tl.program_id(1)
    rows = t * TILE + tl.arange(0, TILE)
    row_ok = rows < N
    base = b * N * N
    u = tl.load(v_ptr + b * N + rows, mask=row_ok, other=0.0).to(tl.float32)
    if NORMALIZE:  # rollout (Abnar & Zuidema 2020, §3); GAE's factors are not normalised
        total = tl.full([TILE], 1.0, dtype=tl.float32)  # the identity's entry
        for c0 in range(0, N, CHUNK):
            cols = c0 + tl.arange(0, CHUNK)
            ok = row_ok[:, None] & (cols < N)[None, :]
            a = tl.load(a_ptr + base + rows[:, None] * N + cols[None, :], mask=ok, other=0.0).to(tl.float32)
            total += reduce_sum(a, axis=1)
        u = u / total
    out = part_ptr + (b * tl.num_programs(1) + t) * N
    for c0 in range(0, N, CHUNK):
        cols = c0 + tl.arange(0, CHUNK)
        ok = row_ok[:, None] & (cols < N)[None, :]
        a = tl.load(a_ptr + base + rows[:, None] * N + cols[None, :], mask=ok, other=0.0).to(tl.float32)
        a += tl.where(rows[:, None] == cols[None, :], 1.0, 0.0)
        tl.store(out + cols, reduce_sum(u[:, None] * a, axis=0), mask=cols < N)


def launch_rows(a: Tensor, rows: Tensor, row_normalize: bool = True) -> Tensor:
    """``rows (A + I)``, with the rows of ``A + I`` normalised unless ``row_normalize=False``,
    for a contiguous ``(B, N, N)`` ``a`` and ``(B, N)`` ``rows``; float32 ``(B, N)``."""
    b, n, _ = a.shape
    tiles = triton.cdiv(n, TILE)
    part = torch.empty(b, tiles, n, dtype=torch.float32, device=a.device)
    chunk = min(triton.next_power_of_2(n), 256)
    rollout_row_kernel[(b, tiles)](a, rows, part, n, TILE=TILE, CHUNK=chunk, NORMALIZE=row_normalize)
    return part.sum(dim=1)
