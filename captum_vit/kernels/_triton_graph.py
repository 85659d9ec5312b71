"""Triton kernels for :mod:`captum_vit.kernels.graph_pruning` (imported only on the Triton path).

Two launches, no atomics (so results are deterministic):

1. ``fuse_max_kernel``: one program per (layer·example, row block) fuses the heads of its rows,
   writes the fused rows (float32) and the block's maximum.
2. ``degree_kernel``: one program per (layer·example, block, direction) reduces the block maxima
   to the layer maximum, applies the ``min_cut`` threshold on the fly and sums either the rows
   (out-degree) or the columns (in-degree) of its block.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from captum_vit.kernels._triton_utils import reduce_max, reduce_sum

TILE = 32  # rows (or columns) per program
CHUNK = 64  # columns (or rows) per inner step


@triton.jit
def fuse_max_kernel(
    attn_ptr, fused_ptr, pmax_ptr,
    B, HEADS, N, NUM_BLOCKS,
    s_l, s_b, s_h, s_r, s_c,
    FUSION: tl.constexpr, TILE: tl.constexpr, CHUNK: tl.constexpr,
):  # fmt: skip
    """FUSION indexes ("mean", "max", "min", "sum") as _common.HEAD_FUSIONS does. The attention
    stack is read through its strides, so a sliced view (prefix tokens dropped) needs no copy."""
    lb = tl.program_id(0).to(tl.int64)
    rb = tl.program_id(1)
    src = attn_ptr + (lb // B) * s_l + (lb % B) * s_b
    rows = rb * TILE + tl.arange(0, TILE)
    row_ok = rows < N
    running = tl.full([TILE, CHUNK], float("-inf"), dtype=tl.float32)
    for c0 in range(0, N, CHUNK):
        cols = c0 + tl.arange(0, CHUNK)
        ok = row_ok[:, None] & (cols < N)[None, :]
        idx = rows[:, None] * N + cols[None, :]
        if FUSION == 1:
            acc = tl.full([TILE, CHUNK], float("-inf"), dtype=tl.float32)
        elif FUSION == 2:
            acc = tl.full([TILE, CHUNK], float("inf"), dtype=tl.float32)
        else:
            acc = tl.full([TILE, CHUNK], 0.0, dtype=tl.float32)
        for hd in range(HEADS):
            v = tl.load(src + hd * s_h + rows[:, None] * s_r + cols[None, :] * s_c, mask=ok, other=0.0)
            v = v.to(tl.float32)
            if FUSION == 1:
                acc = tl.maximum(acc, v)
            elif FUSION == 2:
                acc = tl.minimum(acc, v)
            else:
                acc += v
        if FUSION == 0:
            acc = acc / HEADS
        tl.store(fused_ptr + lb * N * N + idx, acc, mask=ok)
        running = tl.maximum(running, tl.where(ok, acc, float("-inf")))
    tl.store(pmax_ptr + lb * NUM_BLOCKS + rb, reduce_max(reduce_max(running, axis=1), axis=0))


@triton.jit
def degree_kernel(
    fused_ptr, pmax_ptr, in_ptr, out_ptr,
    N, NUM_BLOCKS, min_cut,
    TILE: tl.constexpr, CHUNK: tl.constexpr, NUM_BLOCKS_P2: tl.constexpr,
):  # fmt: skip
    lb = tl.program_id(0).to(tl.int64)
    blk = tl.program_id(1)
    columns = tl.program_id(2) == 1
    pm = tl.load(pmax_ptr + lb * NUM_BLOCKS + tl.arange(0, NUM_BLOCKS_P2),
                 mask=tl.arange(0, NUM_BLOCKS_P2) < NUM_BLOCKS, other=float("-inf"))  # fmt: skip
    threshold = min_cut * reduce_max(pm, axis=0)
    mine = blk * TILE + tl.arange(0, TILE)  # the rows (or columns) this program sums
    mine_ok = mine < N
    total = tl.full([TILE], 0.0, dtype=tl.float32)
    for s0 in range(0, N, CHUNK):
        other = s0 + tl.arange(0, CHUNK)
        ok = mine_ok[:, None] & (other < N)[None, :]
        # (TILE, CHUNK) tile of rows `mine` x columns `other`, or its transpose for column sums.
        idx = tl.where(columns, other[None, :] * N + mine[:, None], mine[:, None] * N + other[None, :])
        v = tl.load(fused_ptr + lb * N * N + idx, mask=ok, other=0.0)
        total += reduce_sum(tl.where(v >= threshold, v, 0.0), axis=1)
    if columns:
        tl.store(in_ptr + lb * N + mine, total.to(in_ptr.dtype.element_ty), mask=mine_ok)
    else:
        tl.store(out_ptr + lb * N + mine, total.to(out_ptr.dtype.element_ty), mask=mine_ok)


def launch(attn: Tensor, fusion: int, min_cut: float) -> tuple[Tensor, Tensor]:
    """Run both kernels on a ``(L, B, heads, N, N)`` stack (any strides); returns (in, out) degrees."""
    n_layers, batch, heads, n, _ = attn.shape
    lb = n_layers * batch
    blocks = triton.cdiv(n, TILE)
    fused = torch.empty((lb, n, n), dtype=torch.float32, device=attn.device)
    pmax = torch.empty((lb, blocks), dtype=torch.float32, device=attn.device)
    fuse_max_kernel[(lb, blocks)](
        attn, fused, pmax, batch, heads, n, blocks, *attn.stride(), FUSION=fusion, TILE=TILE, CHUNK=CHUNK
    )
    in_deg = torch.empty((n_layers, batch, n), dtype=attn.dtype, device=attn.device)
    out_deg = torch.empty_like(in_deg)
    degree_kernel[(lb, blocks, 2)](
        fused, pmax, in_deg, out_deg, n, blocks, min_cut,
        TILE=TILE, CHUNK=CHUNK, NUM_BLOCKS_P2=triton.next_power_of_2(blocks),
    )  # fmt: skip
    return in_deg, out_deg
