"""Helpers the kernels and the methods built on them share: argument checks, head fusion,
baselines and the accumulation dtype.

Private to the package but meant for use across its modules (``captum_vit.attr`` and
``captum_vit.metrics`` import from here), so that each of these is defined once.
"""

from __future__ import annotations

import torch
from torch import Tensor

#: Accepted ``impl=`` values of every kernel and of the methods that take one.
IMPLS = ("auto", "reference", "triton")
#: Head-fusion operators over the head axis of ``(..., heads, N, N)`` attention.
HEAD_FUSIONS = ("mean", "max", "min", "sum")

Baseline = float | Tensor


def check_impl(impl: str, name: str = "impl") -> str:
    """Validate an ``impl=`` argument (methods check it at construction time); return it.

    Examples
    --------
    >>> check_impl("auto")
    'auto'
    """
    if impl not in IMPLS:
        raise ValueError(f"{name} must be one of {IMPLS}, got {impl!r}")
    return impl


def check_head_fusion(head_fusion: str, name: str = "head_fusion") -> str:
    """Validate a head-fusion operator name; return it.

    Examples
    --------
    >>> check_head_fusion("max")
    'max'
    """
    if head_fusion not in HEAD_FUSIONS:
        raise ValueError(f"{name} must be one of {HEAD_FUSIONS}, got {head_fusion!r}")
    return head_fusion


def fuse_heads(attn: Tensor, head_fusion: str = "mean") -> Tensor:
    """Fuse ``(..., heads, N, N)`` over the head axis (dim -3) with ``head_fusion``.

    Examples
    --------
    >>> fuse_heads(torch.tensor([[[1.0]], [[3.0]]]), "max")
    tensor([[3.]])
    """
    check_head_fusion(head_fusion)
    if head_fusion == "mean":
        return attn.mean(dim=-3)
    if head_fusion == "max":
        return attn.amax(dim=-3)
    if head_fusion == "min":
        return attn.amin(dim=-3)
    return attn.sum(dim=-3)


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half-precision inputs (both paths of a kernel then agree to a rounding),
    the input's dtype otherwise."""
    return torch.promote_types(dtype, torch.float32)


def broadcast_baseline(baseline: Baseline, images: Tensor, dtype: torch.dtype) -> Tensor:
    """The baseline as a (possibly stride-0) view broadcast to ``images.shape`` ``(B, C, H, W)``.

    ``baseline`` is a float, a 0-d or ``(C,)`` tensor, or a ``(1 or B, C, H, W)`` tensor.

    Raises
    ------
    TypeError
        If ``baseline`` is neither a float nor a tensor.
    ValueError
        If its shape fits none of the forms above.

    Examples
    --------
    >>> broadcast_baseline(torch.tensor([0.0, 1.0]), torch.zeros(1, 2, 1, 1), torch.float32).flatten()
    tensor([0., 1.])
    """
    b, c, h, w = images.shape
    if isinstance(baseline, (int, float)) and not isinstance(baseline, bool):
        return torch.tensor(float(baseline), dtype=dtype, device=images.device).expand(b, c, h, w)
    if not isinstance(baseline, Tensor):
        raise TypeError(f"baseline must be a float or a tensor, got {type(baseline).__name__}")
    base = baseline.to(device=images.device, dtype=dtype)
    if base.dim() == 0:
        return base.expand(b, c, h, w)
    if base.dim() == 1 and base.shape[0] == c:
        return base.view(1, c, 1, 1).expand(b, c, h, w)
    if base.dim() == 4 and base.shape[0] in (1, b) and tuple(base.shape[1:]) == (c, h, w):
        return base.expand(b, c, h, w)
    raise ValueError(f"baseline must be a float, a ({c},) tensor or ({b} or 1, {c}, {h}, {w}), got {tuple(base.shape)}")
