"""Class sensitivity on two-object images: does the map follow the class it explains?

For an image holding two objects of different classes, explain one object's class and
measure the share of the map's positive mass that falls on that object rather than on the
other: ``100 * sum(R+ * M_explained) / (sum(R+ * M_explained) + sum(R+ * M_other))``.
A class-specific method scores near 100 for both classes; a class-agnostic one (rollout,
raw attention) gives the same map for both, so its two shares average to about 50.
"""

from __future__ import annotations

import torch
from torch import Tensor

from captum_vit.metrics._common import attribution_map, check_images


def class_sensitivity(attributions: Tensor, explained_mask: Tensor, other_mask: Tensor) -> Tensor:
    """Per-image share (percent) of positive attribution on the explained object.

    Parameters
    ----------
    attributions : Tensor
        ``(B, C, H, W)``, ``(B, 1, H, W)`` or ``(B, H, W)`` maps explaining the class of the
        object in ``explained_mask``.
    explained_mask, other_mask : Tensor
        ``(B, H, W)`` masks (bool or {0, 1}) of the explained and the other object.

    Returns
    -------
    Tensor
        ``(B,)`` in ``[0, 100]``; NaN where the map has no positive mass on either object.

    Raises
    ------
    ValueError
        If a mask's shape differs from the maps'.

    Examples
    --------
    >>> a, b = torch.zeros(1, 4, 4, dtype=torch.bool), torch.zeros(1, 4, 4, dtype=torch.bool)
    >>> a[0, 0, 0], b[0, 3, 3] = True, True
    >>> r = torch.zeros(1, 4, 4); r[0, 0, 0], r[0, 3, 3] = 3.0, 1.0
    >>> class_sensitivity(r, a, b).tolist()
    [75.0]
    """
    if not isinstance(attributions, Tensor):
        raise TypeError(f"attributions must be a torch.Tensor, got {type(attributions).__name__}")
    if attributions.dim() == 3:
        maps = attributions.detach().float()
    else:
        maps = attribution_map(attributions, check_images(attributions, "attributions"))
    for name, m in (("explained_mask", explained_mask), ("other_mask", other_mask)):
        if not isinstance(m, Tensor) or tuple(m.shape) != tuple(maps.shape):
            shape = tuple(m.shape) if isinstance(m, Tensor) else type(m).__name__
            raise ValueError(f"{name} must have shape {tuple(maps.shape)} to match the attributions, got {shape}")
    pos = maps.clamp_min(0)
    on = (pos * (explained_mask.to(pos.device) > 0)).flatten(1).sum(1)
    off = (pos * (other_mask.to(pos.device) > 0)).flatten(1).sum(1)
    total = on + off
    return torch.where(total > 0, 100.0 * on / total.clamp_min(torch.finfo(total.dtype).tiny), torch.nan)
