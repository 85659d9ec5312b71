"""A classifier that only looks at one image region: the known-answer model of the metric tests."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class RegionModel(nn.Module):
    """Two classes; class 0 wins iff the mean pixel brightness inside ``region`` exceeds 0.5.

    The logits are ``[gain * (s - 0.5), 0]`` with ``s`` the region's mean pixel value, so the
    softmax probability of class 0 is ``sigmoid(gain * (s - 0.5))``. It takes images
    normalised with mean = std = 0.5 (declared in ``pretrained_cfg``, as timm does), so a
    metric's answer on it can be worked out by hand.

    Parameters
    ----------
    region : Tensor
        ``(H, W)`` 0/1 mask of the pixels the model reads.
    gain : float
        Slope of the class-0 logit.

    Examples
    --------
    >>> m = RegionModel(top_left_region())
    >>> white = torch.ones(1, 3, 8, 8)  # pixel value 1 after un-normalising
    >>> m(white)
    tensor([[5., 0.]])
    """

    region: Tensor

    def __init__(self, region: Tensor, gain: float = 10.0) -> None:
        super().__init__()
        self.register_buffer("region", region.float())
        self.gain = gain
        self.pretrained_cfg = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}

    def brightness(self, pixels: Tensor) -> Tensor:
        """Mean over channels and over the region of ``(B, C, H, W)`` pixel values: ``(B,)``."""
        return (pixels.mean(1) * self.region).flatten(1).sum(1) / self.region.sum()

    def forward(self, x: Tensor) -> Tensor:
        s = self.brightness(x * 0.5 + 0.5)
        return torch.stack([self.gain * (s - 0.5), torch.zeros_like(s)], dim=1)


def top_left_region(size: int = 8, side: int = 4) -> Tensor:
    """A ``(size, size)`` mask that is 1 on the top-left ``side x side`` square.

    Examples
    --------
    >>> top_left_region(4, 2)
    tensor([[1., 1., 0., 0.],
            [1., 1., 0., 0.],
            [0., 0., 0., 0.],
            [0., 0., 0., 0.]])
    """
    region = torch.zeros(size, size)
    region[:side, :side] = 1
    return region
