"""Registry-wide contract: every registered method behaves as a captum Attribution should.

Table-driven over ``list_methods()``, so a newly registered method is checked here without
new test code (captum's ``test_targets.py`` / ``test_hook_removal.py`` pattern).
"""

from __future__ import annotations

import pytest
import torch
from captum.attr import NoiseTunnel
from captum.attr import visualization as viz
from captum.metrics import infidelity, sensitivity_max
from torch import nn

from captum_vit.attr import get_method, list_methods
from tests.conftest import NUM_CLASSES, input_for, make_cnn, make_vit
from tests.contract_options import options_for
from tests.helpers import assert_close

VIT_METHODS = list_methods("vit")
CNN_METHODS = list_methods("cnn")
CASES = [(name, "vit") for name in VIT_METHODS] + [(name, "cnn") for name in CNN_METHODS]


def _model(kind: str) -> nn.Module:
    return make_vit("cls") if kind == "vit" else make_cnn()


def _build(name: str, model: nn.Module):
    return get_method(name)(model, **options_for(name, model))


def snapshot(model: nn.Module) -> dict[str, object]:
    return {
        "training": [m.training for m in model.modules()],
        "params": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grads": [p.grad for p in model.parameters()],
        "fused": [getattr(m, "fused_attn", None) for m in model.modules()],
    }


def assert_untouched(model: nn.Module, before: dict[str, object]) -> None:
    after = snapshot(model)
    assert after["training"] == before["training"], "training flags changed"
    assert after["requires_grad"] == before["requires_grad"], "requires_grad flags changed"
    assert all(g is None for g in after["grads"]), "gradients were accumulated into the model's .grad"
    assert after["fused"] == before["fused"], "fused_attn flags not restored"
    for k, v in before["params"].items():  # type: ignore[union-attr]
        assert torch.equal(after["params"][k], v), f"parameter/buffer {k} changed"  # type: ignore[index]
    for m in model.modules():
        for attr in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks"):
            assert len(getattr(m, attr)) == 0, f"{type(m).__name__}.{attr} not empty"


@pytest.mark.parametrize(("name", "kind"), CASES)
def test_shape_batch_consistency_determinism(name: str, kind: str) -> None:
    model = _model(kind)
    before = snapshot(model)
    method = _build(name, model)
    x = input_for(model, batch=3)
    targets = [0, 3, 1]
    batched = method.attribute(x, target=targets)
    assert batched.shape == x.shape and batched.dtype == x.dtype and batched.device == x.device
    assert torch.isfinite(batched).all()
    assert_close(method.attribute(x, target=torch.tensor(targets)), batched, "exact", "tensor vs list target")
    for i, t in enumerate(targets):
        single = method.attribute(x[i : i + 1], target=t)
        assert_close(single[0], batched[i], "fp32_loose", f"{name}: example {i} alone vs in batch")
    assert_close(method.attribute(x, target=targets), batched, "exact", "not deterministic")
    # tuple in, tuple out; patch map option
    out = method.attribute((x,), target=targets)
    assert isinstance(out, tuple) and len(out) == 1
    assert_close(out[0], batched, "exact")
    assert_untouched(model, before)


@pytest.mark.parametrize(("name", "kind"), CASES)
def test_target_none_is_prediction_and_no_grad(name: str, kind: str) -> None:
    model = _model(kind)
    before = snapshot(model)
    method = _build(name, model)
    x = input_for(model, batch=2)
    pred = model(x).argmax(1)
    expected = method.attribute(x, target=pred)
    assert_close(method.attribute(x), expected, "exact", "target=None should explain the predicted class")
    with torch.no_grad():
        assert_close(method.attribute(x, target=pred), expected, "exact", "differs under no_grad")
    assert_untouched(model, before)


@pytest.mark.parametrize(("name", "kind"), CASES)
def test_hooks_and_flags_restored_after_exception(name: str, kind: str) -> None:
    model = _model(kind)
    method = _build(name, model)
    x = input_for(model, batch=2)
    method.attribute(x[:1], target=0)  # methods may cache lazily built state; warm up first

    class Boom(nn.Module):
        def forward(self, t: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("boom inside the model")

    holder = model.blocks[-1].mlp if kind == "vit" else model.layer4[-1]
    attr = "act" if kind == "vit" else "act1"
    original = getattr(holder, attr)
    setattr(holder, attr, Boom())
    before = snapshot(model)
    try:
        if method.runs_explainee:
            with pytest.raises(RuntimeError, match="boom"):
                method.attribute(x, target=[0, 1])
        else:  # never calls the model, so the failure cannot surface
            method.attribute(x, target=[0, 1])
        assert_untouched(model, before)
    finally:
        setattr(holder, attr, original)


@pytest.mark.parametrize(("name", "kind"), CASES)
def test_bad_targets_and_inputs(name: str, kind: str) -> None:
    model = _model(kind)
    before = snapshot(model)
    method = _build(name, model)
    x = input_for(model, batch=2)
    with pytest.raises(ValueError, match="target"):
        method.attribute(x, target=NUM_CLASSES)
    with pytest.raises(ValueError, match="target"):
        method.attribute(x, target=[0, 1, 2])
    with pytest.raises(ValueError, match="inputs"):
        method.attribute(x[0], target=0)
    with pytest.raises(ValueError, match="channels"):
        method.attribute(x[:, :1], target=0)
    bad = x.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        method.attribute(bad, target=0)
    if kind == "vit":
        with pytest.raises(ValueError, match="size"):
            method.attribute(torch.randn(2, 3, 40, 40), target=0)
    assert_untouched(model, before)


def test_unsupported_model_type_error() -> None:
    for name in list_methods():
        with pytest.raises(TypeError, match="supported"):
            get_method(name)(nn.Sequential(nn.Flatten(), nn.Linear(12, 2)))


@pytest.mark.parametrize(("name", "kind"), CASES)
def test_captum_consumers(name: str, kind: str, tmp_path) -> None:
    model = _model(kind)
    before = snapshot(model)
    method = _build(name, model)
    x = input_for(model, batch=2)
    targets = [1, 2]
    # NoiseTunnel expands inputs and per-example targets itself.
    nt = NoiseTunnel(method)
    smooth = nt.attribute(x, nt_type="smoothgrad", nt_samples=2, stdevs=0.05, target=targets)
    assert smooth.shape == x.shape and torch.isfinite(smooth).all()

    attr = method.attribute(x, target=targets)

    def perturb(inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        noise = torch.randn_like(inputs) * 0.01
        return noise, inputs - noise

    infid = infidelity(model, perturb, x, attr, target=targets, n_perturb_samples=2)
    assert infid.shape == (2,) and torch.isfinite(infid).all()
    sens = sensitivity_max(method.attribute, x, target=targets, n_perturb_samples=2)
    assert sens.shape == (2,) and torch.isfinite(sens).all()
    image = (x[0] - x[0].min()) / (x[0].max() - x[0].min())
    a = attr[0].permute(1, 2, 0).numpy()
    if a.any():  # captum's normaliser rejects all-zero maps by design
        fig, _ = viz.visualize_image_attr(
            a, image.permute(1, 2, 0).numpy(), method="blended_heat_map", sign="absolute_value", use_pyplot=False
        )
        fig.savefig(tmp_path / "viz.png")
    assert_untouched(model, before)
