"""Segmentation metrics of an attribution map against a foreground mask (docs/methods.md §7.5).

Chefer's protocol (reused by LTX and IIA): min-max normalise the input-sized map ``R``;
foreground = ``R > mean(R)``. Pixel accuracy and mIoU are accumulated over the whole dataset
(sums of correct / labelled pixels and of per-class intersections / unions, divided at the
end); mAP is the mean over images of the average precision of the soft two-channel
prediction ``[1 - R, R]`` against the one-hot mask, both channels flattened together; mF1
(LTX, IIA) is the mean over images of the F1 of the binarised foreground. Pixels labelled
-1 or 255 (VOC's void) are ignored everywhere.

:func:`segmentation_stats` returns per-image sufficient statistics, so a dataset can be
scored in batches or shards and combined exactly with :func:`segmentation_scores`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch
from torch import Tensor

from captum_vit.metrics._common import min_max, reduce_channels

IGNORE_LABELS: tuple[int, ...] = (-1, 255)


@dataclass(frozen=True)
class SegmentationStats:
    """Per-image statistics, each with a leading batch axis.

    ``correct``/``labelled`` ``(B,)`` pixel counts; ``intersection``/``union`` ``(B, 2)``
    pixel counts for classes (background, foreground); ``ap`` and ``f1`` ``(B,)`` in [0, 1].
    """

    correct: Tensor
    labelled: Tensor
    intersection: Tensor
    union: Tensor
    ap: Tensor
    f1: Tensor

    @staticmethod
    def cat(parts: Sequence[SegmentationStats]) -> SegmentationStats:
        """Concatenate the statistics of several batches."""
        if not parts:
            raise ValueError("cannot combine an empty list of segmentation statistics")
        return SegmentationStats(*(torch.cat([getattr(p, f.name) for p in parts]) for f in fields(SegmentationStats)))


def average_precision(scores: Tensor, truth: Tensor) -> Tensor:
    """Average precision of ``scores`` ranking the positives of ``truth`` (1-D, same length).

    Step-wise AP over distinct thresholds, ``sum_n (R_n - R_{n-1}) P_n``: the definition of
    scikit-learn's ``average_precision_score``. NaN without positives.

    Examples
    --------
    >>> float(average_precision(torch.tensor([0.9, 0.8, 0.3, 0.1]), torch.tensor([1, 0, 1, 0])))
    0.8333333333333333
    """
    s = scores.double().flatten()
    y = truth.double().flatten()
    order = torch.argsort(s, descending=True, stable=True)
    s, y = s[order], y[order]
    tps = torch.cumsum(y, 0)
    # The last index of every run of equal scores is a threshold.
    last = torch.ones_like(s, dtype=torch.bool)
    last[:-1] = s[1:] != s[:-1]
    tp = tps[last]
    n = torch.nonzero(last).flatten().double() + 1
    if tp.numel() == 0 or tp[-1] == 0:
        return torch.tensor(float("nan"), dtype=torch.float64)
    precision, recall = tp / n, tp / tp[-1]
    prev = torch.cat([recall.new_zeros(1), recall[:-1]])
    return ((recall - prev) * precision).sum()


def segmentation_stats(
    attributions: Tensor, masks: Tensor, ignore_labels: Sequence[int] = IGNORE_LABELS
) -> SegmentationStats:
    """Per-image statistics of maps against ground-truth foreground masks.

    Parameters
    ----------
    attributions : Tensor
        ``(B, H, W)``, ``(B, 1, H, W)`` or ``(B, C, H, W)`` (channels averaged).
    masks : Tensor
        ``(B, H, W)``: 1 (or True) foreground, 0 background, any of ``ignore_labels`` ignored.
    ignore_labels : sequence of int
        Labels excluded from every statistic (default -1 and VOC's void 255).

    Returns
    -------
    SegmentationStats

    Raises
    ------
    ValueError
        If the mask's size differs from the map's, or it holds labels other than 0, 1 and
        ``ignore_labels``.

    Examples
    --------
    >>> gt = torch.zeros(1, 4, 4); gt[0, :2] = 1
    >>> segmentation_scores(segmentation_stats(gt.clone(), gt))["pixel_accuracy"]
    100.0
    """
    if not isinstance(attributions, Tensor) or not isinstance(masks, Tensor):
        raise TypeError("attributions and masks must be torch.Tensors")
    r = reduce_channels(attributions) if attributions.dim() == 4 else attributions.detach().float()
    if r.dim() != 3:
        raise ValueError(f"attributions must be (B, H, W) or (B, C, H, W), got {tuple(attributions.shape)}")
    if tuple(masks.shape) != tuple(r.shape):
        raise ValueError(f"masks must have shape {tuple(r.shape)} to match the attributions, got {tuple(masks.shape)}")
    m = masks.detach().long().cpu()
    r = min_max(r.cpu())
    valid = torch.ones_like(m, dtype=torch.bool)
    for lab in ignore_labels:
        valid &= m != lab
    if ((m[valid] != 0) & (m[valid] != 1)).any():
        raise ValueError(f"masks must hold 0 (background), 1 (foreground) or ignored labels {tuple(ignore_labels)}")
    pred = r > r.flatten(1).mean(1).view(-1, 1, 1)  # threshold at the mean of the whole map
    fg = m == 1
    correct = ((pred == fg) & valid).flatten(1).sum(1)
    labelled = valid.flatten(1).sum(1)
    inter, union = [], []
    for p_cls, t_cls in ((~pred, ~fg), (pred, fg)):  # background, foreground
        inter.append((p_cls & t_cls & valid).flatten(1).sum(1))
        union.append(((p_cls | t_cls) & valid).flatten(1).sum(1))
    tp = (pred & fg & valid).flatten(1).sum(1).double()
    fp = (pred & ~fg & valid).flatten(1).sum(1).double()
    fn = (~pred & fg & valid).flatten(1).sum(1).double()
    # scikit-learn's f1_score convention: 0 when there is no positive in prediction or truth.
    f1 = torch.where(tp > 0, 2 * tp / (2 * tp + fp + fn).clamp_min(1), torch.zeros_like(tp))
    aps = []
    for i in range(r.shape[0]):
        v = valid[i]
        soft = torch.stack([1 - r[i][v], r[i][v]])  # channels (bg, fg)
        onehot = torch.stack([~fg[i][v], fg[i][v]])
        aps.append(average_precision(soft, onehot))
    return SegmentationStats(correct, labelled, torch.stack(inter, 1), torch.stack(union, 1), torch.stack(aps), f1)


def segmentation_scores(stats: SegmentationStats) -> dict[str, float]:
    """Dataset scores in percent: ``pixel_accuracy``, ``miou``, ``map``, ``mf1``.

    Pixel accuracy and mIoU divide sums over all images; mAP and mF1 average per-image
    values (NaN APs, from images without labelled pixels, are skipped).

    Raises
    ------
    ValueError
        If no pixel is labelled (an empty dataset).
    """
    labelled = stats.labelled.sum()
    if stats.labelled.numel() == 0 or labelled == 0:
        raise ValueError("no labelled pixels: the dataset is empty or every pixel is ignored")
    inter, union = stats.intersection.sum(0).double(), stats.union.sum(0).double()
    iou = torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(inter))
    return {
        "pixel_accuracy": 100.0 * float(stats.correct.sum().double() / labelled.double()),
        "miou": 100.0 * float(iou.mean()),
        "map": 100.0 * float(stats.ap.nanmean()),
        "mf1": 100.0 * float(stats.f1.mean()),
    }
