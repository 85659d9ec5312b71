"""Vision DiffMask gates exported to ONNX: one graph (ViT + gates), parity with VisionDiffMask."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from captum_vit.attr import VisionDiffMask
from captum_vit.cli import main
from captum_vit.explainers import DiffMaskGates
from captum_vit.export import FastAttribution, FastExplainer, export_onnx, read_metadata
from captum_vit.export.explainers import diffmask_export_module
from captum_vit.models.fingerprint import model_fingerprint
from captum_vit.testing import input_for, make_vit


@pytest.mark.parametrize("kind", ["cls", "reg", "dist"])
def test_diffmask_export_equals_vision_diffmask(kind: str, tmp_path: Path) -> None:
    vit = make_vit(kind)
    gates = DiffMaskGates.for_model(vit, seed=4)
    with torch.no_grad():  # spread the gate logits so the map is not flat
        for g in gates.gates:
            g.add_activation.fill_(0.5)
    module, meta = diffmask_export_module(gates, vit, layer=-1)
    assert meta.method == "diffmask" and meta.interpolate_mode == "nearest" and meta.extra["layer"] == -1
    assert meta.source_sha256 == model_fingerprint(module)  # gates and ViT together
    assert meta.extra["explainee_fingerprint"] == model_fingerprint(vit) == gates.fingerprint
    path = export_onnx(module, tmp_path / "dm.onnx", meta).path
    assert read_metadata(path).extra["explainee_fingerprint"] == model_fingerprint(vit)
    x = input_for(vit, batch=3, seed=5)
    method = VisionDiffMask(vit, gates=gates)
    want = method.attribute(x, target=[0, 1, 2])
    assert float(want.std()) > 1e-3  # a non-trivial map
    got = FastAttribution(path).attribute(x, target=[0, 1, 2])
    assert (got - want).abs().max() <= 1e-4
    pmap = FastExplainer(path)(x)
    assert (pmap - method.attribute(x, return_patch_map=True)).abs().max() <= 1e-4


def test_diffmask_export_layer_and_errors() -> None:
    vit = make_vit("cls")
    gates = DiffMaskGates.for_model(vit, seed=0)
    module, _ = diffmask_export_module(gates, vit, layer=1)
    x = input_for(vit, batch=2, seed=1)
    with torch.no_grad():
        assert torch.allclose(module(x), VisionDiffMask(vit, gates=gates, layer=1).attribute(x, return_patch_map=True))
    with pytest.raises(ValueError, match="layer"):
        diffmask_export_module(gates, vit, layer=99)
    with pytest.raises(ValueError, match="gates were built for"):
        diffmask_export_module(gates, make_vit("cls", depth=3))
    with pytest.raises(TypeError, match="DiffMaskGates"):
        diffmask_export_module(torch.nn.Linear(2, 2), vit)
    with pytest.raises(ValueError, match="fingerprint"):  # same architecture, other weights
        diffmask_export_module(gates, make_vit("cls", seed=2))


def test_shipped_diffmask_export_cli(tmp_path: Path) -> None:
    """`captum-vit export --method diffmask` on the shipped ViT and gates; the captum call on
    the file equals VisionDiffMask on held-out images."""
    from captum_vit.data.splits import EXPORT_PARITY_SEED
    from captum_vit.data.synthetic import generate
    from captum_vit.models import load_pretrained
    from captum_vit.models.preprocess import normalize_for

    out = tmp_path / "dm.onnx"
    assert main(["export", "--model", "synthetic-vit", "--method", "diffmask", "--out", str(out)]) == 0
    assert read_metadata(out).method == "diffmask"
    vit = load_pretrained("synthetic-vit")
    data = generate(16, seed=EXPORT_PARITY_SEED)
    x = normalize_for(vit, data.images)
    want = VisionDiffMask(vit).attribute(x, target=data.labels)
    assert (FastAttribution(out).attribute(x, target=data.labels) - want).abs().max() <= 1e-4
    assert main(["export", "--method", "diffmask", "--explainer", "x", "--out", str(tmp_path / "y.onnx")]) == 2
    assert main(["export", "--gates", "synthetic-vit-diffmask", "--out", str(tmp_path / "y.onnx")]) == 2
