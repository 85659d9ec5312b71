"""Average Drop (ADP) and Percentage Increase in Confidence (PIC), as LTX/EEA compute them
(docs/methods.md §7.4).

The saliency map ``S`` in ``[0, 1]`` is used as a soft multiplicative mask in pixel space:
``O = p(c | x * S + (1 - S) * baseline)`` against ``Y = p(c | x)``, with the baseline black
by default (LTX's ``x * S``). ADP = 100 * mean(max(0, Y - O) / Y), lower is better;
PIC = 100 * mean[Y < O], higher is better. Images with ``Y = 0`` give NaN and are dropped
when averaging, as LTX's CNN script does.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from captum_vit.kernels import apply_mask
from captum_vit.metrics._common import (
    attribution_map,
    check_images,
    check_labels,
    class_probabilities,
    min_max,
)
from captum_vit.metrics.baselines import BaselineSpec, removal_baseline
from captum_vit.models.preprocess import Stats, model_normalization, normalize


def adp_pic(
    model: nn.Module,
    images: Tensor,
    attributions: Tensor,
    labels: Tensor | Sequence[int],
    baseline: BaselineSpec = "black",
    normalize_map: bool = True,
    mean: Stats = None,
    std: Stats = None,
    batch_size: int | None = None,
    indices: Tensor | None = None,
    impl: str = "auto",
) -> tuple[Tensor, Tensor]:
    """Per-image drop and increase: ``(adp, pic)``, each ``(B,)``.

    ``adp[i] = 100 * max(0, Y_i - O_i) / Y_i`` and ``pic[i] = 100 * [Y_i < O_i]``; their
    means over a dataset are ADP and PIC (use ``nanmean`` for ADP).

    Parameters
    ----------
    model : nn.Module
        The classifier, taking normalised images.
    images : Tensor
        ``(B, C, H, W)`` in ``[0, 1]`` pixel space.
    attributions : Tensor
        ``(B, C, H, W)``, ``(B, 1, H, W)`` or ``(B, H, W)``.
    labels : Tensor or sequence of int
        ``(B,)`` classes (the ground truth in LTX).
    baseline : str, float or Tensor
        What the masked-out part becomes (default black, LTX's ``x * S``).
    normalize_map : bool
        Min-max normalise each map to ``[0, 1]`` first (default). With ``False`` the maps
        must already lie in ``[0, 1]`` (LTX's sigmoid masks).
    mean, std, batch_size, indices, impl
        As in :func:`captum_vit.metrics.perturbation.perturbation_curves` (``impl`` selects
        :func:`captum_vit.kernels.apply_mask`'s implementation).

    Returns
    -------
    tuple of Tensor
        ``(adp, pic)``, each ``(B,)`` in percent.

    Raises
    ------
    ValueError
        Maps outside ``[0, 1]`` with ``normalize_map=False``, or mismatched shapes.

    References
    ----------
    Chattopadhay et al., "Grad-CAM++", WACV 2018, §5 (average drop, increase in confidence);
    Barkan et al., "Visual Explanations via Iterated Integrated Attributions", ICCV 2023.

    Examples
    --------
    >>> import timm
    >>> m = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3,
    ...                       depth=1, img_size=32).eval()
    >>> x = torch.rand(2, 3, 32, 32)
    >>> adp, pic = adp_pic(m, x, torch.ones(2, 32, 32), [0, 1], normalize_map=False)
    >>> adp.tolist(), pic.tolist()  # an all-ones mask changes nothing
    ([0.0, 0.0], [0.0, 0.0])
    """
    images = check_images(images)
    maps = attribution_map(attributions, images)
    lab = check_labels(labels, images.shape[0])
    if normalize_map:
        maps = min_max(maps)
    elif maps.min() < 0 or maps.max() > 1:
        raise ValueError("attributions must lie in [0, 1] with normalize_map=False (or pass normalize_map=True)")
    mu, sigma = model_normalization(model, mean, std)
    base = removal_baseline(images, baseline, mu, indices=indices)
    masked = apply_mask(images, maps, baseline=base, mean=mu.tolist(), std=sigma.tolist(), impl=impl)
    both = torch.stack([normalize(images, mu, sigma), masked.to(images.dtype)])  # (2, B, C, H, W): one pass
    y, o = class_probabilities(model, both, lab, batch_size)[0]
    adp = 100.0 * (y - o).clamp_min(0) / y
    adp = torch.where(y > 0, adp, torch.full_like(adp, float("nan")))
    pic = 100.0 * (y < o).float()
    return adp, pic
