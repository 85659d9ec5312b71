"""Removal baselines: what a "removed" pixel becomes, stated in ``[0, 1]`` pixel space.

The papers disagree (docs/methods.md §10.3): Chefer's perturbation test and LTX use black pixels;
IIA and MUTEX's "black" set the *normalised* value to 0, which is the channel mean (grey for
mean = std = 0.5); MUTEX also offers the image mean and a Gaussian blur; Vision DiffMask's
curves use uniform noise. Each is available by name, and a float or tensor is taken as is.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.transforms.functional import gaussian_blur

#: Names accepted by :func:`removal_baseline`.
BASELINES = ("black", "zero", "mean", "blur", "uniform")

#: MUTEX's blur (docs/methods.md §7.3): Gaussian kernel 15, sigma 7.
BLUR_KERNEL_SIZE, BLUR_SIGMA = 15, 7.0

BaselineSpec = str | float | Tensor


def removal_baseline(
    images: Tensor,
    baseline: BaselineSpec,
    mean: Tensor,
    seed: int = 123,
    indices: Tensor | None = None,
) -> float | Tensor:
    """The pixel-space value removed pixels take.

    Parameters
    ----------
    images : Tensor
        ``(B, C, H, W)`` pixel-space images in ``[0, 1]``.
    baseline : str, float or Tensor
        ``"black"`` (0 in pixel space: Chefer, LTX), ``"zero"`` (0 in normalised space, i.e.
        the model's channel mean: IIA, MUTEX's "black"), ``"mean"`` (each image's per-channel
        mean: MUTEX), ``"blur"`` (the image blurred with a 15x15 Gaussian, sigma 7: MUTEX),
        ``"uniform"`` (uniform noise in ``[0, 1]`` pixel space; for mean = std = 0.5 this is
        Vision DiffMask's uniform noise in ``[-1, 1]`` normalised space); or a float, a ``(C,)``
        tensor or a ``(B, C, H, W)`` / ``(1, C, H, W)`` tensor used as given.
    mean : Tensor
        ``(C,)`` normalisation mean of the model (for ``"zero"``).
    seed : int
        Seed of the ``"uniform"`` noise (DiffMask's 123 by default).
    indices : Tensor, optional
        ``(B,)`` dataset indices of the images. Noise for image ``i`` is drawn from a generator
        seeded with ``seed + indices[i]``, so it does not depend on how a dataset is batched or
        sharded. Default ``arange(B)``.

    Returns
    -------
    float or Tensor
        A float, a ``(C,)`` tensor or a ``(B, C, H, W)`` tensor, as
        :func:`captum_vit.kernels.perturbation_batch` and :func:`captum_vit.kernels.apply_mask` take.

    Raises
    ------
    ValueError
        For an unknown name or a tensor of the wrong shape.

    Examples
    --------
    >>> x = torch.ones(1, 3, 4, 4)
    >>> removal_baseline(x, "black", torch.full((3,), 0.5))
    0.0
    >>> removal_baseline(x, "zero", torch.full((3,), 0.5))
    tensor([0.5000, 0.5000, 0.5000])
    """
    b, c, h, w = images.shape
    if isinstance(baseline, bool):
        raise TypeError("baseline must be a name, a float or a tensor, got bool")
    if isinstance(baseline, (int, float)):
        return float(baseline)
    if isinstance(baseline, Tensor):
        if baseline.dim() == 1 and baseline.numel() == c:
            return baseline.to(images)
        if baseline.dim() == 4 and baseline.shape[0] in (1, b) and tuple(baseline.shape[1:]) == (c, h, w):
            return baseline.to(images).expand(b, c, h, w)
        raise ValueError(
            f"baseline tensor must be ({c},), (1, {c}, {h}, {w}) or ({b}, {c}, {h}, {w}), got {tuple(baseline.shape)}"
        )
    if baseline == "black":
        return 0.0
    if baseline == "zero":
        return mean.to(images)
    if baseline == "mean":
        return images.mean(dim=(2, 3), keepdim=True).expand(b, c, h, w)
    if baseline == "blur":
        return gaussian_blur(images, [BLUR_KERNEL_SIZE, BLUR_KERNEL_SIZE], [BLUR_SIGMA, BLUR_SIGMA])
    if baseline == "uniform":
        idx = torch.arange(b) if indices is None else indices.cpu().long()
        noise = [torch.rand(c, h, w, generator=torch.Generator().manual_seed(seed + int(i))) for i in idx]
        return torch.stack(noise).to(images)
    raise ValueError(f"baseline must be one of {BASELINES}, a float or a tensor, got {baseline!r}")
