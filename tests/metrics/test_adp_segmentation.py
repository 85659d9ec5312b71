"""ADP/PIC (§7.4), segmentation (§7.5), class sensitivity and the removal baselines."""

from __future__ import annotations

import math

import pytest
import torch
from sklearn.metrics import average_precision_score, f1_score

from captum_vit.metrics import (
    adp_pic,
    average_precision,
    class_sensitivity,
    model_normalization,
    removal_baseline,
    segmentation_scores,
    segmentation_stats,
)
from captum_vit.metrics.segmentation import SegmentationStats
from captum_vit.models.preprocess import normalize
from captum_vit.testing import RegionModel, assert_close, make_cnn, top_left_region


def test_adp_pic_analytic_on_region_model() -> None:
    model = RegionModel(top_left_region())
    x = torch.ones(2, 3, 8, 8)
    gt = top_left_region().expand(2, 8, 8)
    y = torch.sigmoid(torch.tensor(5.0))  # region brightness 1 -> sigmoid(10 * 0.5)
    adp, pic = adp_pic(model, x, gt, [0, 0])
    assert adp.tolist() == [0.0, 0.0] and pic.tolist() == [0.0, 0.0]  # the kept region is untouched
    adp, pic = adp_pic(model, x, 1 - gt, [0, 0])  # region blackened: O = sigmoid(-5)
    expected = 100 * (y - torch.sigmoid(torch.tensor(-5.0))) / y
    assert_close(adp, expected.expand(2), "fp32")
    assert pic.tolist() == [0.0, 0.0]
    # A grey image blended with a soft mask of 0.5 in front of white raises class 1's probability.
    grey = torch.full((1, 3, 8, 8), 0.6)
    adp, pic = adp_pic(model, grey, torch.full((1, 8, 8), 0.5), [1], normalize_map=False, baseline=0.0)
    assert pic.tolist() == [100.0] and adp.tolist() == [0.0]
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        adp_pic(model, x, 2 * gt, [0, 0], normalize_map=False)


def test_segmentation_of_gt_mask_is_perfect_and_inverse_is_zero() -> None:
    g = torch.Generator().manual_seed(0)
    masks = (torch.rand(3, 16, 16, generator=g) > 0.6).long()
    scores = segmentation_scores(segmentation_stats(masks.float(), masks))
    assert scores == {"pixel_accuracy": 100.0, "miou": 100.0, "map": 100.0, "mf1": 100.0}
    inv = segmentation_scores(segmentation_stats(1.0 - masks.float(), masks))
    assert inv["pixel_accuracy"] == 0.0 and inv["miou"] == 0.0 and inv["mf1"] == 0.0


def test_segmentation_matches_a_straightforward_reference() -> None:
    g = torch.Generator().manual_seed(1)
    maps = torch.rand(3, 12, 10, generator=g).round(decimals=1)  # ties, as upsampled maps have
    masks = (torch.rand(3, 12, 10, generator=g) > 0.5).long()
    masks[0, :2] = 255  # VOC void
    masks[1, -1] = -1
    stats = segmentation_stats(maps[:, None].expand(3, 3, 12, 10), masks)
    correct = labelled = 0
    inter, union, aps, f1s = torch.zeros(2), torch.zeros(2), [], []
    for r, m in zip(maps, masks, strict=True):
        r = (r - r.min()) / (r.max() - r.min())
        pred = (r > r.mean()).long()
        valid = (m != 255) & (m != -1)
        p, t, rv = pred[valid], m[valid], r[valid]
        correct += int((p == t).sum())
        labelled += int(valid.sum())
        for c in (0, 1):
            inter[c] += int(((p == c) & (t == c)).sum())
            union[c] += int(((p == c) | (t == c)).sum())
        onehot = torch.stack([t == 0, t == 1]).flatten().numpy()
        aps.append(average_precision_score(onehot, torch.stack([1 - rv, rv]).flatten().numpy()))
        f1s.append(f1_score(t.numpy(), p.numpy(), zero_division=0))
    got = segmentation_scores(stats)
    assert got["pixel_accuracy"] == pytest.approx(100 * correct / labelled)
    assert got["miou"] == pytest.approx(100 * float((inter / union).mean()))
    assert got["map"] == pytest.approx(100 * sum(aps) / 3)
    assert got["mf1"] == pytest.approx(100 * sum(f1s) / 3)
    # Splitting the dataset into batches and concatenating the statistics changes nothing.
    parts = [segmentation_stats(maps[i : i + 1], masks[i : i + 1]) for i in range(3)]
    assert segmentation_scores(SegmentationStats.cat(parts)) == got


def test_average_precision_matches_sklearn_with_ties() -> None:
    g = torch.Generator().manual_seed(2)
    s = torch.randint(0, 5, (200,), generator=g).float()
    y = torch.rand(200, generator=g) > 0.7
    assert float(average_precision(s, y)) == pytest.approx(average_precision_score(y.numpy(), s.numpy()))
    assert math.isnan(float(average_precision(s, torch.zeros(200))))


def test_segmentation_bad_inputs() -> None:
    with pytest.raises(ValueError, match="masks must have shape"):
        segmentation_stats(torch.rand(2, 8, 8), torch.zeros(2, 16, 16))
    with pytest.raises(ValueError, match="masks must hold 0"):
        segmentation_stats(torch.rand(1, 8, 8), torch.full((1, 8, 8), 3))
    with pytest.raises(ValueError, match="no labelled pixels"):
        segmentation_scores(segmentation_stats(torch.rand(1, 4, 4), torch.full((1, 4, 4), 255)))
    with pytest.raises(ValueError, match="empty"):
        SegmentationStats.cat([])


def test_class_sensitivity_values_and_errors() -> None:
    a = torch.zeros(2, 6, 6, dtype=torch.bool)
    b = torch.zeros(2, 6, 6, dtype=torch.bool)
    a[:, :2, :2], b[:, 4:, 4:] = True, True
    maps = torch.zeros(2, 6, 6)
    maps[0, :2, :2], maps[0, 4:, 4:] = 1.0, 1.0 / 3  # 75% on the explained object
    maps[0, 2, 2] = 10.0  # mass off both objects does not count
    maps[1] = -1.0  # no positive mass at all
    share = class_sensitivity(maps[:, None].expand(2, 3, 6, 6), a, b)
    assert share[0].item() == pytest.approx(75.0) and math.isnan(share[1].item())
    with pytest.raises(ValueError, match="explained_mask must have shape"):
        class_sensitivity(maps, a[:, :4], b)


def test_removal_baselines() -> None:
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    cnn = make_cnn()
    mean, std = model_normalization(cnn)  # ImageNet statistics from timm's pretrained_cfg
    assert_close(mean, torch.tensor([0.485, 0.456, 0.406]), "fp32")
    zero = removal_baseline(x, "zero", mean)
    assert_close(normalize(torch.as_tensor(zero).view(3, 1, 1).expand(3, 4, 4), mean, std), torch.zeros(3, 4, 4))
    assert_close(removal_baseline(x, "mean", mean)[:, :, 5, 7], x.mean((2, 3)), "fp32")
    blurred = removal_baseline(x, "blur", mean)
    assert blurred.shape == x.shape and blurred.std() < x.std()
    noise = removal_baseline(x, "uniform", mean, indices=torch.tensor([10, 11]))
    alone = removal_baseline(x[1:], "uniform", mean, indices=torch.tensor([11]))
    assert_close(noise[1:], alone, "exact")  # per-index noise: independent of batching
    assert 0.0 <= float(noise.min()) and float(noise.max()) <= 1.0
    with pytest.raises(ValueError, match="baseline tensor must be"):
        removal_baseline(x, torch.zeros(5), mean)
    with pytest.raises(ValueError, match="std must be positive"):
        model_normalization(cnn, std=(0.0, 1.0, 1.0))
