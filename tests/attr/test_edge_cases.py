"""Inputs and models at the edges of what users bring: non-finite maps, degenerate maps,
negative and numpy targets, pipelines with a head of their own, padded dynamic sizes,
methods built under ``torch.inference_mode()``."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from captum_vit.attr import IIA, LTX, PLTX, AttentionRollout, GenericAttention, RawAttention, get_method, list_methods
from captum_vit.explainers import build_explainer
from captum_vit.testing import NUM_CLASSES, assert_close, assert_untouched, input_for, make_vit, options_for, snapshot


def test_a_non_finite_map_raises_naming_the_images() -> None:
    model = make_vit("cls")
    with torch.no_grad():
        model.head.weight[0, 0] = float("inf")  # not a finite logit, nor a finite gradient (0 * inf)
    x = input_for(model, batch=2)
    with pytest.raises(FloatingPointError, match=r"GenericAttention: the map of image\(s\) \[0, 1\] holds NaN"):
        GenericAttention(model).attribute(x, target=0)


@pytest.mark.parametrize("cls", [IIA, LTX])
@pytest.mark.parametrize("baseline", [float("nan"), float("inf"), torch.tensor([0.0, float("nan"), 0.0])[:, None, None]])
def test_a_non_finite_baseline_is_refused(cls: type, baseline: float | Tensor) -> None:
    model = make_vit("cls")
    extra = {"explainer": build_explainer(model)} if cls is LTX else {}
    with pytest.raises(ValueError, match="baseline must be finite"):
        cls(model, baseline=baseline, **extra)


@pytest.mark.parametrize("name", list_methods("vit"))
def test_negative_targets_are_refused_by_every_method(name: str) -> None:
    model = make_vit("cls")
    method = get_method(name)(model, **options_for(name, model))
    x = input_for(model, batch=2)
    with pytest.raises(ValueError, match="target must hold class indices >= 0, got -1"):
        method.attribute(x, target=-1)
    with pytest.raises(ValueError, match="target must hold class indices >= 0, got -2"):
        method.attribute(x, target=[1, -2])


def test_numpy_integer_targets_equal_int_targets() -> None:
    model = make_vit("cls")
    x = input_for(model, batch=2)
    method = GenericAttention(model)
    want = method.attribute(x, target=[1, 2])
    assert_close(method.attribute(x, target=list(np.array([1, 2]))), want, "exact")
    assert_close(method.attribute(x, target=np.int64(1)), method.attribute(x, target=1), "exact")


class HeadOnTop(nn.Module):
    """A pipeline whose class scores come from a head of its own after the ViT's logits."""

    def __init__(self, backbone: nn.Module, classes: int) -> None:
        super().__init__()
        self.backbone, self.fc = backbone, nn.Linear(NUM_CLASSES, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.backbone(x))


def test_a_pipeline_is_explained_over_its_own_scores() -> None:
    torch.manual_seed(0)
    pipeline = HeadOnTop(make_vit("cls"), classes=7).eval()
    x = input_for(pipeline.backbone, batch=2)
    got = GenericAttention(pipeline).attribute(x, target=6)  # the ViT itself has 5 classes
    assert_close(got, GenericAttention(pipeline, output_fn=lambda out: out).attribute(x, target=6), "exact")
    assert not torch.allclose(got, GenericAttention(pipeline).attribute(x, target=5))
    with pytest.raises(ValueError, match="target 7 is out of range for 7 scores"):
        GenericAttention(pipeline).attribute(x, target=7)


def test_a_dynamic_size_that_is_not_a_multiple_of_the_patch_is_refused() -> None:
    model = make_vit("dynamic")
    with pytest.raises(ValueError, match=r"inputs spatial size \(36, 40\) is not a multiple of the patch size"):
        RawAttention(model).attribute(torch.randn(1, 3, 36, 40), target=0)


def test_a_padded_input_gets_each_patch_value_on_the_pixels_the_patch_saw() -> None:
    # timm pads at the bottom and right: a 36x44 image is a 5x6 grid of 8x8 patches over 40x48
    model = make_vit("dynamic", dynamic_img_pad=True)
    x = torch.randn(2, 3, 36, 44, generator=torch.Generator().manual_seed(0))
    method = RawAttention(model, interpolate_mode="nearest")
    pmap = method.attribute(x, return_patch_map=True)
    assert pmap.shape == (2, 5, 6)
    want = pmap.repeat_interleave(8, dim=1).repeat_interleave(8, dim=2)[:, :36, :44]
    assert_close(method.attribute(x)[:, 0], want, "exact")


def test_ltx_built_under_inference_mode_equals_one_built_outside() -> None:
    model = make_vit("cls")
    explainer = build_explainer(model)
    x = input_for(model, batch=2)
    before = snapshot(model)
    want = LTX(model, explainer=copy.deepcopy(explainer), finetune_steps=2).attribute(x, target=[0, 1])
    with torch.inference_mode():
        got = LTX(model, explainer=copy.deepcopy(explainer), finetune_steps=2).attribute(x, target=[0, 1])
    assert_close(got, want, "exact")
    assert_untouched(model, before)


def test_normalisation_of_the_wrong_length_is_refused_at_construction() -> None:
    model = make_vit("cls")
    with pytest.raises(ValueError, match=r"mean and std must have 1 or 3 entries .*got 2"):
        PLTX(model, explainer=build_explainer(model), mean=(0.5, 0.5), std=(0.5, 0.5))


def test_constant_rollout_of_uniform_attention_is_told() -> None:
    from captum_vit.attr import ConstantMapWarning, EmptyMapWarning

    assert issubclass(ConstantMapWarning, EmptyMapWarning)
    model = make_vit("cls")
    with torch.no_grad():
        for blk in model.blocks:  # q = k = 0: uniform attention everywhere
            d = blk.attn.qkv.in_features
            blk.attn.qkv.weight[: 2 * d] = 0
            blk.attn.qkv.bias[: 2 * d] = 0
    with pytest.warns(ConstantMapWarning, match=r"AttentionRollout: the map of image\(s\) \[0\] is constant"):
        AttentionRollout(model).attribute(input_for(model, batch=1))
