"""A ViT inside a larger module: named with ``Wrapped`` or found automatically, its
preprocessing found or named, and every method explaining the pipeline as it explains the
bare ViT on preprocessed images."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor, nn
from torchvision.transforms import Normalize

import captum_vit
from captum_vit.attr import LTX, PLTX, get_method, list_methods
from captum_vit.explainers import build_explainer
from captum_vit.models import ViTAdapter, Wrapped
from captum_vit.models.wrapped import preprocess_of
from captum_vit.testing import assert_close, assert_untouched, make_vit, options_for, snapshot
from captum_vit.testing.families import normalized_pipeline

#: Methods whose map on the pipeline must equal the bare ViT's on normalised images (LTX
#: and IIA are compared separately: their explainer weights / baseline must be matched).
SAME_MAPS = sorted(set(list_methods("vit")) - {"iia", "ltx", "pltx"})


@pytest.fixture(scope="module")
def pipeline() -> nn.Sequential:
    return normalized_pipeline(seed=0)


@pytest.fixture(scope="module")
def pixels() -> Tensor:
    return torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))


def _stats(vit: nn.Module) -> tuple[Tensor, Tensor]:
    cfg: dict[str, tuple[float, ...]] = vit.pretrained_cfg  # type: ignore[assignment]
    return torch.tensor(cfg["mean"]), torch.tensor(cfg["std"])


def _normalised(vit: nn.Module, pixels: Tensor) -> Tensor:
    mean, std = _stats(vit)
    return (pixels - mean.view(-1, 1, 1)) / std.view(-1, 1, 1)


class TwoTowers(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rgb, self.depth = make_vit(seed=0), make_vit(seed=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.rgb(x) + self.depth(x)


class Classifier(nn.Module):
    """A custom forward around one ViT attribute (scaling the input on the way)."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = make_vit(seed=0)

    def forward(self, x: Tensor) -> Tensor:
        return self.backbone(2 * x - 1)


@pytest.mark.parametrize("method", SAME_MAPS)
def test_wrapped_pipeline_maps_equal_bare_vit_on_normalised_images(
    method: str, pipeline: nn.Sequential, pixels: Tensor
) -> None:
    vit = pipeline[1]
    wrapped = Wrapped(pipeline, vit="1", preprocess="0")
    before = snapshot(wrapped)
    got = get_method(method)(wrapped, **options_for(method, wrapped)).attribute(pixels, target=1, return_patch_map=True)
    want = get_method(method)(vit, **options_for(method, vit)).attribute(
        _normalised(vit, pixels), target=1, return_patch_map=True
    )
    assert_close(got, want, "fp32")
    assert float(want.abs().amax()) > 0  # the comparison is between real maps
    assert_untouched(wrapped, before)


def test_iia_on_pipeline_with_the_baseline_that_normalises_to_zero(pipeline: nn.Sequential, pixels: Tensor) -> None:
    # IIA interpolates the model's input from its baseline: the pipeline's pixel baseline
    # ``mean`` is the bare ViT's normalised baseline 0, so the two paths are the same.
    vit = pipeline[1]
    mean, _ = _stats(vit)
    got = get_method("iia")(pipeline, n_steps=2, baseline=mean.view(3, 1, 1)).attribute(
        pixels, target=2, return_patch_map=True
    )
    want = get_method("iia")(vit, n_steps=2).attribute(_normalised(vit, pixels), target=2, return_patch_map=True)
    assert_close(got, want, "fp32_loose")


def test_ltx_explainer_runs_the_pipeline_preprocessing(pipeline: nn.Sequential, pixels: Tensor) -> None:
    vit = pipeline[1]
    wrapped = Wrapped(pipeline, vit="1", preprocess="0")
    explainer = build_explainer(wrapped)
    assert isinstance(explainer.preprocess, Normalize) and explainer.preprocess is not pipeline[0]
    bare = build_explainer(vit)
    assert isinstance(bare.preprocess, nn.Identity)
    # the same explainer weights; the fingerprint buffer stays each explainee's own
    state = {k: v for k, v in explainer.state_dict().items() if k != "explainee_sha256"}
    bare.load_state_dict(state | {"explainee_sha256": bare.explainee_sha256})
    x = _normalised(vit, pixels)
    assert_close(explainer(pixels), bare(x), "fp32")
    for cls, steps in ((PLTX, 0), (LTX, 2)):
        torch.manual_seed(0)
        got = cls(wrapped, explainer=explainer, finetune_steps=steps, finetune_lr=1e-3).attribute(
            pixels, target=1, return_patch_map=True
        )
        torch.manual_seed(0)
        want = cls(vit, explainer=bare, finetune_steps=steps, finetune_lr=1e-3).attribute(
            x, target=1, return_patch_map=True
        )
        assert_close(got, want, "fp32_loose")


def _kinds(preprocess: nn.Module | None) -> list[type[nn.Module]]:
    assert isinstance(preprocess, nn.Sequential), preprocess
    return [type(m) for m in preprocess]


def test_preprocess_found_automatically_in_a_sequential(pipeline: nn.Sequential) -> None:
    a = ViTAdapter(pipeline)
    assert a.inner == "1" and a.module is pipeline[1]
    assert isinstance(a.preprocess, nn.Sequential) and list(a.preprocess) == [pipeline[0]]
    nested = nn.Sequential(nn.Identity(), nn.Sequential(pipeline[0], pipeline[1]), nn.Softmax(-1))
    found = ViTAdapter(nested)
    assert found.inner == "1.1" and _kinds(found.preprocess) == [nn.Identity, Normalize]
    assert ViTAdapter(pipeline[1]).preprocess is None
    # a Wrapped without ``preprocess`` passes its input on: the Sequential rule applies inside
    inside = ViTAdapter(Wrapped(pipeline, vit="1")).preprocess
    assert isinstance(inside, nn.Sequential) and list(inside) == [pipeline[0]]


def test_custom_module_with_one_vit_is_found_and_its_preprocessing_is_unknown() -> None:
    model = Classifier().eval()
    a = ViTAdapter(model)
    assert a.inner == "backbone" and a.module is model.backbone and a.preprocess is None
    x = torch.randn(1, 3, 32, 32)
    maps = get_method("gae")(model).attribute(x, target=0, return_patch_map=True)
    assert torch.isfinite(maps).all() and float(maps.amax() - maps.amin()) > 0
    # named explicitly, the preprocessing is the one given
    scale = nn.Sequential(nn.Identity())
    holder = nn.Sequential(scale, model)
    assert ViTAdapter(Wrapped(holder, vit="1.backbone", preprocess="0")).preprocess is scale


def test_two_vits_raise_naming_both_and_pointing_at_wrapped() -> None:
    with pytest.raises(TypeError, match=r"several ViTs \(rgb, depth\).*Wrapped"):
        ViTAdapter(TwoTowers())
    with pytest.raises(TypeError, match="several ViTs"):
        get_method("rollout")(TwoTowers())
    a = ViTAdapter(Wrapped(TwoTowers(), vit="depth"))
    assert a.inner == "model.depth"


def test_the_inner_vit_is_searched_for_once_per_adapter(pipeline: nn.Sequential, monkeypatch: pytest.MonkeyPatch) -> None:
    import captum_vit.models.vit as vit_module

    calls: list[str | None] = []
    search = vit_module._resolve_inner

    def counted(model: nn.Module, inner: str | None) -> tuple[str, nn.Module]:
        calls.append(inner)
        return search(model, inner)

    monkeypatch.setattr(vit_module, "_resolve_inner", counted)
    a = ViTAdapter(pipeline)
    assert (a.inner, a.module, calls) == ("1", pipeline[1], [None])
    assert "_resolved" not in vars(a)


@pytest.mark.parametrize("arg", ["vit", "preprocess"])
def test_wrong_path_raises_value_error_naming_the_argument(arg: str, pipeline: nn.Sequential) -> None:
    kwargs = {"vit": "1", "preprocess": "0"} | {arg: "2.head"}
    with pytest.raises(ValueError, match=rf"{arg}='2.head' is not a submodule of the Sequential model"):
        Wrapped(pipeline, **kwargs)
    with pytest.raises(TypeError, match="vit must be a dotted submodule path"):
        Wrapped(pipeline, vit=1)  # type: ignore[arg-type]


def test_wrapped_runs_the_pipeline_unchanged_and_leaves_it_untouched(pipeline: nn.Sequential, pixels: Tensor) -> None:
    wrapped = Wrapped(pipeline, vit="1", preprocess="0")
    assert torch.equal(wrapped(pixels), pipeline(pixels))
    assert wrapped.state_dict().keys() == {f"model.{k}" for k in pipeline.state_dict()}
    before, before_pipeline = snapshot(wrapped), snapshot(pipeline)
    for method in ("rollout", "mutex", "ltx"):
        get_method(method)(wrapped, **options_for(method, wrapped)).attribute(pixels, target=0)
    assert_untouched(wrapped, before)
    assert_untouched(pipeline, before_pipeline)


def test_preprocess_of_unknown_path_kinds() -> None:
    custom = Classifier()
    assert preprocess_of(custom, "backbone") is None
    assert preprocess_of(custom, "") is None
    subclass = type("MySequential", (nn.Sequential,), {"forward": lambda self, x: x})(nn.Tanh(), make_vit())
    assert preprocess_of(subclass, "1") is None  # its own forward: not known to run in order
    deep = copy.deepcopy(nn.Sequential(nn.Tanh(), nn.Linear(3, 3), make_vit()))
    assert _kinds(preprocess_of(deep, "2")) == [nn.Tanh, nn.Linear]


def test_wrapped_is_exported_at_top_level() -> None:
    assert captum_vit.Wrapped is Wrapped and "Wrapped" in captum_vit.__all__
