"""Feature-backbone explainees: timm ConvNeXt, EfficientNet, RegNet, torchvision ResNet, and the
hierarchical transformers Swin and PVT-v2 (tiny random configurations, offline).

Grad-CAM is checked against a computation with hooks placed by hand on the layer the test
expects (the layout converted by hand: Swin's stages are ``(B, h, w, C)``); IIA on Swin
against the same hand computation of its integrand; the attention-graph methods must refuse
the hierarchical models, naming why.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import pytest
import timm
import torch
import torchvision
from torch import Tensor, nn

from captum_vit.attr import IIA, LTX, PLTX, GradCAM, get_method, list_methods
from captum_vit.explainers import CNNExplainer, build_explainer
from captum_vit.models.cnn import CNNAdapter, backbone_refusal, is_cnn
from captum_vit.testing import assert_close, make_vit
from captum_vit.testing.contract import assert_untouched, snapshot

SWIN = dict(img_size=32, patch_size=4, embed_dim=16, depths=(1, 1), num_heads=(1, 2), window_size=4)
TINY4 = dict(depths=(1, 1, 1, 1))


def _timm(name: str, **kwargs: Any) -> Callable[[], nn.Module]:
    return lambda: timm.create_model(name, pretrained=False, num_classes=5, **kwargs)


#: family -> (builder, input side, expected stage names, layout)
FAMILIES: dict[str, tuple[Callable[[], nn.Module], int, list[str], str]] = {
    "convnext": (_timm("convnext_atto", dims=(8, 16, 24, 32), **TINY4), 64, [f"stages.{i}" for i in range(4)], "NCHW"),
    "efficientnet": (_timm("efficientnet_b0"), 64, [f"blocks.{i}" for i in (0, 1, 2, 4, 6)], "NCHW"),
    "regnet": (_timm("regnetx_002"), 64, ["s1", "s2", "s3", "s4"], "NCHW"),
    "tv_resnet": (
        lambda: torchvision.models.resnet18(weights=None, num_classes=5),
        64,
        ["layer1", "layer2", "layer3", "layer4"],
        "NCHW",
    ),
    "swin": (_timm("swin_tiny_patch4_window7_224", **SWIN), 32, ["layers.0", "layers.1"], "NHWC"),
    "pvt_v2": (
        _timm("pvt_v2_b0", embed_dims=(8, 16, 24, 32), num_heads=(1, 1, 1, 1), **TINY4),
        64,
        [f"stages.{i}" for i in range(4)],
        "NCHW",
    ),
}
HIERARCHICAL = ("swin", "pvt_v2")
ATTENTION_GRAPH_METHODS = [n for n in list_methods("vit") if n not in list_methods("cnn")]


def build(family: str, seed: int = 0) -> tuple[nn.Module, Tensor]:
    make, side, _, _ = FAMILIES[family]
    torch.manual_seed(seed)
    model = make().eval()
    return model, torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(seed + 1))


def stage_outputs(model: nn.Module, layer: nn.Module, x: Tensor) -> list[Tensor]:
    """``layer``'s outputs in one forward pass of ``model`` (hook placed by hand)."""
    acts: list[Tensor] = []
    handle = layer.register_forward_hook(lambda _m, _i, out: acts.append(out))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    return acts


def manual_gradcam(model: nn.Module, layer: nn.Module, x: Tensor, target: int, nhwc: bool) -> Tensor:
    """Grad-CAM by hand: ReLU(sum_c mean_hw(dy/dA_c) A_c) on ``layer``'s output."""
    acts: list[Tensor] = []
    handle = layer.register_forward_hook(lambda _m, _i, out: acts.append(out))
    try:
        score = model(x)[:, target].sum()
    finally:
        handle.remove()
    (grad,) = torch.autograd.grad(score, acts[0])
    act = acts[0].detach()
    if nhwc:
        act, grad = act.permute(0, 3, 1, 2), grad.permute(0, 3, 1, 2)
    return (grad.mean(dim=(2, 3), keepdim=True) * act).sum(dim=1).clamp(min=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_stages_resolved_from_the_model(family: str) -> None:
    model, _ = build(family)
    _, _, names, layout = FAMILIES[family]
    a = CNNAdapter(model)
    assert a.stage_names == names and a.layout == layout
    assert a.feature_layer is model.get_submodule(names[-1])
    assert a.hierarchical == (family in HIERARCHICAL)
    assert a.num_classes == 5 and a.in_chans == 3 and a.dtype == torch.float32
    assert a.stage_index(names[0]) == 0 and a.stage_index(a.stages[-1]) == len(names) - 1
    with pytest.raises(ValueError, match="feature_layer.*stages"):
        a.stage_index("head")


@pytest.mark.filterwarnings("ignore::captum_vit.attr.EmptyMapWarning")  # the manual map is empty too
@pytest.mark.parametrize("family", FAMILIES)
def test_gradcam_matches_hooks_on_the_resolved_and_a_given_layer(family: str) -> None:
    model, x = build(family)
    _, _, names, layout = FAMILIES[family]
    before = snapshot(model)
    for target in (0, 3):
        got = GradCAM(model).attribute(x, target=target, return_patch_map=True)
        want = manual_gradcam(model, model.get_submodule(names[-1]), x, target, layout == "NHWC")
        assert_close(got, want, "fp32", f"{family} default layer, target {target}")
        assert got.amax() > 0, "an all-zero map checks nothing"
    given = model.get_submodule(names[-2])
    want = manual_gradcam(model, given, x, 1, layout == "NHWC")
    for layer in (given, names[-2]):  # a module or its dotted name
        got = GradCAM(model, layer=layer).attribute(x, target=1, return_patch_map=True)
        assert (
            got.shape == want.shape
            and got.shape[-1] > GradCAM(model).attribute(x, target=1, return_patch_map=True).shape[-1]
        )
        assert_close(got, want, "fp32", f"{family} layer {names[-2]}")
    assert_untouched(model, before)


def test_gradcam_on_swin_reads_an_nchw_convolution_as_it_is() -> None:
    model, x = build("swin")
    want = manual_gradcam(model, model.get_submodule("patch_embed.proj"), x, 2, nhwc=False)
    got = GradCAM(model, layer="patch_embed.proj").attribute(x, target=2, return_patch_map=True)
    assert got.shape == (2, 8, 8)
    assert_close(got, want, "fp32", "patch projection")


def test_gradcam_rejects_a_layer_without_a_feature_map() -> None:
    model, x = build("convnext")
    with pytest.raises(ValueError, match="layer 'head.fc' must output 4-D"):
        GradCAM(model, layer="head.fc").attribute(x, target=0)
    with pytest.raises(ValueError, match="not a submodule"):
        GradCAM(model, layer="stages.9")


def _nonconstant(pmap: Tensor) -> bool:
    return bool(torch.isfinite(pmap).all()) and bool((pmap.flatten(1).std(dim=1) > 0).all())


@pytest.mark.parametrize("family", FAMILIES)
def test_iia_ltx_pltx_give_finite_nonconstant_maps(family: str) -> None:
    model, x = build(family)
    before = snapshot(model)
    explainer = build_explainer(model)
    # A 1e-3 Adam step moves every weight of torchvision's untrained ResNet-18 far enough to
    # saturate the mask; 1e-5 keeps two steps informative.
    methods = [
        IIA(model, n_steps=2),
        PLTX(model, explainer=explainer),
        LTX(model, explainer=explainer, finetune_steps=2, finetune_lr=1e-5),
    ]
    for method in methods:
        maps = [method.attribute(x, target=t, return_patch_map=True) for t in (0, 2)]
        assert any(_nonconstant(m) for m in maps), f"{type(method).__name__} on {family}: {maps}"
    assert_untouched(model, before)


@pytest.mark.parametrize("family", HIERARCHICAL)
@pytest.mark.parametrize("name", ATTENTION_GRAPH_METHODS)
def test_attention_graph_methods_refuse_hierarchical_models_naming_why(family: str, name: str) -> None:
    model, _ = build(family)
    cls = get_method(name)
    kind = "windowed" if family == "swin" else "spatially reduced keys"
    with pytest.raises(
        TypeError, match=rf"{cls.__name__} does not support .*hierarchical transformer.*{kind}.*gradcam"
    ):
        cls(model)
    with pytest.raises(TypeError, match=rf"{cls.__name__} does not support ConvNeXt: .*a CNN.*no attention.*gradcam"):
        cls(build("convnext")[0])
    assert backbone_refusal(make_vit(), cls.__name__) is None


def test_rollout_refusal_says_a_rollout_across_windows_is_not_defined() -> None:
    model, _ = build("swin")
    with pytest.raises(TypeError, match="token-graph rollout across windows is not defined"):
        get_method("rollout")(model)


def test_vits_are_not_feature_backbones_and_plain_modules_are_refused() -> None:
    with pytest.raises(TypeError, match="is a ViT.*vit_gradcam"):
        CNNAdapter(make_vit())
    assert not is_cnn(nn.Sequential(nn.Flatten(), nn.Linear(12, 2)))
    with pytest.raises(TypeError, match="supported"):
        GradCAM(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten()))


@pytest.mark.parametrize("family", ["swin", "tv_resnet", "efficientnet"])
def test_explainer_reads_the_given_stage_in_nchw(family: str) -> None:
    model, x = build(family)
    _, _, names, layout = FAMILIES[family]
    for stage in (-1, names[-2]):
        explainer = CNNExplainer(model, feature_layer=stage)
        layer = model.get_submodule(names[stage] if isinstance(stage, int) else stage)
        acts = stage_outputs(model, layer, x)
        with torch.no_grad():
            got = explainer.reader(explainer.backbone, x)
        want = acts[0].permute(0, 3, 1, 2) if layout == "NHWC" else acts[0]
        assert_close(got, want, "fp32", f"{family} stage {stage}")
        assert explainer(x).shape == (2, *want.shape[2:])
    with pytest.raises(ValueError, match="feature_layer"):
        CNNExplainer(model, feature_layer=len(names))
    with pytest.raises(TypeError, match="feature_layer is for CNN"):
        build_explainer(make_vit(), feature_layer=-1)


def test_iia_on_swin_handles_the_channels_last_stage() -> None:
    model, x = build("swin")
    stage = model.get_submodule("layers.1")
    acts: list[Tensor] = []
    handle = stage.register_forward_hook(lambda _m, _i, out: acts.append(out))
    try:
        score = model(x)[:, 1].sum()
    finally:
        handle.remove()
    (grad,) = torch.autograd.grad(score, acts[0])
    u = acts[0].detach()  # (B, h, w, C)
    # paper reference, one interpolation step on the stage and none on the image: the points
    # c = 0 (integrand zero) and c = 1, so the mean is half of dy/du * (u - r), r the spatial min
    want = 0.5 * (grad * (u - u.amin(dim=(1, 2), keepdim=True))).sum(dim=-1)
    got = IIA(model, n_steps=(0, 1)).attribute(x, target=1, return_patch_map=True)
    assert_close(got, want, "fp32", "paper")
    released = IIA(model, n_steps=(0, 0), cnn_reference="released").attribute(x, target=1, return_patch_map=True)
    assert_close(released, (grad * u.clamp(min=0)).sum(dim=-1), "fp32", "released")


def test_explainers_copy_and_the_model_is_untouched() -> None:
    model, x = build("pvt_v2")
    before = snapshot(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        explainer = build_explainer(model, feature_layer="stages.2")
    assert explainer.geometry == {"kind": "cnn", "in_chans": 3}
    assert explainer(x).shape == (2, 4, 4)
    pltx = PLTX(model, explainer=explainer).attribute(x, return_patch_map=True)  # LTX on the given stage's grid
    assert_close(pltx, torch.sigmoid(explainer(x)), "exact", "pLTX is the explainer's mask")
    assert all(p is not q for p, q in zip(explainer.backbone.parameters(), model.parameters()))
    assert_untouched(model, before)


def test_input_checks_name_the_size_the_model_takes() -> None:
    swin, _ = build("swin")
    with pytest.raises(
        ValueError, match=r"inputs spatial size \(64, 64\) does not match the model's img_size \(32, 32\)"
    ):
        GradCAM(swin).attribute(torch.randn(1, 3, 64, 64), target=0)
    convnext, _ = build("convnext")
    with pytest.raises(ValueError, match=r"inputs spatial size \(16, 16\) is below the model's minimum of 32x32"):
        GradCAM(convnext).attribute(torch.randn(1, 3, 16, 16), target=0)
