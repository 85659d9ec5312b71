"""Confidence intervals and significance over images: the percentile bootstrap.

Every metric of :mod:`captum_vit.metrics` returns per-image values (or per-image sums, for
the dataset-level ratios), so a table's uncertainty comes from resampling images: draw ``n``
images with replacement, recompute the statistic, repeat ``num_samples`` times and read the
2.5 % and 97.5 % quantiles (Efron & Tibshirani, "An Introduction to the Bootstrap", 1993,
§13.3). Methods compared on the same images are resampled *together* (a paired bootstrap),
so the image-to-image variation they share cancels in their difference.

:func:`bootstrap` is the general tool (any statistic of aligned per-image arrays);
:func:`mean_ci`, :func:`gap_closed` and :func:`paired_difference` are the three uses of the
leaderboard.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

#: Resamples per interval (1,000 puts the 95 % bounds within about ±0.1 standard errors
#: of their limit, Efron & Tibshirani §19.3).
DEFAULT_RESAMPLES = 1000


@dataclass(frozen=True)
class Interval:
    """A point estimate (the statistic on all images) and its percentile bootstrap interval."""

    estimate: float
    low: float
    high: float

    def excludes(self, value: float) -> bool:
        """Whether ``value`` lies outside ``[low, high]``."""
        return not self.low <= value <= self.high


def resample_indices(n: int, num_samples: int = DEFAULT_RESAMPLES, seed: int = 0) -> Tensor:
    """``(num_samples, n)`` image indices drawn with replacement; the same seed gives the same
    draws, which is what pairs methods evaluated on the same images.

    Examples
    --------
    >>> idx = resample_indices(5, num_samples=3, seed=0)
    >>> idx.shape, bool(((idx >= 0) & (idx < 5)).all())
    (torch.Size([3, 5]), True)
    >>> torch.equal(idx, resample_indices(5, num_samples=3, seed=0))
    True
    """
    if n < 1 or num_samples < 1:
        raise ValueError(f"n and num_samples must be positive, got n={n}, num_samples={num_samples}")
    return torch.randint(0, n, (num_samples, n), generator=torch.Generator().manual_seed(seed))


def bootstrap(
    statistic: Callable[..., Tensor],
    *arrays: Tensor,
    num_samples: int = DEFAULT_RESAMPLES,
    level: float = 0.95,
    seed: int = 0,
) -> Interval:
    """Percentile bootstrap interval of ``statistic`` over the images of ``arrays``.

    Parameters
    ----------
    statistic : callable
        Takes the arrays with one extra leading axis of resamples (each ``(R, n, ...)``) and
        returns ``(R,)``; it is also called once on the original arrays (``R = 1``) for the
        estimate. Resamples where it is NaN (e.g. 0/0) are left out of the quantiles. ``lambda v: v.mean(-1)`` is the mean of per-image values.
    *arrays : Tensor
        Per-image values, each ``(n, ...)``, aligned on the image axis (resampled together).
    num_samples : int
        Resamples (default 1,000).
    level : float
        Coverage of the interval (default 0.95).
    seed : int
        Seed of the resampling; equal seeds draw equal images for equal ``n``.

    Returns
    -------
    Interval

    Raises
    ------
    ValueError
        For no arrays, arrays of different lengths, empty arrays or ``level`` outside (0, 1).

    Examples
    --------
    >>> v = torch.tensor([1.0, 2.0, 3.0, 4.0])
    >>> ci = bootstrap(lambda a: a.mean(-1), v, seed=0)
    >>> ci.estimate, 1.0 <= ci.low < 2.5 < ci.high <= 4.0
    (2.5, True)
    """
    if not arrays:
        raise ValueError("bootstrap needs at least one per-image array")
    n = int(arrays[0].shape[0])
    if n == 0 or any(int(a.shape[0]) != n for a in arrays):
        raise ValueError(
            f"arrays must be non-empty and share their first (image) axis, got {[a.shape for a in arrays]}"
        )
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    data = [a.double() for a in arrays]
    estimate = float(statistic(*(a.unsqueeze(0) for a in data)).reshape(-1)[0])
    idx = resample_indices(n, num_samples, seed)
    stats = statistic(*(a[idx] for a in data)).reshape(-1)
    alpha = (1.0 - level) / 2
    # A resample where the statistic is undefined (0/0 in a ratio) is left out.
    low, high = torch.nanquantile(stats, torch.tensor([alpha, 1.0 - alpha], dtype=stats.dtype)).tolist()
    return Interval(estimate, float(low), float(high))


def mean_ci(values: Tensor, num_samples: int = DEFAULT_RESAMPLES, level: float = 0.95, seed: int = 0) -> Interval:
    """Interval of the mean of per-image ``values`` ``(n,)``; NaNs (images a metric does not
    apply to) are dropped first.

    Examples
    --------
    >>> mean_ci(torch.tensor([2.0, 2.0, float("nan")])).estimate
    2.0
    """
    v = values.flatten()
    return bootstrap(lambda a: a.mean(-1), v[~v.isnan()], num_samples=num_samples, level=level, seed=seed)


def gap_closed(
    method: Tensor,
    random: Tensor,
    oracle: Tensor,
    num_samples: int = DEFAULT_RESAMPLES,
    level: float = 0.95,
    seed: int = 0,
) -> Interval:
    """The share of the gap between a random map and the oracle that a method closes,
    ``(mean(random) − mean(method)) / (mean(random) − mean(oracle))``, with its paired
    interval: 1 is as good as the oracle, 0 as good as the random map, negative worse.
    The sign convention does not depend on the metric's direction.

    Parameters
    ----------
    method, random, oracle : Tensor
        ``(n,)`` per-image values of the method, the random map and the oracle on the same
        images (resampled together).

    Examples
    --------
    >>> r, o = torch.tensor([40.0, 38.0]), torch.tensor([20.0, 22.0])
    >>> gap_closed(torch.tensor([30.0, 30.0]), r, o).estimate
    0.5
    """

    def share(m: Tensor, r: Tensor, o: Tensor) -> Tensor:
        rm = r.mean(-1)
        return (rm - m.mean(-1)) / (rm - o.mean(-1))

    return bootstrap(share, method, random, oracle, num_samples=num_samples, level=level, seed=seed)


@dataclass(frozen=True)
class PairedDifference:
    """``mean(a) − mean(b)`` on the same images, its interval and the two-sided bootstrap
    p-value of "no difference" (twice the smaller share of resampled differences on either
    side of 0)."""

    difference: Interval
    p_value: float

    def significant(self, alpha: float = 0.05) -> bool:
        return self.p_value < alpha


def paired_difference(
    a: Tensor, b: Tensor, num_samples: int = DEFAULT_RESAMPLES, level: float = 0.95, seed: int = 0
) -> PairedDifference:
    """Paired bootstrap comparison of two methods' per-image values ``(n,)`` on the same images.

    Examples
    --------
    >>> a = torch.arange(50.0)
    >>> paired_difference(a + 1.0, a).difference.estimate
    1.0
    >>> paired_difference(a + 1.0, a).p_value  # every resample has a difference of exactly 1
    0.0
    """
    if a.shape != b.shape:
        raise ValueError(f"a and b must hold the same images, got shapes {tuple(a.shape)} and {tuple(b.shape)}")
    d = (a.double() - b.double()).flatten()
    idx = resample_indices(int(d.shape[0]), num_samples, seed)
    stats = d[idx].mean(-1)
    p = 2.0 * min(float((stats <= 0).double().mean()), float((stats >= 0).double().mean()))
    return PairedDifference(
        bootstrap(lambda v: v.mean(-1), d, num_samples=num_samples, level=level, seed=seed), min(1.0, p)
    )


def miou_ci(
    intersection: Tensor, union: Tensor, num_samples: int = DEFAULT_RESAMPLES, level: float = 0.95, seed: int = 0
) -> Interval:
    """Interval of the dataset mIoU (percent) from per-image ``(n, classes)`` intersection and
    union pixel counts: each resample sums its images' counts before dividing, as
    :func:`~captum_vit.metrics.segmentation_scores` does on all images.

    Examples
    --------
    >>> inter, union = torch.tensor([[1.0, 3.0], [1.0, 1.0]]), torch.tensor([[2.0, 4.0], [2.0, 4.0]])
    >>> miou_ci(inter, union).estimate  # (2/4 + 4/8) / 2
    50.0
    """

    def miou(i: Tensor, u: Tensor) -> Tensor:
        si, su = i.sum(-2), u.sum(-2)
        return 100.0 * torch.where(su > 0, si / su.clamp_min(1), torch.ones_like(si)).mean(-1)

    return bootstrap(miou, intersection, union, num_samples=num_samples, level=level, seed=seed)
