"""ONNX export of explainer networks: parity, metadata, runtime, captum wrapper, errors."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from captum_vit.explainers import build_explainer
from captum_vit.export import (
    ExplainerMetadata,
    ExportParityError,
    FastAttribution,
    FastExplainer,
    export_onnx,
    read_metadata,
    select_providers,
)
from captum_vit.export.explainers import pltx_export_module
from captum_vit.export.onnx_export import PARITY_ATOL
from captum_vit.models.vit import upsample_patch_map
from captum_vit.testing import TOL, assert_close, input_for, make_cnn, make_vit


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    vit = make_vit("cls")
    torch.manual_seed(3)
    explainer = build_explainer(vit).eval()
    module, meta = pltx_export_module(explainer, vit)
    out = tmp_path_factory.mktemp("onnx")
    r32 = export_onnx(module, out / "e32.onnx", meta, precision="fp32")
    r16 = export_onnx(module, out / "e16.onnx", meta, precision="fp16")
    r8 = export_onnx(module, out / "e8.onnx", meta, precision="int8")
    return {"vit": vit, "module": module, "meta": meta, "r32": r32, "r16": r16, "r8": r8}


def test_fp32_and_fp16_parity(exported: dict) -> None:
    module, vit = exported["module"], exported["vit"]
    x = input_for(vit, batch=5, seed=7)
    with torch.no_grad():
        want = module(x)
    got32 = FastExplainer(exported["r32"].path)(x)
    got16 = FastExplainer(exported["r16"].path)(x)
    assert (got32 - want).abs().max() <= 1e-4
    assert_close(got16, want, "onnx_fp16")
    assert exported["r32"].max_abs_diff <= 1e-4
    assert exported["r16"].precision == "fp16"


def test_int8_is_quantized_and_close(exported: dict) -> None:
    """int8: onnxruntime's integer MatMuls replace the float ones; maps stay within tolerance
    of PyTorch's fp32 maps, and the captum wrapper runs on the quantized graph."""
    import onnx

    r8 = exported["r8"]
    graph = onnx.load_model(str(r8.path)).graph
    weights = {t.name for t in graph.initializer}
    ops = [n.op_type for n in graph.node]
    assert "MatMulInteger" in ops and "DynamicQuantizeLinear" in ops and "Conv" in ops  # Conv stays fp32
    # Every layer with a weight matrix is quantized; only activation x activation products
    # (attention scores and their weighting of the values) stay float.
    assert not [n.name for n in graph.node if n.op_type in ("MatMul", "Gemm") and set(n.input) & weights]
    assert read_metadata(r8.path).precision == "int8" == r8.precision
    module, vit = exported["module"], exported["vit"]
    x = input_for(vit, batch=5, seed=7)
    with torch.no_grad():
        want = module(x)
    got = FastExplainer(r8.path)(x)
    diff = float((got - want).abs().max())
    assert 0 < diff <= PARITY_ATOL["int8"]  # quantized, so not bit-equal to fp32
    attr = FastAttribution(r8.path).attribute(x, target=[0, 1, 2, 0, 1])
    assert (attr - upsample_patch_map(want, x.shape, "bilinear")).abs().max() <= PARITY_ATOL["int8"]


def test_session_options_are_used(exported: dict) -> None:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    fast = FastExplainer(exported["r32"].path, ["CPUExecutionProvider"], session_options=opts)
    assert fast.session.get_session_options().intra_op_num_threads == 1
    x = input_for(exported["vit"], batch=2, seed=3)
    assert (fast(x) - FastExplainer(exported["r32"].path)(x)).abs().max() <= 1e-6


def test_int8_refuses_cnn_explainer(tmp_path: Path) -> None:
    cnn = make_cnn()
    module, meta = pltx_export_module(build_explainer(cnn).eval(), cnn)
    with pytest.raises(ValueError, match="MatMul/Gemm"):
        export_onnx(module, tmp_path / "c8.onnx", meta, precision="int8")
    assert not (tmp_path / "c8.onnx").exists()


def test_metadata_roundtrip(exported: dict) -> None:
    meta = read_metadata(exported["r32"].path)
    assert meta.input_size == (3, 32, 32) and meta.patch_grid == (4, 4)
    assert meta.mean == exported["meta"].mean and meta.method == "ltx"
    assert meta.source_sha256 == exported["meta"].source_sha256 and len(meta.source_sha256) == 64
    assert ExplainerMetadata.from_json(meta.to_json()) == meta


def test_fast_attribution_matches_upsampled_mask(exported: dict) -> None:
    module, vit = exported["module"], exported["vit"]
    x = input_for(vit, batch=2)
    attr = FastAttribution(exported["r32"].path).attribute(x, target=[1, 2])
    with torch.no_grad():
        want = upsample_patch_map(module(x), x.shape)
    assert attr.shape == x.shape
    torch.testing.assert_close(attr, want, rtol=TOL["onnx_fp32"][0], atol=TOL["onnx_fp32"][1])
    out = FastAttribution(exported["r32"].path).attribute((x,), return_patch_map=True)
    assert isinstance(out, tuple) and out[0].shape == (2, 4, 4)
    with pytest.raises(ValueError, match="target"):
        FastAttribution(exported["r32"].path).attribute(x, target=99)


def test_bad_files_and_inputs(exported: dict, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        FastExplainer(tmp_path / "missing.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="not a valid ONNX"):
        FastExplainer(junk)
    fe = FastExplainer(exported["r32"].path)
    with pytest.raises(ValueError, match="shape"):
        fe(torch.randn(1, 3, 48, 48))
    with pytest.raises(ValueError, match="NaN"):
        fe(torch.full((1, 3, 32, 32), float("nan")))
    with pytest.raises(ValueError, match="not available"):
        FastExplainer(exported["r32"].path, providers=["NoSuchExecutionProvider"])


def test_foreign_onnx_rejected(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    node = helper.make_node("Relu", ["x"], ["y"])
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
    )
    path = tmp_path / "foreign.onnx"
    onnx.save_model(helper.make_model(graph), str(path))
    with pytest.raises(ValueError, match="metadata"):
        FastExplainer(path)


def test_parity_failure_is_loud(exported: dict, tmp_path: Path) -> None:
    with pytest.raises(ExportParityError):
        export_onnx(exported["module"], tmp_path / "x.onnx", exported["meta"], atol=0.0 - 1.0)
    assert not (tmp_path / "x.onnx").exists()


def test_provider_preference() -> None:
    assert select_providers(["CPUExecutionProvider", "TensorrtExecutionProvider", "CUDAExecutionProvider"]) == [
        "TensorrtExecutionProvider",
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    ]
    with pytest.raises(RuntimeError):
        select_providers(["SomethingElse"])


def test_mismatched_explainer_rejected() -> None:
    a, b = make_vit("cls"), make_vit("rect")
    with pytest.raises(ValueError, match="does not match"):
        pltx_export_module(build_explainer(a), b)


def test_fast_attribution_equals_pltx(tmp_path: Path) -> None:
    """The exported explainer through the captum call == LTX(model, finetune_steps=0)."""
    from captum_vit.attr import LTX

    vit = make_vit("cls")
    torch.manual_seed(5)
    explainer = build_explainer(vit).eval()
    module, meta = pltx_export_module(explainer, vit)
    path = export_onnx(module, tmp_path / "p.onnx", meta).path
    x = input_for(vit, batch=3, seed=11)
    want = LTX(vit, explainer=explainer, finetune_steps=0).attribute(x, target=[0, 1, 2])
    got = FastAttribution(path).attribute(x, target=[0, 1, 2])
    assert (got - want).abs().max() <= 1e-4


def test_shipped_pltx_parity_on_held_out_images(tmp_path: Path) -> None:
    """Issue 9's bar: fp32 max |onnx - torch| <= 1e-4 on held-out benchmark images, and the
    captum call on the ONNX model equals PLTX on the shipped ViT."""
    from captum_vit.attr import PLTX
    from captum_vit.data.synthetic import generate
    from captum_vit.metrics import model_normalization
    from captum_vit.models import load_pretrained

    vit = load_pretrained("synthetic-vit")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an untrained-explainer warning would fail here
        pltx = PLTX(vit)  # the shipped explainer, found by the model's fingerprint
    module, meta = pltx_export_module(pltx.explainer, vit, method="pltx")
    data = generate(64, seed=777001)
    mean, std = model_normalization(vit)
    x = (data.images - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)
    path = export_onnx(module, tmp_path / "shipped.onnx", meta, check_inputs=x[:8]).path
    with torch.no_grad():
        want = module(x)
    got = FastExplainer(path)(x)
    assert (got - want).abs().max() <= 1e-4
    fast = FastAttribution(path).attribute(x[:16], target=data.labels[:16])
    assert (fast - pltx.attribute(x[:16], target=data.labels[:16])).abs().max() <= 1e-4
    # int8 (onnxruntime CPU): within its tolerance, and the segmentation it gives is the same
    # to within half a point of mIoU.
    from captum_vit.metrics.segmentation import segmentation_scores, segmentation_stats

    path8 = export_onnx(module, tmp_path / "shipped8.onnx", meta, precision="int8", check_inputs=x[:8]).path
    got8 = FastExplainer(path8)(x)
    assert (got8 - want).abs().max() <= PARITY_ATOL["int8"]
    miou = [
        segmentation_scores(segmentation_stats(upsample_patch_map(m, x.shape, "bilinear"), data.masks))["miou"]
        for m in (want, got8)
    ]
    assert abs(miou[0] - miou[1]) <= 0.5, miou
