"""Mask application: upsample a patch mask, blend images with a baseline, normalise.

``((x ⊙ M + (1 − M) ⊙ baseline) − mean) / std`` with ``M`` the mask upsampled to the image
size. LTX/EEA multiplies the [0, 1] image by its bilinearly upsampled sigmoid mask (baseline 0,
black) and then normalises (docs/methods.md §2.2); Vision DiffMask and MUTEX's metrics upsample with
nearest (§6.4, §7.3); ADP/PIC use the saliency map as a soft mask (§7.4). The fused Triton path
reads each image once and writes the model input once; the backward gives the gradient with
respect to the mask (and the images), which LTX and DiffMask training need.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from captum_vit.kernels._common import Baseline, accumulation_dtype, broadcast_baseline
from captum_vit.kernels._dispatch import check_launchable, load_triton_module, use_triton

MASK_MODES = ("bilinear", "nearest")


def _check_inputs(images: Tensor, mask: Tensor, mode: str) -> Tensor:
    """Validate and return the mask as ``(B, h, w)``."""
    if not isinstance(images, Tensor) or images.dim() != 4:
        raise ValueError(f"images must be a (B, C, H, W) tensor, got {getattr(images, 'shape', type(images))}")
    if not isinstance(mask, Tensor):
        raise TypeError(f"mask must be a tensor, got {type(mask).__name__}")
    if mask.dim() == 4 and mask.shape[1] == 1:
        mask = mask[:, 0]
    if mask.dim() != 3 or mask.shape[0] != images.shape[0]:
        raise ValueError(f"mask must be (B, h, w) or (B, 1, h, w) with B={images.shape[0]}, got {tuple(mask.shape)}")
    if not (images.is_floating_point() and mask.is_floating_point()):
        raise TypeError(f"images and mask must be floating point, got {images.dtype} and {mask.dtype}")
    if mode not in MASK_MODES:
        raise ValueError(f"mode must be one of {MASK_MODES}, got {mode!r}")
    return mask


def _channel_stats(
    values: Sequence[float] | Tensor | None, fill: float, c: int, name: str, device: torch.device
) -> Tensor:
    if values is None:
        return torch.full((c,), fill, dtype=torch.float32, device=device)
    out = torch.as_tensor(values, dtype=torch.float32, device=device).reshape(-1)
    if out.numel() != c:
        raise ValueError(f"{name} must have one value per channel ({c}), got {out.numel()}")
    if name == "std" and bool((out == 0).any()):
        raise ValueError("std must be non-zero")
    return out


def upsample_mask(mask: Tensor, size: tuple[int, int], mode: str = "bilinear") -> Tensor:
    """Upsample a ``(B, h, w)`` mask to ``(B, H, W)`` as ``F.interpolate`` does
    (``align_corners=False`` for bilinear); a mask already at ``size`` is returned as is."""
    if tuple(mask.shape[-2:]) == tuple(size):
        return mask
    kwargs = {"align_corners": False} if mode == "bilinear" else {}
    return F.interpolate(mask.unsqueeze(1), size=size, mode=mode, **kwargs).squeeze(1)


def apply_mask_reference(
    images: Tensor,
    mask: Tensor,
    baseline: Baseline = 0.0,
    mean: Sequence[float] | Tensor | None = None,
    std: Sequence[float] | Tensor | None = None,
    mode: str = "bilinear",
) -> Tensor:
    """Pure-torch :func:`apply_mask` (the spec the Triton path is tested against)."""
    mask = _check_inputs(images, mask, mode)
    out_dtype = torch.promote_types(images.dtype, mask.dtype)
    acc = accumulation_dtype(out_dtype)
    b, c, h, w = images.shape
    m = upsample_mask(mask.to(acc), (h, w), mode).unsqueeze(1)
    base = broadcast_baseline(baseline, images, acc)
    out = images.to(acc) * m + (1 - m) * base
    if mean is not None:
        out = out - _channel_stats(mean, 0.0, c, "mean", images.device).to(acc).view(1, c, 1, 1)
    if std is not None:
        out = out / _channel_stats(std, 1.0, c, "std", images.device).to(acc).view(1, c, 1, 1)
    return out.to(out_dtype)


def interpolation_table(out_size: int, in_size: int, mode: str, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """Source indices ``(i0, i1)`` and weight ``l1`` of each output row/column, as torch's CPU
    ``upsample_{bilinear2d,nearest2d}`` compute them (float32 scale, ``align_corners=False``):
    ``out[d] = (1 - l1[d]) * in[i0[d]] + l1[d] * in[i1[d]]``.

    Examples
    --------
    >>> i0, i1, l1 = interpolation_table(4, 2, "bilinear", torch.device("cpu"))
    >>> i0.tolist(), i1.tolist(), l1.tolist()
    ([0, 0, 0, 1], [1, 1, 1, 1], [0.0, 0.25, 0.75, 0.25])
    """
    dst = torch.arange(out_size, dtype=torch.float32, device=device)
    scale = torch.tensor(in_size, dtype=torch.float32) / out_size
    if mode == "nearest":
        if out_size == in_size:
            i0 = torch.arange(out_size, device=device)
        else:
            i0 = (dst * scale.to(device)).floor().long().clamp(max=in_size - 1)
        return i0, i0, torch.zeros(out_size, dtype=torch.float32, device=device)
    src = ((dst + 0.5) * scale.to(device) - 0.5).clamp(min=0)
    i0 = src.long()
    l1 = (src - i0).clamp(0, 1)
    i1 = torch.where(i0 < in_size - 1, i0 + 1, i0)
    return i0, i1, l1


def _interpolation_matrix(table: tuple[Tensor, Tensor, Tensor], in_size: int) -> Tensor:
    """Dense ``(out, in)`` matrix of a table: the adjoint of upsampling is its transpose."""
    i0, i1, l1 = table
    mat = torch.zeros(i0.shape[0], in_size, dtype=torch.float32, device=i0.device)
    rows = torch.arange(i0.shape[0], device=i0.device)
    mat.index_put_((rows, i0), 1 - l1, accumulate=True)
    mat.index_put_((rows, i1), l1, accumulate=True)
    return mat


class _ApplyMaskTriton(torch.autograd.Function):
    """Triton forward and backward; the baseline, mean and std are constants."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        images: Tensor,
        mask: Tensor,
        base: Tensor,
        mean: Tensor,
        std: Tensor,
        mode: str,
    ) -> Tensor:
        kern = load_triton_module("_triton_mask")
        b, c, h, w = images.shape
        ty = interpolation_table(h, mask.shape[1], mode, images.device)
        tx = interpolation_table(w, mask.shape[2], mode, images.device)
        out_dtype = torch.promote_types(images.dtype, mask.dtype)
        images_c, mask_c = images.contiguous(), mask.contiguous()
        check_launchable(kern.apply_mask_fwd, images_c, mask_c, base)
        out = kern.launch_forward(images_c, mask_c, base, mean, std, ty, tx, out_dtype)
        ctx.save_for_backward(images_c, mask_c, base, std, *ty, *tx)
        return out

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad_out: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        kern = load_triton_module("_triton_mask")
        images, mask, base, std, *tables = ctx.saved_tensors  # type: ignore[attr-defined]
        ty, tx = tuple(tables[:3]), tuple(tables[3:])
        need_images, need_mask = ctx.needs_input_grad[0], ctx.needs_input_grad[1]  # type: ignore[attr-defined]
        grad_full, grad_images = kern.launch_backward(
            grad_out.contiguous(), images, mask, base, std, ty, tx, need_images
        )
        grad_mask = None
        if need_mask:
            # Adjoint of separable upsampling: G_coarse = Ry^T G Rx (small, dense, deterministic).
            ry = _interpolation_matrix(ty, mask.shape[1])  # type: ignore[arg-type]
            rx = _interpolation_matrix(tx, mask.shape[2])  # type: ignore[arg-type]
            grad_mask = torch.einsum("yi,byx,xj->bij", ry, grad_full, rx).to(mask.dtype)
        return grad_images, grad_mask, None, None, None, None


def apply_mask(
    images: Tensor,
    mask: Tensor,
    baseline: Baseline = 0.0,
    mean: Sequence[float] | Tensor | None = None,
    std: Sequence[float] | Tensor | None = None,
    mode: str = "bilinear",
    impl: str = "auto",
) -> Tensor:
    """Blend images with a baseline through an upsampled mask, then normalise.

    Parameters
    ----------
    images : Tensor
        ``(B, C, H, W)`` images in [0, 1] pixel space.
    mask : Tensor
        ``(B, h, w)`` or ``(B, 1, h, w)`` keep-mask in [0, 1] (patch level, or already
        ``(H, W)``), upsampled to ``(H, W)``.
    baseline : float or Tensor
        What a zero mask shows: a float, a ``(C,)`` tensor or a ``(B, C, H, W)`` /
        ``(1, C, H, W)`` tensor (pixel space). Default 0 (black, as LTX).
    mean, std : sequence of C floats or Tensor, optional
        Normalisation applied after blending; ``None`` skips it.
    mode : str
        ``"bilinear"`` (``align_corners=False``, LTX) or ``"nearest"`` (DiffMask, MUTEX).
    impl : str
        ``"auto"`` (Triton for CUDA tensors when Triton imports), ``"reference"`` or ``"triton"``.
        The Triton path treats the baseline as a constant (``"auto"`` falls back to the
        reference when the baseline requires grad) and computes in float32.

    Returns
    -------
    Tensor
        ``(B, C, H, W)`` model input ``((images * M + (1 - M) * baseline) - mean) / std``,
        differentiable with respect to ``mask`` and ``images``.

    Raises
    ------
    ValueError
        On mismatched shapes, an unknown ``mode``/``impl`` or a zero ``std``.
    TypeError
        When images, mask or baseline are not (floating-point) tensors / floats.

    References
    ----------
    Barkan, Asher, Eshel, Elisha & Koenigstein, "Learning to Explain" (LTX; mask application as
    docs/methods.md §2.2); Nalmpantis et al., "Vision DiffMask", CVPRW 2023 (nearest upsampling, §6.4).

    Examples
    --------
    >>> x = torch.ones(1, 3, 4, 4)
    >>> out = apply_mask(x, torch.tensor([[[1.0, 0.0], [0.0, 1.0]]]), baseline=0.5, mode="nearest")
    >>> out[0, 0]
    tensor([[1.0000, 1.0000, 0.5000, 0.5000],
            [1.0000, 1.0000, 0.5000, 0.5000],
            [0.5000, 0.5000, 1.0000, 1.0000],
            [0.5000, 0.5000, 1.0000, 1.0000]])
    >>> apply_mask(x, torch.ones(1, 2, 2), mean=[0.5] * 3, std=[0.5] * 3).unique()
    tensor([1.])
    """
    mask3 = _check_inputs(images, mask, mode)
    base_grad = isinstance(baseline, Tensor) and baseline.requires_grad
    if impl == "auto" and base_grad:
        impl = "reference"
    if not use_triton(impl, images, mask3, differentiable=True):
        return apply_mask_reference(images, mask3, baseline, mean, std, mode)
    if base_grad:
        raise ValueError("impl='triton' treats baseline as a constant; use impl='reference' to differentiate it")
    c = images.shape[1]
    base = broadcast_baseline(baseline, images, torch.float32).detach()
    mean_t = _channel_stats(mean, 0.0, c, "mean", images.device)
    std_t = _channel_stats(std, 1.0, c, "std", images.device)
    return _ApplyMaskTriton.apply(images, mask3, base, mean_t, std_t, mode)
