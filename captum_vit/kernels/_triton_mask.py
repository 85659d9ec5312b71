"""Triton kernels for :mod:`captum_vit.kernels.mask` (imported only on the Triton path).

One program handles one image and a block of pixels: it interpolates the mask once per pixel
(from precomputed row/column tables, so the indices match torch's exactly) and reuses it for
every channel. Arithmetic is float32 whatever the storage dtype.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

BLOCK = 256


@triton.jit
def _mask_value(mask_ptr, b, y, x, valid, h, w, y0_ptr, y1_ptr, ly_ptr, x0_ptr, x1_ptr, lx_ptr):
    """Bilinear (or nearest, with zero weights) interpolation of the coarse mask at (y, x)."""
    y0 = tl.load(y0_ptr + y, mask=valid, other=0)
    y1 = tl.load(y1_ptr + y, mask=valid, other=0)
    ly = tl.load(ly_ptr + y, mask=valid, other=0.0)
    x0 = tl.load(x0_ptr + x, mask=valid, other=0)
    x1 = tl.load(x1_ptr + x, mask=valid, other=0)
    lx = tl.load(lx_ptr + x, mask=valid, other=0.0)
    base = mask_ptr + b * h * w
    m00 = tl.load(base + y0 * w + x0, mask=valid, other=0.0).to(tl.float32)
    m01 = tl.load(base + y0 * w + x1, mask=valid, other=0.0).to(tl.float32)
    m10 = tl.load(base + y1 * w + x0, mask=valid, other=0.0).to(tl.float32)
    m11 = tl.load(base + y1 * w + x1, mask=valid, other=0.0).to(tl.float32)
    top = (1.0 - lx) * m00 + lx * m01
    bottom = (1.0 - lx) * m10 + lx * m11
    return (1.0 - ly) * top + ly * bottom


@triton.jit
def apply_mask_fwd(
    img_ptr, mask_ptr, base_ptr, mean_ptr, std_ptr, out_ptr,
    y0_ptr, y1_ptr, ly_ptr, x0_ptr, x1_ptr, lx_ptr,
    C, H, W, h, w,
    sb_b, sb_c, sb_y, sb_x,
    BLOCK: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    valid = offs < H * W
    y = offs // W
    x = offs % W
    m = _mask_value(mask_ptr, b, y, x, valid, h, w, y0_ptr, y1_ptr, ly_ptr, x0_ptr, x1_ptr, lx_ptr)
    for c in range(C):
        pix = (b * C + c) * H * W + offs
        v = tl.load(img_ptr + pix, mask=valid, other=0.0).to(tl.float32)
        bv = tl.load(base_ptr + b * sb_b + c * sb_c + y * sb_y + x * sb_x, mask=valid, other=0.0).to(tl.float32)
        r = (v * m + (1.0 - m) * bv - tl.load(mean_ptr + c)) / tl.load(std_ptr + c)
        tl.store(out_ptr + pix, r.to(out_ptr.dtype.element_ty), mask=valid)


@triton.jit
def apply_mask_bwd(
    gout_ptr, img_ptr, mask_ptr, base_ptr, std_ptr, gfull_ptr, gimg_ptr,
    y0_ptr, y1_ptr, ly_ptr, x0_ptr, x1_ptr, lx_ptr,
    C, H, W, h, w,
    sb_b, sb_c, sb_y, sb_x,
    NEED_IMAGES: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """dL/dM_full(b, p) = Σ_c g·(x − baseline)/std_c; dL/dx = g·M/std_c."""
    b = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    valid = offs < H * W
    y = offs // W
    x = offs % W
    if NEED_IMAGES:
        m = _mask_value(mask_ptr, b, y, x, valid, h, w, y0_ptr, y1_ptr, ly_ptr, x0_ptr, x1_ptr, lx_ptr)
    acc = tl.full([BLOCK], 0.0, dtype=tl.float32)
    for c in range(C):
        pix = (b * C + c) * H * W + offs
        g = tl.load(gout_ptr + pix, mask=valid, other=0.0).to(tl.float32) / tl.load(std_ptr + c)
        v = tl.load(img_ptr + pix, mask=valid, other=0.0).to(tl.float32)
        bv = tl.load(base_ptr + b * sb_b + c * sb_c + y * sb_y + x * sb_x, mask=valid, other=0.0).to(tl.float32)
        acc += g * (v - bv)
        if NEED_IMAGES:
            tl.store(gimg_ptr + pix, (g * m).to(gimg_ptr.dtype.element_ty), mask=valid)
    tl.store(gfull_ptr + b * H * W + offs, acc, mask=valid)


Table = tuple[Tensor, Tensor, Tensor]


def _table_args(ty: Table, tx: Table) -> list[Tensor]:
    return [
        ty[0].contiguous(),
        ty[1].contiguous(),
        ty[2].contiguous(),
        tx[0].contiguous(),
        tx[1].contiguous(),
        tx[2].contiguous(),
    ]


def launch_forward(
    images: Tensor, mask: Tensor, base: Tensor, mean: Tensor, std: Tensor, ty: Table, tx: Table, out_dtype: torch.dtype
) -> Tensor:
    """Run :func:`apply_mask_fwd`; ``base`` is ``(B, C, H, W)``, possibly with zero strides."""
    b, c, hh, ww = images.shape
    out = torch.empty(images.shape, dtype=out_dtype, device=images.device)
    grid = (b, triton.cdiv(hh * ww, BLOCK))
    apply_mask_fwd[grid](
        images, mask, base, mean, std, out, *_table_args(ty, tx),
        c, hh, ww, mask.shape[1], mask.shape[2], *base.stride(), BLOCK=BLOCK,
    )  # fmt: skip
    return out


def launch_backward(
    grad_out: Tensor, images: Tensor, mask: Tensor, base: Tensor, std: Tensor, ty: Table, tx: Table, need_images: bool
) -> tuple[Tensor, Tensor | None]:
    """Run :func:`apply_mask_bwd`: returns the full-resolution mask gradient ``(B, H, W)``
    (float32) and, when asked, the image gradient."""
    b, c, hh, ww = images.shape
    grad_full = torch.empty((b, hh, ww), dtype=torch.float32, device=images.device)
    grad_images = torch.empty_like(images) if need_images else grad_full  # dummy pointer when unused
    grid = (b, triton.cdiv(hh * ww, BLOCK))
    apply_mask_bwd[grid](
        grad_out, images, mask, base, std, grad_full, grad_images, *_table_args(ty, tx),
        c, hh, ww, mask.shape[1], mask.shape[2], *base.stride(), NEED_IMAGES=need_images, BLOCK=BLOCK,
    )  # fmt: skip
    return grad_full, (grad_images if need_images else None)
