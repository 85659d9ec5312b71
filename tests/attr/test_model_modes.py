"""Every method on the models people deploy: compiled, under inference mode, in half
precision, in training mode, without a classifier (issue 16, "Compiled, inference-mode and
half-precision models" and "Readouts")."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from captum.attr import Attribution
from torch import Tensor, nn

from captum_vit.attr import EmptyMapWarning, GenericAttention, TransformerAttribution, get_method, list_methods
from captum_vit.models import load_pretrained
from captum_vit.testing import assert_close, input_for, make_cnn, make_vit, options_for

VIT_METHODS = list_methods("vit")
CASES = [(name, "vit") for name in VIT_METHODS] + [(name, "cnn") for name in list_methods("cnn")]
TARGETS = [0, 3]


def _model(kind: str) -> nn.Module:
    return make_cnn(channels=(8, 16, 32, 64)) if kind == "cnn" else make_vit("cls")


def _x(model: nn.Module, kind: str, batch: int = 2) -> Tensor:
    return input_for(model, batch=batch, size=(64, 64) if kind == "cnn" else None)


def _build(name: str, model: nn.Module, options: dict[str, object] | None = None, **extra: object) -> Attribution:
    """The method with the contract's options (pass ``options`` to share learned parts)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return get_method(name)(model, **(options_for(name, model) if options is None else options), **extra)


def _maps(method: Attribution, x: Tensor, **kwargs: object) -> Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EmptyMapWarning)
        return method.attribute(x, target=TARGETS, return_patch_map=True, **kwargs)


def correlation(a: Tensor, b: Tensor) -> Tensor:
    """Per-image Pearson correlation of two ``(B, ...)`` maps (1 where both are all zero)."""
    a, b = a.flatten(1).double(), b.flatten(1).double()
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    den = a.norm(dim=1) * b.norm(dim=1)
    both_flat = (a.abs().amax(1) == 0) & (b.abs().amax(1) == 0)
    return torch.where(both_flat, 1.0, (a * b).sum(1) / den.clamp_min(1e-30))


# ------------------------------------------------------------------ compiled models
@pytest.mark.parametrize(("name", "kind"), CASES)
def test_compiled_model_is_explained_through_its_module(name: str, kind: str) -> None:
    model = _model(kind)
    x = _x(model, kind)
    options = options_for(name, model)
    expected = _maps(_build(name, model, options), x)
    compiled = torch.compile(model, backend="eager")  # no compiler needed; the graph never runs
    assert_close(_maps(_build(name, compiled, options), x), expected, "exact", f"{name} torch.compile")
    in_place = copy.deepcopy(model)
    in_place.compile(backend="eager")  # compiled in place: the view runs the module eagerly
    assert_close(_maps(_build(name, in_place, options), x), expected, "exact", f"{name} model.compile()")


# ------------------------------------------------------------------- inference mode
@pytest.mark.parametrize(("name", "kind"), CASES)
def test_inference_mode_gives_the_same_map(name: str, kind: str) -> None:
    model = _model(kind)
    method = _build(name, model)
    expected = _maps(method, _x(model, kind))
    with torch.inference_mode():
        x = _x(model, kind)  # an inference tensor, as a server would hold
        got = _maps(method, x)
    assert_close(got, expected, "exact", f"{name} under inference_mode")


def test_parameters_made_under_inference_mode_are_refused_by_gradient_methods() -> None:
    with torch.inference_mode():
        model = make_vit("cls")
    x = input_for(model, batch=2)
    with pytest.raises(RuntimeError, match="inference_mode"):
        GenericAttention(model).attribute(x, target=TARGETS)
    rollout = get_method("rollout")(model)  # gradient-free methods need no autograd graph
    assert torch.isfinite(rollout.attribute(x)).all()


# ------------------------------------------------------------------- half precision
#: Lowest per-image correlation with the float32 map of the same (rounded) weights. MUTEX
#: thresholds quantiles, so rounding moves tokens across a threshold; LTX finetunes through
#: the bfloat16 explainee for two steps; all others are >= 0.99 (measured minimum 0.992).
MIN_CORRELATION = {"mutex": 0.85, ("ltx", "cnn", torch.bfloat16): 0.85}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize(("name", "kind"), CASES)
def test_half_precision_models(name: str, kind: str, dtype: torch.dtype) -> None:
    # float32 weights that the half-precision model holds exactly: the maps then differ by the
    # arithmetic only (learned explainers/gates are built once and shared by both)
    reference = _model(kind).to(dtype).float()
    x = _x(reference, kind, batch=4).to(dtype)
    targets = [0, 1, 2, 3]
    options = options_for(name, reference)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = get_method(name)(reference, **options).attribute(x.float(), target=targets, return_patch_map=True)
        half = copy.deepcopy(reference).to(dtype)
        got = get_method(name)(half, **options).attribute(x, target=targets, return_patch_map=True)
    assert got.dtype == torch.float32 and torch.isfinite(got).all()  # maps in float32 (see patch_map_output)
    low = MIN_CORRELATION.get((name, kind, dtype), MIN_CORRELATION.get(name, 0.99))
    corr = correlation(got, expected)
    assert corr.min() >= low, f"{name} {dtype}: correlation with float32 {corr.tolist()}"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_transformer_attribution_half_matches_float32_on_the_shipped_model(dtype: torch.dtype) -> None:
    """T-Attr on the shipped ViT (weights rounded to ``dtype``, so both models hold the same
    ones): its float16 maps used to correlate 0.82 (min over images) with float32."""
    model = load_pretrained("synthetic-vit").to(dtype).float()
    x = torch.randn(6, 3, 64, 64, generator=torch.Generator().manual_seed(0)).to(dtype)
    expected = TransformerAttribution(model).attribute(x.float(), target=[0, 1, 2, 3, 4, 0], return_patch_map=True)
    half = copy.deepcopy(model).to(dtype)
    got = TransformerAttribution(half).attribute(x, target=[0, 1, 2, 3, 4, 0], return_patch_map=True)
    assert correlation(got, expected).min() >= 0.99
    assert all(p.dtype == dtype for p in half.parameters())  # explained on a float32 view


@pytest.mark.parametrize(("name", "kind"), CASES)
def test_input_dtype_other_than_the_models_is_a_clear_error(name: str, kind: str) -> None:
    model = _model(kind)
    method = _build(name, model)
    with pytest.raises(TypeError, match=r"torch\.bfloat16.*torch\.float32"):
        method.attribute(_x(model, kind).bfloat16(), target=TARGETS)


# ---------------------------------------------------------------- train() mode
@pytest.mark.parametrize("name", VIT_METHODS)
def test_training_mode_is_explained_with_eval_semantics(name: str) -> None:
    rates = dict(drop_rate=0.5, attn_drop_rate=0.5, proj_drop_rate=0.5)
    model = make_vit("cls", **rates)
    x = input_for(model, batch=2)
    options = options_for(name, model)
    expected = _maps(_build(name, model, options), x)
    model.train()
    assert_close(_maps(_build(name, model, options), x), expected, "exact", f"{name} on a model in train()")
    assert all(m.training for m in model.modules())  # the user's flags stay


# ---------------------------------------------------------- models without a classifier
@pytest.mark.parametrize(("name", "kind"), CASES)
def test_no_classifier_needs_an_output_function(name: str, kind: str) -> None:
    model = _model(kind)
    model.reset_classifier(0)
    x = _x(model, kind)
    if name == "transformer_attribution":  # LRP starts at a linear classifier
        with pytest.raises(TypeError, match="num_classes"):
            _build(name, model)
        return
    method = _build(name, model)
    if name == "pltx":  # never runs the model: nothing to score
        assert torch.isfinite(method.attribute(x)).all()
        return
    with pytest.raises(ValueError, match=r"num_classes=0.*output_fn"):
        method.attribute(x, target=TARGETS)


@pytest.mark.parametrize("name", ["gae", "attention_gradcam", "vit_gradcam", "iia"])
def test_output_fn_explains_a_linear_readout_of_the_embedding(name: str) -> None:
    """An embedding model plus ``output_fn = e @ Wᵀ`` is the classifier with head ``W``."""
    classifier = make_vit("cls")
    embedder = copy.deepcopy(classifier)
    embedder.reset_classifier(0)
    w = classifier.head.weight.detach()
    with torch.no_grad():
        classifier.head.bias.zero_()
    x = input_for(classifier, batch=2)
    options = options_for(name, classifier)
    expected = _maps(_build(name, classifier, options), x)
    got = _maps(_build(name, embedder, options, output_fn=lambda e: e @ w.T), x)
    assert_close(got, expected, "fp32", name)
    scalar = _build(name, embedder, options, output_fn=lambda e: e @ w[3])  # one score per image
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EmptyMapWarning)
        got3 = scalar.attribute(x, return_patch_map=True)  # target None: the one score
        expected3 = _build(name, classifier, options).attribute(x, target=3, return_patch_map=True)
        with pytest.raises(ValueError, match="target"):
            scalar.attribute(x, target=1)
    assert_close(got3, expected3, "fp32", f"{name} scalar output vs class 3")


# ------------------------------------------------------------------ empty maps
def test_attention_gradcam_names_the_images_whose_map_is_empty() -> None:
    model = make_vit("cls")
    x = input_for(model, batch=3)
    method = get_method("attention_gradcam")(model)
    with pytest.warns(EmptyMapWarning, match=r"image\(s\) \[1\]") as caught:
        maps = method.attribute(x, target=[2, 0, 4], return_patch_map=True)
    assert maps[1].abs().max() == 0 and (maps[[0, 2]].flatten(1).amax(1) > 0).all()
    assert caught[0].filename == __file__  # points at the caller
