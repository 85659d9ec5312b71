"""RISE-style insertion and deletion as MUTEX evaluates them (docs/methods.md §7.3).

Deletion replaces the top-p% pixels of the attribution ranking by the baseline; insertion
starts from the all-baseline canvas and reveals the top-p% pixels of the image. The score is
the softmax probability of the label, at p in 1, 5, 10, 20, ..., 100 percent, and the AUC is
the trapezoid rule over x **in percent** (so it lies in ``[0, 100]``).

MUTEX's code prepends the point (0, 0) to the deletion curve (docs/methods.md §4.4 item 4), which
biases the deletion AUC by ignoring the clean image's confidence. Here both curves start at
x = 0 with the real probability: the clean image for deletion, the blank canvas for
insertion. ``legacy_zero_origin=True`` reproduces MUTEX instead (deletion starts at (0, 0),
insertion has no x = 0 point).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from captum_vit.kernels import perturbation_batch
from captum_vit.metrics._common import (
    attribution_map,
    check_images,
    check_labels,
    class_probabilities,
    trapezoid_auc,
)
from captum_vit.metrics.baselines import BaselineSpec, removal_baseline
from captum_vit.models.preprocess import Stats, model_normalization, normalize

#: MUTEX's percentages.
RISE_PERCENTAGES: tuple[float, ...] = (1.0, 5.0, *(10.0 * i for i in range(1, 11)))


@dataclass(frozen=True)
class RiseCurves:
    """``percent`` ``(K,)`` and the label's ``probability`` ``(B, K)`` at each level."""

    percent: Tensor
    probability: Tensor

    def auc(self) -> Tensor:
        """``(B,)`` trapezoid AUC over x in percent."""
        return trapezoid_auc(self.probability, self.percent)


def rise_curves(
    model: nn.Module,
    images: Tensor,
    attributions: Tensor,
    labels: Tensor | Sequence[int],
    mode: str = "deletion",
    percentages: Sequence[float] = RISE_PERCENTAGES,
    baseline: BaselineSpec = "zero",
    mean: Stats = None,
    std: Stats = None,
    legacy_zero_origin: bool = False,
    batch_size: int | None = None,
    indices: Tensor | None = None,
    impl: str = "auto",
) -> RiseCurves:
    """Deletion or insertion curves for a batch, all levels in batched forward passes.

    Parameters
    ----------
    model : nn.Module
        The classifier, taking normalised images.
    images : Tensor
        ``(B, C, H, W)`` in ``[0, 1]`` pixel space.
    attributions : Tensor
        ``(B, C, H, W)``, ``(B, 1, H, W)`` or ``(B, H, W)`` (MUTEX upsamples its patch map
        with ``"nearest"``; that is the method's choice, made before this call).
    labels : Tensor or sequence of int
        ``(B,)`` classes whose probability is scored.
    mode : str
        ``"deletion"`` or ``"insertion"``.
    percentages : sequence of float
        Increasing levels in ``(0, 100]``.
    baseline : str, float or Tensor
        Default ``"zero"`` (0 in normalised space, MUTEX's "black"); see
        :func:`captum_vit.metrics.baselines.removal_baseline`.
    mean, std : sequence of float, optional
        Normalisation; default the model's ``pretrained_cfg``.
    legacy_zero_origin : bool
        Reproduce MUTEX's (0, 0) deletion origin (documented bug; off by default).
    batch_size : int, optional
        Images per forward pass (default 64); the result does not depend on it.
    indices : Tensor, optional
        Dataset indices (seed the ``"uniform"`` baseline per image).
    impl : str
        ``perturbation_batch`` implementation.

    Returns
    -------
    RiseCurves

    Raises
    ------
    ValueError, TypeError
        Bad ``mode``, percentages, or inputs that do not match.

    References
    ----------
    Petsiuk, Das & Saenko, "RISE: Randomized Input Sampling for Explanation of Black-box
    Models", BMVC 2018, §4.1; MUTEX's ``get_insertion_deletion`` (docs/methods.md §7.3).

    Examples
    --------
    >>> import timm
    >>> m = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3,
    ...                       depth=1, img_size=32).eval()
    >>> c = rise_curves(m, torch.rand(2, 3, 32, 32), torch.rand(2, 32, 32), [0, 2], mode="insertion")
    >>> c.percent[:3].tolist(), c.auc().shape
    ([0.0, 1.0, 5.0], torch.Size([2]))
    """
    if mode not in ("deletion", "insertion"):
        raise ValueError(f"mode must be 'deletion' or 'insertion', got {mode!r}")
    pct = torch.as_tensor(percentages, dtype=torch.float64).flatten()
    if pct.numel() == 0 or ((pct <= 0) | (pct > 100)).any() or (pct.diff() <= 0).any():
        raise ValueError(f"percentages must be increasing values in (0, 100], got {pct.tolist()}")
    images = check_images(images)
    scores = attribution_map(attributions, images)
    lab = check_labels(labels, images.shape[0])
    mu, sigma = model_normalization(model, mean, std)
    base = removal_baseline(images, baseline, mu, indices=indices)
    levels = torch.cat([torch.zeros(1, dtype=pct.dtype), pct]) / 100.0
    if mode == "deletion":
        stack = perturbation_batch(images, scores, levels, baseline=base, most_relevant_first=True, impl=impl)
    else:
        # Insertion = "removing" the top-p% pixels of the blank canvas *to the image*.
        canvas = torch.as_tensor(base, dtype=images.dtype, device=images.device)
        canvas = canvas.view(-1, 1, 1) if canvas.dim() == 1 else canvas
        canvas = canvas.expand_as(images).contiguous()
        stack = perturbation_batch(canvas, scores, levels, baseline=images, most_relevant_first=True, impl=impl)
    prob = class_probabilities(model, normalize(stack, mu, sigma), lab, batch_size)[0].T.contiguous()
    x = torch.cat([torch.zeros(1, dtype=pct.dtype), pct]).float()
    if legacy_zero_origin:
        if mode == "deletion":
            prob[:, 0] = 0.0
        else:
            prob, x = prob[:, 1:].contiguous(), x[1:]
    return RiseCurves(x, prob)


def rise_deletion_auc(
    model: nn.Module, images: Tensor, attributions: Tensor, labels: Tensor | Sequence[int], **kwargs: object
) -> Tensor:
    """``(B,)`` deletion AUC over x in percent (lower is better); kwargs of :func:`rise_curves`."""
    return rise_curves(model, images, attributions, labels, "deletion", **kwargs).auc()  # type: ignore[arg-type]


def rise_insertion_auc(
    model: nn.Module, images: Tensor, attributions: Tensor, labels: Tensor | Sequence[int], **kwargs: object
) -> Tensor:
    """``(B,)`` insertion AUC over x in percent (higher is better); kwargs of :func:`rise_curves`."""
    return rise_curves(model, images, attributions, labels, "insertion", **kwargs).auc()  # type: ignore[arg-type]
