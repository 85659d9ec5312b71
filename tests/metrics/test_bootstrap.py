"""Bootstrap intervals and paired comparisons against analytic answers."""

from __future__ import annotations

import math

import pytest
import torch

from captum_vit.metrics import (
    SegmentationStats,
    bootstrap,
    gap_closed,
    mean_ci,
    miou_ci,
    paired_difference,
    segmentation_scores,
)


def test_mean_interval_matches_the_normal_theory_interval() -> None:
    """For n = 400 normal values the percentile interval is mean ± 1.96 σ/√n to a few percent."""
    x = torch.randn(400, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3.0 + 10.0
    ci = mean_ci(x, num_samples=4000, seed=1)
    half = 1.96 * float(x.std()) / math.sqrt(400)
    assert ci.estimate == pytest.approx(float(x.mean()))
    assert ci.low == pytest.approx(float(x.mean()) - half, abs=0.08 * half)
    assert ci.high == pytest.approx(float(x.mean()) + half, abs=0.08 * half)


def test_mean_interval_covers_the_true_mean_about_95_percent_of_the_time() -> None:
    gen = torch.Generator().manual_seed(2)
    trials, hits = 300, 0
    for t in range(trials):
        x = torch.rand(60, generator=gen) * 10.0  # true mean 5
        hits += not mean_ci(x, num_samples=400, seed=t).excludes(5.0)
    assert 0.90 <= hits / trials <= 0.99, f"coverage {hits / trials:.3f}"


def test_nan_values_are_left_out() -> None:
    assert mean_ci(torch.tensor([1.0, float("nan"), 3.0])).estimate == 2.0


def test_gap_closed_estimate_and_extremes() -> None:
    gen = torch.Generator().manual_seed(3)
    rnd = 40 + torch.randn(200, generator=gen)
    orc = 20 + torch.randn(200, generator=gen)
    method = 0.25 * orc + 0.75 * rnd  # closes a quarter of the gap on every image
    g = gap_closed(method, rnd, orc)
    assert g.estimate == pytest.approx(0.25)
    assert g.low <= 0.25 <= g.high and g.high - g.low < 0.05  # paired: the shared noise cancels
    same = gap_closed(orc, rnd, orc)
    assert (same.estimate, same.low, same.high) == pytest.approx((1.0, 1.0, 1.0))


def test_paired_difference_detects_a_shift_hidden_by_image_variance() -> None:
    """Per-image spread (σ 10) far above the shift (0.5): unpaired intervals overlap, the
    paired comparison sees a difference present on every image."""
    gen = torch.Generator().manual_seed(4)
    base = 10.0 * torch.randn(100, generator=gen)
    a, b = base + 0.5 + 0.1 * torch.randn(100, generator=gen), base
    assert not mean_ci(a).low > mean_ci(b).high
    res = paired_difference(a, b)
    assert res.significant() and res.p_value == 0.0
    assert res.difference.low > 0.4 and res.difference.high < 0.6


def test_paired_difference_of_identical_methods_is_not_significant() -> None:
    x = torch.randn(50, generator=torch.Generator().manual_seed(5))
    res = paired_difference(x, x.clone())
    assert res.p_value == 1.0 and not res.significant()


def test_paired_difference_p_value_is_roughly_uniform_under_the_null() -> None:
    gen = torch.Generator().manual_seed(6)
    p = [paired_difference(torch.randn(40, generator=gen), torch.randn(40, generator=gen), 300, seed=s).p_value
         for s in range(200)]  # fmt: skip
    false_alarms = sum(v < 0.05 for v in p) / len(p)
    assert 0.01 <= false_alarms <= 0.12, f"{false_alarms:.3f} of null comparisons significant"


def test_miou_interval_estimate_equals_the_dataset_score() -> None:
    gen = torch.Generator().manual_seed(7)
    union = torch.randint(50, 100, (30, 2), generator=gen).double()
    inter = (union * torch.rand(30, 2, generator=gen)).floor()
    correct, labelled = torch.full((30,), 10.0), torch.full((30,), 20.0)
    stats = SegmentationStats(correct, labelled, inter, union, torch.zeros(30), torch.zeros(30))
    ci = miou_ci(inter, union)
    assert ci.estimate == pytest.approx(segmentation_scores(stats)["miou"])
    assert ci.low < ci.estimate < ci.high


def test_bad_inputs_are_named() -> None:
    with pytest.raises(ValueError, match="share their first"):
        bootstrap(lambda a, b: a.mean(-1), torch.ones(3), torch.ones(4))
    with pytest.raises(ValueError, match="level"):
        mean_ci(torch.ones(3), level=1.5)
    with pytest.raises(ValueError, match="same images"):
        paired_difference(torch.ones(3), torch.ones(4))
