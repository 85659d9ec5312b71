"""Registry-wide contract: every registered method behaves as a captum Attribution should.

Table-driven over ``list_methods()`` and every ViT kind of :mod:`captum_vit.testing` (class
token, distilled, registers, average pooling, non-square, dynamic size), so a newly
registered method is checked here without new test code (captum's ``test_targets.py`` /
``test_hook_removal.py`` pattern). Two attributions outside the registry follow the same
contract: ``EEA`` (the LTX framework for CNNs) and ``FastAttribution`` (an exported pLTX
explainer run by onnxruntime).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from captum.attr import Attribution, NoiseTunnel
from captum.attr import visualization as viz
from captum.metrics import infidelity, sensitivity_max
from filelock import FileLock
from torch import nn

from captum_vit.attr import EEA, get_method, list_methods
from captum_vit.models import ViTAdapter
from captum_vit.testing import (
    ALL_VIT_KINDS,
    NUM_CLASSES,
    assert_close,
    assert_untouched,
    input_for,
    make_cnn,
    make_vit,
    options_for,
    snapshot,
    with_class_weights,
)

FAST = "fast_pltx"
#: Attributions outside the registry, each on the one model kind it is checked on.
EXTRA_CASES = [("eea", "cnn"), (FAST, "cls")]
CASES = (
    [(name, kind) for name in list_methods("vit") for kind in ALL_VIT_KINDS]
    + [(name, "cnn") for name in list_methods("cnn")]
    + EXTRA_CASES
)
Builder = Callable[..., Attribution]


def _model(kind: str) -> nn.Module:
    # A narrow ResNet: LTX/EEA finetune a copy of it per image, which dominates the test time.
    return make_cnn(channels=(8, 16, 32, 64)) if kind == "cnn" else make_vit(kind)


def _inputs(model: nn.Module, kind: str, batch: int) -> torch.Tensor:
    # CNN maps live on the last stage's grid (stride 32): 64x64 images give a 2x2 map, not 1x1.
    return input_for(model, batch=batch, size=(64, 64) if kind == "cnn" else None)


def _grid(model: nn.Module, kind: str, x: torch.Tensor) -> tuple[int, ...]:
    """The map's grid, from the model's own geometry."""
    if kind == "cnn":
        with torch.no_grad():
            return tuple(model.forward_features(x[:1]).shape[-2:])
    return ViTAdapter(model).grid_size((x.shape[-2], x.shape[-1]))


@pytest.fixture(scope="session")
def exported_pltx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A pLTX explainer of ``make_vit("cls")`` exported to ONNX once per test session (the
    pytest-xdist workers share the file: an export takes seconds)."""
    from captum_vit.explainers import build_explainer
    from captum_vit.export import export_onnx
    from captum_vit.export.explainers import pltx_export_module

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):  # each worker has its own base under a shared root
        root = root.parent
    path = root / "contract_pltx.onnx"
    with FileLock(str(path) + ".lock"):
        if not path.is_file():
            vit = make_vit("cls")
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                explainer = build_explainer(vit).eval()
            module, meta = pltx_export_module(explainer, vit)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the exporter's own deprecation chatter
                export_onnx(module, path, meta, precision="fp32")
    return path


@pytest.fixture
def build(request: pytest.FixtureRequest) -> Builder:
    """``build(name, model, options=None)``: the attribution ``name`` explaining ``model``."""

    def _build(name: str, model: nn.Module, options: dict[str, Any] | None = None) -> Attribution:
        if name == FAST:
            from captum_vit.export import FastAttribution

            return FastAttribution(request.getfixturevalue("exported_pltx"))
        cls = EEA if name == "eea" else get_method(name)
        if options is None:
            options = options_for("ltx" if name == "eea" else name, model)
        return cls(model, **options)

    return _build


@pytest.mark.parametrize(("name", "kind"), CASES)
def test_shape_batch_consistency_determinism(name: str, kind: str, build: Builder) -> None:
    model = _model(kind)
    before = snapshot(model)
    method = build(name, model)
    x = _inputs(model, kind, 3)
    targets = [0, 3, 1]
    batched = method.attribute(x, target=targets)
    assert batched.shape == x.shape and batched.dtype == x.dtype and batched.device == x.device
    assert torch.isfinite(batched).all()
    assert_close(method.attribute(x, target=torch.tensor(targets)), batched, "exact", "tensor vs list target")
    for i, t in enumerate(targets):
        single = method.attribute(x[i : i + 1], target=t)
        assert_close(single[0], batched[i], "fp32_loose", f"{name}: example {i} alone vs in batch")
    assert_close(method.attribute(x, target=targets), batched, "exact", "not deterministic")
    out = method.attribute((x,), target=targets)
    assert isinstance(out, tuple) and len(out) == 1
    assert_close(out[0], batched, "exact", "tuple in, tuple out")
    patches = method.attribute(x, target=targets, return_patch_map=True)
    assert patches.shape == (3, *_grid(model, kind, x)) and torch.isfinite(patches).all()
    assert_close(method.attribute(x[1:2], target=3, return_patch_map=True)[0], patches[1], "fp32_loose")
    if kind == "dynamic":  # any size that holds whole patches: 40x48 is a 5x6 grid of 8x8 patches
        y = torch.randn(2, 3, 40, 48, generator=torch.Generator().manual_seed(5))
        grid = method.attribute(y, target=[1, 2], return_patch_map=True)
        assert grid.shape == (2, 5, 6) and torch.isfinite(grid).all()
        assert method.attribute(y, target=[1, 2]).shape == y.shape
        assert_close(method.attribute(y[1:], target=2, return_patch_map=True)[0], grid[1], "fp32_loose")
    assert_untouched(model, before)


@pytest.mark.parametrize(("name", "kind"), CASES)
def test_additional_forward_args(name: str, kind: str, build: Builder) -> None:
    """``additional_forward_args`` reach every forward pass, split along the batch with the
    images: the explainee takes per-example class weights, ``model(x) * weights``."""
    plain = _model(kind)
    weighted = with_class_weights(plain)
    options = None if name == FAST else options_for("ltx" if name == "eea" else name, plain)  # shared learned parts
    x = _inputs(plain, kind, 3)
    targets = [0, 3, 1]
    before = snapshot(weighted)
    method = build(name, weighted, options)
    ones = torch.ones(3, NUM_CLASSES)
    reference = build(name, plain, options).attribute(x, target=targets)
    assert_close(
        method.attribute(x, target=targets, additional_forward_args=(ones,)), reference, "fp32", "unit weights"
    )
    # Weights that change the prediction: the most negative logit becomes the largest one.
    with torch.no_grad():
        logits = plain(x)
    weights = torch.ones(3, NUM_CLASSES)
    weights[torch.arange(3), logits.argmin(1)] = -10.0
    predicted = (logits * weights).argmax(1)
    assert (predicted != logits.argmax(1)).any(), "test set-up: the weights should change a prediction"
    default = method.attribute(x, additional_forward_args=(weights,))
    assert_close(default, method.attribute(x, target=predicted, additional_forward_args=weights), "exact")
    for i in range(3):
        alone = method.attribute(x[i : i + 1], additional_forward_args=(weights[i : i + 1],))
        assert_close(alone[0], default[i], "fp32_loose", f"{name}: example {i} alone, with its own weights")
    assert_untouched(weighted, before)


@pytest.mark.parametrize(("name", "kind"), CASES)
def test_target_none_is_prediction_and_no_grad(name: str, kind: str, build: Builder) -> None:
    model = _model(kind)
    before = snapshot(model)
    method = build(name, model)
    x = _inputs(model, kind, 2)
    with torch.no_grad():
        pred = model(x).argmax(1)
    expected = method.attribute(x, target=pred)
    assert_close(method.attribute(x), expected, "exact", "target=None should explain the predicted class")
    with torch.no_grad():
        assert_close(method.attribute(x, target=pred), expected, "exact", "differs under no_grad")
    assert_untouched(model, before)


@pytest.mark.parametrize(("name", "kind"), CASES)
def test_hooks_and_flags_restored_after_exception(name: str, kind: str, build: Builder) -> None:
    model = _model(kind)
    method = build(name, model)
    x = _inputs(model, kind, 2)
    method.attribute(x[:1], target=0)  # methods may cache lazily built state; warm up first

    class Boom(nn.Module):
        def forward(self, t: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("boom inside the model")

    holder = model.layer4[-1] if kind == "cnn" else model.blocks[-1].mlp
    attr = "act1" if kind == "cnn" else "act"
    original = getattr(holder, attr)
    setattr(holder, attr, Boom())
    before = snapshot(model)
    try:
        if getattr(method, "runs_explainee", True):
            with pytest.raises(RuntimeError, match="boom"):
                method.attribute(x, target=[0, 1])
        else:  # never calls the model, so the failure cannot surface
            method.attribute(x, target=[0, 1])
        assert_untouched(model, before)
    finally:
        setattr(holder, attr, original)


@pytest.mark.parametrize(("name", "kind"), CASES)
def test_bad_targets_and_inputs(name: str, kind: str, build: Builder) -> None:
    model = _model(kind)
    before = snapshot(model)
    method = build(name, model)
    x = _inputs(model, kind, 2)
    with pytest.raises(ValueError, match="target"):
        method.attribute(x, target=NUM_CLASSES)
    with pytest.raises(ValueError, match="target"):
        method.attribute(x, target=[0, 1, 2])
    with pytest.raises(ValueError, match="inputs"):
        method.attribute(x[0], target=0)
    with pytest.raises(ValueError, match=r"inputs.*\b3\b"):  # names the argument and the 3 channels expected
        method.attribute(x[:, :1], target=0)
    bad = x.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="inputs.*NaN"):
        method.attribute(bad, target=0)
    if kind != "cnn":
        size = (4, 4) if kind == "dynamic" else (40, 40)  # smaller than a patch / not the model's size
        with pytest.raises(ValueError, match=r"inputs.*(size|shape)"):
            method.attribute(torch.randn(2, 3, *size), target=0)
    assert_untouched(model, before)


def test_unsupported_model_type_error() -> None:
    for cls in [get_method(name) for name in list_methods()] + [EEA]:
        with pytest.raises(TypeError, match="supported"):
            cls(nn.Sequential(nn.Flatten(), nn.Linear(12, 2)))
    with pytest.raises(TypeError, match="supported"):
        EEA(make_vit())  # EEA explains CNNs only


@pytest.mark.parametrize(("name", "kind"), CASES)
def test_captum_consumers(name: str, kind: str, build: Builder, tmp_path: Path) -> None:
    model = _model(kind)
    before = snapshot(model)
    method = build(name, model)
    x = _inputs(model, kind, 2)
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


def test_fast_attribution_matches_pltx(build: Builder, exported_pltx: Path) -> None:
    """The exported explainer gives PLTX's maps (the explainer the file was exported from)."""
    from captum_vit.attr import PLTX
    from captum_vit.explainers import build_explainer

    vit = make_vit("cls")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        explainer = build_explainer(vit).eval()
    x = input_for(vit, batch=3)
    want = PLTX(vit, explainer=explainer).attribute(x, return_patch_map=True)
    assert_close(build(FAST, vit).attribute(x, return_patch_map=True), want, "onnx_fp32", "onnxruntime vs PLTX")
