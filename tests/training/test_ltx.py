"""The LTX objective on hand cases, and per-instance finetuning (batched == alone)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from captum_vit.explainers import LTXObjective, build_explainer, default_mask_weight, finetune_masks, mask_loss
from captum_vit.testing import assert_close, make_cnn, make_vit

MEAN, STD = torch.tensor([0.5, 0.4, 0.3]), torch.tensor([0.2, 0.25, 0.5])


def test_mask_losses_hand_values() -> None:
    z = torch.tensor([[[0.0, math.log(3.0)], [-math.log(3.0), 0.0]]])  # m = 1/2, 3/4, 1/4, 1/2
    m = torch.tensor([0.5, 0.75, 0.25, 0.5])
    assert_close(mask_loss(z, "l1"), m.mean().reshape(1))
    assert_close(mask_loss(z, "bce"), (-torch.log1p(-m)).mean().reshape(1))  # BCE(m, 0)
    assert_close(mask_loss(z, "bce_double_sigmoid"), torch.log1p(torch.exp(m)).mean().reshape(1))
    assert_close(mask_loss(torch.full((1, 2, 2), -200.0), "bce"), torch.zeros(1), "fp32")  # stable: no log(0)
    with pytest.raises(ValueError, match="mask_loss"):
        mask_loss(z, "entropy")


def test_default_mask_weight_matches_papers() -> None:
    vit = make_vit()
    assert default_mask_weight(build_explainer(make_cnn())) == 50.0
    explainer = build_explainer(vit)
    for width, lam in ((384, 30.0), (768, 50.0)):
        explainer.backbone.embed_dim = width
        assert math.isclose(default_mask_weight(explainer), lam)


class PixelMean(nn.Module):
    """Logits = a fixed linear map of the channel means: simple enough to check by hand."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor([[1.0, -2.0, 0.5], [0.0, 1.0, -1.0]]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3)) @ self.w.T


@pytest.mark.parametrize("kind", ["bce", "l1"])
def test_objective_matches_hand_computation(kind: str) -> None:
    g = torch.Generator().manual_seed(0)
    pixels = torch.rand(2, 3, 8, 8, generator=g)
    z = torch.randn(2, 2, 2, generator=g)
    target = torch.tensor([1, 0])
    obj = LTXObjective(PixelMean(), MEAN, STD, mask_weight=7.0, mask_loss=kind)
    total, pred, reg = obj.per_example(z, pixels, target)
    # reference: upsample the sigmoid mask bilinearly, black baseline, normalise, CE
    up = F.interpolate(torch.sigmoid(z)[:, None], size=(8, 8), mode="bilinear", align_corners=False)
    inp = (pixels * up - MEAN.view(-1, 1, 1)) / STD.view(-1, 1, 1)
    logits = inp.mean(dim=(2, 3)) @ obj.explainee.w.T
    ce = -logits.log_softmax(1)[torch.arange(2), target]
    m = torch.sigmoid(z).flatten(1)
    expected_reg = (-torch.log1p(-m)).mean(1) if kind == "bce" else m.mean(1)
    assert_close(pred, ce, "fp32_loose")
    assert_close(reg, expected_reg, "fp32_loose")
    assert_close(total, ce + 7.0 * expected_reg, "fp32_loose")
    # all-keep mask: the prediction term is the clean image's CE
    full = obj.per_example(torch.full((2, 2, 2), 50.0), pixels, target)[1]
    clean = ((pixels - MEAN.view(-1, 1, 1)) / STD.view(-1, 1, 1)).mean(dim=(2, 3)) @ obj.explainee.w.T
    assert_close(full, F.cross_entropy(clean, target, reduction="none"), "fp32_loose")


def test_objective_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="mask_weight"):
        LTXObjective(PixelMean(), MEAN, STD, mask_weight=float("nan"))
    with pytest.raises(ValueError, match="mask_loss"):
        LTXObjective(PixelMean(), MEAN, STD, mask_weight=1.0, mask_loss="l2")


@pytest.mark.parametrize("make", [make_vit, make_cnn], ids=["vit", "cnn"])
def test_finetuning_batched_equals_alone_and_leaves_explainer(make: object) -> None:
    model = make()  # type: ignore[operator]
    explainer = build_explainer(model)
    before = {k: v.clone() for k, v in explainer.state_dict().items()}
    obj = LTXObjective(model, MEAN, STD, mask_weight=5.0)
    n, steps = (3, 3) if make is make_vit else (2, 2)  # the CNN is heavier: keep the test short
    pixels = torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    target = torch.tensor([0, 3, 1])[:n]
    batched = finetune_masks(explainer, obj, pixels, target, steps=steps, lr=1e-3)
    for i in range(n):
        alone = finetune_masks(explainer, obj, pixels[i : i + 1], target[i : i + 1], steps=steps, lr=1e-3)
        assert_close(batched[i : i + 1], alone, "fp32_loose", msg=f"image {i}")
    for k, v in explainer.state_dict().items():
        assert torch.equal(v, before[k]), k
    # finetuning changed the mask and lowered each image's loss
    plain = torch.sigmoid(explainer.eval()(obj.normalise(pixels))).detach()
    assert not torch.allclose(batched, plain)
    logit = lambda m: torch.log(m) - torch.log1p(-m)  # noqa: E731
    after_loss = obj.per_example(logit(batched), pixels, target)[0]
    before_loss = obj.per_example(logit(plain), pixels, target)[0]
    assert (after_loss < before_loss).all()


def test_finetuning_zero_steps_is_pltx_and_selection_never_worse() -> None:
    from captum_vit.metrics import positive_perturbation_auc

    model = make_vit()
    explainer = build_explainer(model).eval()
    obj = LTXObjective(model, MEAN, STD, mask_weight=5.0)
    pixels = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    target = torch.tensor([2, 4])
    plain = finetune_masks(explainer, obj, pixels, target, steps=0)
    assert_close(plain, torch.sigmoid(explainer(obj.normalise(pixels))), "fp32")
    chosen = finetune_masks(explainer, obj, pixels, target, steps=3, lr=1e-2, select_by_pos_auc=True)

    def auc(m: torch.Tensor) -> torch.Tensor:
        up = F.interpolate(m[:, None], size=(32, 32), mode="bilinear", align_corners=False)
        return positive_perturbation_auc(model, pixels, up, target, mean=MEAN, std=STD)

    assert (auc(chosen) <= auc(plain) + 1e-6).all()


def test_finetuning_stops_on_non_finite_loss() -> None:
    class NaNModel(PixelMean):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return super().forward(x) * float("nan")

    model = make_vit()
    obj = LTXObjective(NaNModel(), MEAN, STD, mask_weight=1.0)
    with pytest.raises(FloatingPointError, match="non-finite"):
        finetune_masks(build_explainer(model), obj, torch.rand(1, 3, 32, 32), torch.tensor([0]), steps=2)
