"""Perturbation batch: the K perturbed copies of each image for K removal fractions.

The inner loop of the positive/negative perturbation test (Chefer et al. CVPR 2021, reused by
LTX, IIA, T-Attr and GAE; docs/methods.md §7.1), LTX's insertion/deletion (§7.2) and MUTEX's
deletion (§7.3): for removal fraction p, set all channels of the ``round(p·H·W)`` highest- (or
lowest-) ranked pixels to the baseline. Every fraction is computed from the clean image, so the
removal sets are nested. The fused Triton path reads each image and its rank once and writes the
K outputs; the ranking itself is one stable ``torch.sort`` on both paths.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from captum_vit.kernels._common import Baseline, broadcast_baseline
from captum_vit.kernels._dispatch import check_launchable, load_triton_module, use_triton


def _check(images: Tensor, scores: Tensor, fractions: Sequence[float] | Tensor) -> list[float]:
    if not isinstance(images, Tensor) or images.dim() != 4 or not images.is_floating_point():
        raise ValueError(f"images must be a floating (B, C, H, W) tensor, got {getattr(images, 'shape', images)}")
    b, _, h, w = images.shape
    if not isinstance(scores, Tensor) or tuple(scores.shape) != (b, h, w):
        raise ValueError(f"scores must be a ({b}, {h}, {w}) tensor, got {getattr(scores, 'shape', type(scores))}")
    if isinstance(fractions, Tensor):
        if fractions.dim() != 1:
            raise ValueError(f"fractions must be 1-D, got shape {tuple(fractions.shape)}")
        fr_list = [float(p) for p in fractions.detach().double().cpu().tolist()]
    else:
        fr_list = [float(p) for p in fractions]
    if not fr_list or not all(0.0 <= p <= 1.0 for p in fr_list):
        raise ValueError(f"fractions must be a non-empty sequence of values in [0, 1], got {fr_list}")
    return fr_list


def removal_counts(fractions: Sequence[float], num_pixels: int) -> list[int]:
    """``round(p · num_pixels)`` per fraction (Python's round: halves go to the even count).

    Examples
    --------
    >>> removal_counts([0.0, 0.1, 0.5, 1.0], 50176)
    [0, 5018, 25088, 50176]
    """
    return [int(round(p * num_pixels)) for p in fractions]


def pixel_ranks(scores: Tensor, most_relevant_first: bool = True) -> Tensor:
    """Removal order of each pixel, ``(B, H*W)`` int64: 0 is removed first.

    A stable sort breaks ties by the lower flat index first, whichever the direction.

    Examples
    --------
    >>> pixel_ranks(torch.tensor([[[0.2, 0.9], [0.2, 0.1]]]))
    tensor([[1, 0, 2, 3]])
    """
    flat = scores.reshape(scores.shape[0], -1)
    order = torch.sort(flat, dim=1, descending=most_relevant_first, stable=True).indices
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(flat.shape[1], device=flat.device).expand_as(order))
    return ranks


def perturbation_batch_reference(
    images: Tensor,
    scores: Tensor,
    fractions: Sequence[float] | Tensor,
    baseline: Baseline = 0.0,
    most_relevant_first: bool = True,
) -> Tensor:
    """Pure-torch :func:`perturbation_batch` (the spec), one ``torch.where`` per fraction."""
    fr = _check(images, scores, fractions)
    b, c, h, w = images.shape
    ranks = pixel_ranks(scores, most_relevant_first).view(b, 1, h, w)
    base = broadcast_baseline(baseline, images, images.dtype)
    outs = [torch.where(ranks < k, base, images) for k in removal_counts(fr, h * w)]
    return torch.stack(outs)


def perturbation_batch(
    images: Tensor,
    scores: Tensor,
    fractions: Sequence[float] | Tensor,
    baseline: Baseline = 0.0,
    most_relevant_first: bool = True,
    impl: str = "auto",
) -> Tensor:
    """Perturbed copies of each image, one per removal fraction.

    Parameters
    ----------
    images : Tensor
        ``(B, C, H, W)`` images in pixel space.
    scores : Tensor
        ``(B, H, W)`` per-pixel relevance used for ranking (upsample a patch map first).
    fractions : sequence of float or Tensor
        K removal fractions in [0, 1]; fraction p removes ``round(p·H·W)`` pixels.
    baseline : float or Tensor
        Value of removed pixels: a float, a ``(C,)`` tensor or a ``(B, C, H, W)`` /
        ``(1, C, H, W)`` tensor. Default 0 (black in [0, 1] space, as Chefer et al.).
    most_relevant_first : bool
        ``True`` removes the highest scores first (positive perturbation / deletion),
        ``False`` the lowest (negative perturbation / insertion).
    impl : str
        ``"auto"`` (Triton for CUDA tensors when Triton imports), ``"reference"`` or ``"triton"``.
        The Triton path has no backward: inputs needing a gradient use the reference.

    Returns
    -------
    Tensor
        ``(K, B, C, H, W)`` perturbed images (pixel space, ``images.dtype``). Ties in ``scores``
        are removed in increasing flat-index order, so the sets are nested across fractions.

    Raises
    ------
    ValueError
        On mismatched shapes, fractions outside [0, 1] or an unknown ``impl``.

    References
    ----------
    Chefer, Gur & Wolf, "Transformer Interpretability Beyond Attention Visualization",
    CVPR 2021, §4 (perturbation tests; docs/methods.md §7.1).

    Examples
    --------
    >>> x = torch.ones(1, 1, 2, 2)
    >>> s = torch.tensor([[[0.4, 0.3], [0.2, 0.1]]])
    >>> perturbation_batch(x, s, [0.25, 0.5]).squeeze(1).squeeze(1)
    tensor([[[0., 1.],
             [1., 1.]],
    <BLANKLINE>
            [[0., 0.],
             [1., 1.]]])
    """
    fr = _check(images, scores, fractions)
    if not use_triton(impl, images, scores, *([baseline] if isinstance(baseline, Tensor) else [])):
        return perturbation_batch_reference(images, scores, fr, baseline, most_relevant_first)
    kern = load_triton_module("_triton_perturbation")
    b, c, h, w = images.shape
    ranks = pixel_ranks(scores, most_relevant_first)
    counts = torch.tensor(removal_counts(fr, h * w), dtype=torch.int64, device=images.device)
    base = broadcast_baseline(baseline, images, images.dtype)
    images_c = images.contiguous()
    check_launchable(kern.perturbation_fwd, images_c, ranks, base)
    return kern.launch(images_c, ranks, counts, base)
