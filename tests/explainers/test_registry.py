"""Finding the explainer of a model: registered by fingerprint, explicit files, refused mismatches."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from captum_vit.attr import LTX, PLTX, VisionDiffMask
from captum_vit.explainers import DiffMaskGates, build_explainer, load_gates, load_ltx_explainer
from captum_vit.models.fingerprint import model_fingerprint
from captum_vit.models.registry import register_weights
from captum_vit.testing import assert_close, input_for, make_cnn, make_vit

ARCH = {
    "timm_name": "vit_tiny_patch16_224",
    "kwargs": dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=5),
    "pretrained_cfg": {"input_size": [3, 32, 32], "mean": [0.5] * 3, "std": [0.5] * 3, "num_classes": 5},
}


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CAPTUM_VIT_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def _trained_looking(model: torch.nn.Module) -> torch.nn.Module:
    e = build_explainer(model)
    with torch.no_grad():
        e.head[-1].weight.normal_(0, 0.5)
    return e


def test_ltx_finds_the_explainer_registered_for_the_models_weights() -> None:
    model, other = make_vit(), make_vit(seed=4)
    explainer = _trained_looking(model)
    explainer.mask_weight = 5.0
    register_weights(
        "mine-pltx", "pltx", explainer.state_dict(), metadata=explainer.weights_metadata(),
        explainee="mine", explainee_fingerprint=model_fingerprint(model),
        kwargs={"architecture": ARCH, "mask_weight": 5.0},
    )  # fmt: skip
    x = input_for(model, batch=2)
    found = LTX(model, finetune_steps=0)
    assert found.mask_weight == 5.0
    assert_close(found.attribute(x), PLTX(model, explainer=explainer).attribute(x), "exact")
    assert_close(PLTX(model, explainer="mine-pltx").attribute(x), found.attribute(x), "exact")
    with pytest.warns(UserWarning, match="UNTRAINED"):  # other weights: nothing registered for them
        LTX(other, finetune_steps=0)
    with pytest.raises(ValueError, match="neither a file nor a registered pltx explainer.*mine-pltx"):
        LTX(model, explainer="nope")


def test_explicit_explainer_file(tmp_path: Path) -> None:
    model = make_vit()
    explainer = _trained_looking(model)
    explainer.mask_weight = 7.0
    explainer.save(tmp_path / "best.safetensors")
    x = input_for(model, batch=2)
    ltx = LTX(model, explainer=str(tmp_path / "best.safetensors"), finetune_steps=0)
    assert ltx.mask_weight == 7.0
    assert_close(ltx.attribute(x), PLTX(model, explainer=explainer).attribute(x), "exact")


def test_mismatched_ltx_explainer_is_refused_naming_both_fingerprints(tmp_path: Path) -> None:
    model, other = make_vit(), make_vit(seed=3)
    theirs, ours = model_fingerprint(other), model_fingerprint(model)
    _trained_looking(other).save(tmp_path / "other.safetensors")
    both = f"trained for .* fingerprint {theirs}; this model's fingerprint is {ours}"
    for spec in (tmp_path / "other.safetensors", build_explainer(other)):
        with pytest.raises(ValueError, match=both):
            load_ltx_explainer(spec, model)
    with pytest.raises(ValueError, match="architecture does not match"):
        load_ltx_explainer(build_explainer(make_cnn()), model)


def test_diffmask_registered_explicit_and_mismatched_gates(tmp_path: Path) -> None:
    model, other = make_vit(), make_vit(seed=3)
    gates = DiffMaskGates.for_model(model, seed=0)
    x = input_for(model, batch=2)
    with pytest.raises(ValueError, match=f"needs gate networks trained for this model .*{model_fingerprint(model)}"):
        VisionDiffMask(model)
    register_weights(
        "mine-diffmask", "diffmask", gates.state_dict(), explainee="mine",
        explainee_fingerprint=model_fingerprint(model), kwargs=dict(gates.config),
    )  # fmt: skip
    expected = VisionDiffMask(model, gates=gates).attribute(x)
    assert_close(VisionDiffMask(model).attribute(x), expected, "exact")  # found by fingerprint
    gates.save(tmp_path / "best.safetensors")
    assert_close(VisionDiffMask(model, gates=tmp_path / "best.safetensors").attribute(x), expected, "exact")
    theirs, ours = model_fingerprint(other), model_fingerprint(model)
    with pytest.raises(ValueError, match=f"fingerprint {ours}; this model's fingerprint is {theirs}"):
        VisionDiffMask(other, gates=tmp_path / "best.safetensors")
    with pytest.raises(ValueError, match="neither a file nor a registered diffmask"):
        load_gates("nope", model)
    with pytest.raises(TypeError, match="gates must be"):
        load_gates(3, model)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="fingerprint must be"):
        DiffMaskGates(32, 4, fingerprint="052ca09f3ae066a0")  # the short, unsorted digest of 0.1


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_half_precision_copy_finds_the_explainers_of_its_weights(dtype: torch.dtype) -> None:
    import warnings

    from captum_vit.explainers import UntrainedExplainerWarning
    from captum_vit.models.pretrained import load_pretrained

    vit = load_pretrained("synthetic-vit")
    half = load_pretrained("synthetic-vit").to(dtype)
    assert model_fingerprint(half) != model_fingerprint(vit) or dtype == torch.float16  # stored as float16
    with warnings.catch_warnings():
        warnings.simplefilter("error", UntrainedExplainerWarning)
        found = PLTX(half)
    shipped = PLTX(vit).explainer.state_dict()
    assert all(torch.equal(found.explainer.state_dict()[k], v) for k, v in shipped.items())
    x = input_for(vit, batch=2)
    assert_close(found.attribute(x.to(dtype)), PLTX(vit).attribute(x.to(dtype).float()), "exact")
    assert VisionDiffMask(half).gates.fingerprint == model_fingerprint(vit)
    other = make_vit(seed=1).to(dtype)  # a half-precision model of other weights finds nothing
    with pytest.warns(UntrainedExplainerWarning):
        LTX(other, finetune_steps=0)


def test_vouched_half_fingerprints_do_not_outlive_the_explainee_they_were_given_for() -> None:
    model, other = make_vit(), make_vit(seed=1)
    explainer = build_explainer(model)
    half = other.to(torch.bfloat16)
    explainer.vouch_half_fingerprints({"bfloat16": model_fingerprint(half)})
    explainer.check_weights_for(half)  # vouched for
    explainer.load_state_dict(build_explainer(make_vit(seed=2)).state_dict())  # another explainee's weights
    with pytest.raises(ValueError, match="trained for the model with weights fingerprint"):
        explainer.check_weights_for(half)


def test_saved_explainers_and_gates_carry_the_half_precision_fingerprints_they_were_vouched_for(
    tmp_path: Path,
) -> None:
    from captum_vit.models.fingerprint import half_fingerprints

    model = make_vit()
    half = make_vit().to(torch.bfloat16)
    explainer, gates = build_explainer(model), DiffMaskGates.for_model(model)
    explainer.save(tmp_path / "plain.safetensors")
    gates.save(tmp_path / "plain-gates.safetensors")
    with pytest.raises(ValueError, match="trained for the model with weights fingerprint"):
        LTX(half, explainer=tmp_path / "plain.safetensors", finetune_steps=0)  # a file names exact weights...
    with pytest.raises(ValueError, match="trained for the model with weights fingerprint"):
        VisionDiffMask(half, gates=str(tmp_path / "plain-gates.safetensors"))
    for m in (explainer, gates):  # ...unless it records the half-precision copies (pretraining does)
        m.vouch_half_fingerprints(half_fingerprints(model))
    explainer.save(tmp_path / "vouched.safetensors")
    gates.save(tmp_path / "vouched-gates.safetensors")
    x = input_for(model, batch=2)
    got = LTX(half, explainer=tmp_path / "vouched.safetensors", finetune_steps=0).attribute(x.to(torch.bfloat16))
    assert_close(got, PLTX(model, explainer=explainer).attribute(x.to(torch.bfloat16).float()), "exact")
    VisionDiffMask(half, gates=str(tmp_path / "vouched-gates.safetensors"))
    with pytest.raises(ValueError, match="trained for the model with weights fingerprint"):
        LTX(make_vit(seed=1).to(torch.bfloat16), explainer=tmp_path / "vouched.safetensors", finetune_steps=0)
