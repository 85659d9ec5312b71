"""Perturbation AUC (Chefer §7.1), LTX probability deletion/insertion (§7.2), RISE (§7.3)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from captum_vit.metrics import (
    CHEFER_FRACTIONS,
    negative_perturbation_auc,
    perturbation_curves,
    positive_perturbation_auc,
    probability_deletion_auc,
    probability_insertion_auc,
    rise_curves,
    rise_deletion_auc,
    rise_insertion_auc,
)
from captum_vit.testing import RegionModel, assert_close, make_vit, top_left_region


def _loop_curve(model: nn.Module, images: Tensor, scores: Tensor, labels: Tensor, fractions, most_first: bool):
    """Straightforward reference: per image, per step, rank, blacken, normalise, classify."""
    probs, hits = [], []
    for x, s, y in zip(images, scores, labels, strict=True):
        order = np.argsort(-s.flatten().numpy() if most_first else s.flatten().numpy(), kind="stable")
        p_row, h_row = [], []
        for p in [0.0, *fractions]:
            k = int(round(p * s.numel()))
            flat = x.clone().reshape(x.shape[0], -1)
            flat[:, torch.from_numpy(order[:k])] = 0.0
            with torch.no_grad():
                logits = model(((flat.reshape(x.shape) - 0.5) / 0.5)[None])[0]
            p_row.append(float(logits.softmax(0)[y]))
            h_row.append(float(logits.argmax() == y))
        probs.append(p_row)
        hits.append(h_row)
    return torch.tensor(probs), torch.tensor(hits)


def test_hand_computed_auc_on_region_model() -> None:
    # 8x8 white image; the model predicts class 0 while fewer than half of the 16 pixels of
    # its 4x4 region are black. round(64 p) pixels go at p = 0.1..0.9: 6, 13, 19, 26, 32, ...
    model = RegionModel(top_left_region())
    x = torch.ones(1, 3, 8, 8)
    gt = top_left_region()[None]
    # GT map, POS: region pixels go first -> hits 1, 1, 0, ... -> trapezoid 0.1 + 0.05 = 0.15.
    assert positive_perturbation_auc(model, x, gt, [0]).tolist() == pytest.approx([15.0])
    # GT map, NEG: the 48 others go first; 51 removed leaves 13 region pixels (hit), 58 not.
    assert negative_perturbation_auc(model, x, gt, [0]).tolist() == pytest.approx([85.0])
    # The inverted mask swaps the two.
    assert positive_perturbation_auc(model, x, 1 - gt, [0]).tolist() == pytest.approx([85.0])
    assert negative_perturbation_auc(model, x, 1 - gt, [0]).tolist() == pytest.approx([15.0])


def test_probability_curves_are_analytic_on_region_model() -> None:
    model = RegionModel(top_left_region())
    x = torch.ones(1, 3, 8, 8)
    gt = top_left_region()[None]
    counts = torch.tensor([0] + [int(round(p * 64)) for p in CHEFER_FRACTIONS], dtype=torch.float32)
    removed_in_region = counts.clamp(max=16)
    expected = torch.sigmoid(10.0 * ((1 - removed_in_region / 16) - 0.5))
    curves = perturbation_curves(model, x, gt, [0], most_relevant_first=True)
    assert_close(curves.probability[0], expected, "fp32")
    x_axis = torch.tensor([0.0, *CHEFER_FRACTIONS])
    assert_close(probability_deletion_auc(model, x, gt, [0]), 100 * torch.trapezoid(expected, x_axis)[None], "fp32")


@pytest.mark.parametrize("most_first", [True, False])
def test_batched_curves_match_per_image_loop_on_vit(most_first: bool) -> None:
    model = make_vit("cls")
    g = torch.Generator().manual_seed(0)
    images = torch.rand(3, 3, 32, 32, generator=g)
    scores = torch.rand(3, 32, 32, generator=g)
    labels = torch.tensor([0, 3, 1])
    ref_p, ref_h = _loop_curve(model, images, scores, labels, CHEFER_FRACTIONS, most_first)
    curves = perturbation_curves(model, images, scores, labels, most_relevant_first=most_first, batch_size=7)
    assert_close(curves.probability, ref_p, "fp32_loose")
    assert_close(curves.hit, ref_h, "exact")
    auc = positive_perturbation_auc if most_first else negative_perturbation_auc
    x_axis = torch.tensor([0.0, *CHEFER_FRACTIONS])
    assert_close(auc(model, images, scores, labels), 100 * torch.trapezoid(ref_h, x_axis), "fp32_loose")
    # Input-shaped (B, C, H, W) attributions broadcast over channels give the same curves.
    same = perturbation_curves(model, images, scores[:, None].expand(3, 3, 32, 32), labels, most_first)
    assert_close(same.hit, curves.hit, "exact")


def test_forward_chunking_does_not_change_curves() -> None:
    """The default chunk (64 images per pass), one image per pass and the whole stack at once
    give the same curves; a non-positive batch_size is an error."""
    model = make_vit("cls")
    g = torch.Generator().manual_seed(2)
    images, scores = torch.rand(7, 3, 32, 32, generator=g), torch.rand(7, 32, 32, generator=g)
    labels = torch.tensor([0, 1, 2, 3, 0, 1, 2])  # 7 images x 10 levels = 70 > 64: two passes
    default = perturbation_curves(model, images, scores, labels)
    for bs in (1, 70):
        other = perturbation_curves(model, images, scores, labels, batch_size=bs)
        assert_close(other.probability, default.probability, "fp32_loose")
        assert_close(other.hit, default.hit, "exact")
    with pytest.raises(ValueError, match="batch_size"):
        perturbation_curves(model, images, scores, labels, batch_size=0)


def test_gt_mask_beats_random_and_inverse() -> None:
    model = RegionModel(top_left_region(16, 6))
    g = torch.Generator().manual_seed(1)
    x = 0.6 + 0.4 * torch.rand(4, 3, 16, 16, generator=g)
    gt = top_left_region(16, 6).expand(4, 16, 16)
    rnd = torch.rand(4, 16, 16, generator=g)
    pos = {
        n: float(positive_perturbation_auc(model, x, m, [0] * 4).mean())
        for n, m in (("gt", gt), ("random", rnd), ("inverse", 1 - gt))
    }
    neg = {
        n: float(negative_perturbation_auc(model, x, m, [0] * 4).mean())
        for n, m in (("gt", gt), ("random", rnd), ("inverse", 1 - gt))
    }
    assert pos["gt"] < pos["random"] < pos["inverse"]
    assert neg["gt"] > neg["random"] > neg["inverse"]
    ins = probability_insertion_auc(model, x, gt, [0] * 4).mean()
    assert ins > probability_insertion_auc(model, x, 1 - gt, [0] * 4).mean()


def test_rise_deletion_and_insertion_match_loop() -> None:
    model = make_vit("cls")
    g = torch.Generator().manual_seed(2)
    images = torch.rand(2, 3, 32, 32, generator=g)
    scores = torch.rand(2, 32, 32, generator=g)
    labels = torch.tensor([1, 4])
    grey = torch.full((3, 1, 1), 0.5)  # "zero" baseline: 0 in normalised space
    pct = [0.0, 1.0, 5.0, *(10.0 * i for i in range(1, 11))]
    exp_del, exp_ins = [], []
    for x, s, y in zip(images, scores, labels, strict=True):
        order = torch.from_numpy(np.argsort(-s.flatten().numpy(), kind="stable"))
        rows_d, rows_i = [], []
        for p in pct:
            k = int(round(p / 100 * 1024))
            keep = torch.zeros(1024, dtype=torch.bool)
            keep[order[:k]] = True
            keep = keep.view(1, 32, 32)
            deleted, inserted = torch.where(keep, grey, x), torch.where(keep, x, grey)
            with torch.no_grad():
                rows_d.append(float(model(((deleted - 0.5) / 0.5)[None]).softmax(1)[0, y]))
                rows_i.append(float(model(((inserted - 0.5) / 0.5)[None]).softmax(1)[0, y]))
        exp_del.append(rows_d)
        exp_ins.append(rows_i)
    d = rise_curves(model, images, scores, labels, "deletion")
    i = rise_curves(model, images, scores, labels, "insertion")
    assert_close(d.probability, torch.tensor(exp_del), "fp32_loose")
    assert_close(i.probability, torch.tensor(exp_ins), "fp32_loose")
    x_axis = torch.tensor(pct)
    assert_close(
        rise_deletion_auc(model, images, scores, labels), torch.trapezoid(torch.tensor(exp_del), x_axis), "fp32_loose"
    )
    assert_close(
        rise_insertion_auc(model, images, scores, labels), torch.trapezoid(torch.tensor(exp_ins), x_axis), "fp32_loose"
    )
    # MUTEX's documented (0, 0) deletion origin, only on request.
    legacy = rise_curves(model, images, scores, labels, "deletion", legacy_zero_origin=True)
    assert legacy.probability[:, 0].tolist() == [0.0, 0.0]
    assert_close(legacy.probability[:, 1:], d.probability[:, 1:], "exact")
    assert rise_curves(model, images, scores, labels, "insertion", legacy_zero_origin=True).percent[0] == 1.0


def test_bad_inputs_raise_clear_errors() -> None:
    model = make_vit("cls")
    x = torch.rand(2, 3, 32, 32)
    with pytest.raises(ValueError, match="attributions must be input-shaped"):
        positive_perturbation_auc(model, x, torch.rand(2, 4, 4), [0, 1])
    with pytest.raises(ValueError, match="attributions must be input-shaped"):
        positive_perturbation_auc(model, x, torch.rand(3, 32, 32), [0, 1])
    with pytest.raises(ValueError, match="labels must have one entry per image"):
        positive_perturbation_auc(model, x, torch.rand(2, 32, 32), [0, 1, 2])
    with pytest.raises(ValueError, match="at least one image"):
        positive_perturbation_auc(model, x[:0], torch.rand(0, 32, 32), [])
    with pytest.raises(ValueError, match="fractions"):
        positive_perturbation_auc(model, x, torch.rand(2, 32, 32), [0, 1], fractions=[0.5, 0.2])
    with pytest.raises(ValueError, match="baseline must be one of"):
        positive_perturbation_auc(model, x, torch.rand(2, 32, 32), [0, 1], baseline="purple")
    with pytest.raises(ValueError, match="mode"):
        rise_curves(model, x, torch.rand(2, 32, 32), [0, 1], mode="both")
