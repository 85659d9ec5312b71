"""Triton kernel for :mod:`captum_vit.kernels.perturbation` (imported only on the Triton path).

One program handles one image and a block of pixels: it reads each pixel's removal rank and
each channel value once and writes that pixel of all K perturbed copies.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

BLOCK = 256


@triton.jit
def perturbation_fwd(
    img_ptr, rank_ptr, count_ptr, base_ptr, out_ptr,
    B, C, HW, W, K,
    sb_b, sb_c, sb_y, sb_x,
    BLOCK: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    valid = offs < HW
    y = offs // W
    x = offs % W
    rank = tl.load(rank_ptr + b * HW + offs, mask=valid, other=0)
    for c in range(C):
        v = tl.load(img_ptr + (b * C + c) * HW + offs, mask=valid, other=0.0)
        bv = tl.load(base_ptr + b * sb_b + c * sb_c + y * sb_y + x * sb_x, mask=valid, other=0.0)
        for k in range(K):
            removed = rank < tl.load(count_ptr + k)
            dst = ((k * B + b) * C + c) * HW + offs
            tl.store(out_ptr + dst, tl.where(removed, bv, v), mask=valid)


def launch(images: Tensor, ranks: Tensor, counts: Tensor, base: Tensor) -> Tensor:
    """Run :func:`perturbation_fwd`: ``(K, B, C, H, W)`` from images, ``(B, H*W)`` ranks,
    ``(K,)`` removal counts and a ``(B, C, H, W)`` baseline view (strides may be zero)."""
    b, c, h, w = images.shape
    k = counts.shape[0]
    out = torch.empty((k, b, c, h, w), dtype=images.dtype, device=images.device)
    grid = (b, triton.cdiv(h * w, BLOCK))
    perturbation_fwd[grid](
        images, ranks.contiguous(), counts, base, out, b, c, h * w, w, k, *base.stride(), BLOCK=BLOCK
    )
    return out
