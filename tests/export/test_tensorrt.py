"""TensorRT: what runs without it (profiles, cache keys, error paths); builds skip here."""

from __future__ import annotations

from pathlib import Path

import pytest

from captum_vit.export.tensorrt import (
    BatchProfile,
    build_engine,
    engine_cache_key,
    import_tensorrt,
    tensorrt_unavailable_reason,
)

REASON = tensorrt_unavailable_reason()


def test_profile_validation() -> None:
    assert BatchProfile(1, 4, 16).shapes((3, 64, 64)) == ((1, 3, 64, 64), (4, 3, 64, 64), (16, 3, 64, 64))
    assert BatchProfile(2, 2, 2).admits(2) and not BatchProfile(2, 2, 2).admits(3)
    for bad in [(0, 1, 1), (4, 2, 8), (1, 8, 4)]:
        with pytest.raises(ValueError, match="min <= opt <= max"):
            BatchProfile(*bad)


def test_cache_key_changes_with_every_input(tmp_path: Path) -> None:
    f = tmp_path / "a.onnx"
    f.write_bytes(b"graph-1")
    base = engine_cache_key(f, BatchProfile(), "fp16", "11.4.0", "H100")
    assert base == engine_cache_key(f, BatchProfile(), "fp16", "11.4.0", "H100")
    variants = [
        engine_cache_key(f, BatchProfile(1, 8, 64), "fp16", "11.4.0", "H100"),
        engine_cache_key(f, BatchProfile(), "fp32", "11.4.0", "H100"),
        engine_cache_key(f, BatchProfile(), "fp16", "10.13.0", "H100"),
        engine_cache_key(f, BatchProfile(), "fp16", "11.4.0", "A100"),
    ]
    f.write_bytes(b"graph-2")
    variants.append(engine_cache_key(f, BatchProfile(), "fp16", "11.4.0", "H100"))
    assert len(set(variants)) == len(variants) and base not in variants
    with pytest.raises(ValueError, match="precision"):
        engine_cache_key(f, BatchProfile(), "int8", "11.4.0", "H100")


def test_int8_export_is_refused_before_any_tensorrt_work(tmp_path: Path) -> None:
    """An int8 (onnxruntime dynamic quantization) file gets a clear error, with or without TensorRT."""
    from captum_vit.explainers import build_explainer
    from captum_vit.export import export_onnx
    from captum_vit.export.explainers import pltx_export_module
    from captum_vit.testing import make_vit

    vit = make_vit("cls")
    module, meta = pltx_export_module(build_explainer(vit).eval(), vit)
    path = export_onnx(module, tmp_path / "e8.onnx", meta, precision="int8").path
    with pytest.raises(ValueError, match="int8 export"):
        build_engine(path)
    with pytest.raises(ValueError, match="precision"):
        build_engine(path, precision="int8")


@pytest.mark.skipif(REASON is None, reason="TensorRT is available here; the error path is not reachable")
def test_unavailable_errors_are_clear(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    from captum_vit.export.onnx_export import METADATA_KEY, ExplainerMetadata

    graph = helper.make_graph(
        [helper.make_node("Sigmoid", ["images"], ["maps"])],
        "g",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, 4, 4])],
        [helper.make_tensor_value_info("maps", TensorProto.FLOAT, ["batch", 3, 4, 4])],
    )
    model = helper.make_model(graph)
    meta = ExplainerMetadata((3, 4, 4), (4, 4), (0.5,) * 3, (0.5,) * 3, "ltx", "0" * 64)
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, meta.to_json()
    path = tmp_path / "e.onnx"
    onnx.save_model(model, str(path))
    with pytest.raises(RuntimeError, match="cannot build a TensorRT engine"):
        build_engine(path)
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match=r"captum_vit\[tensorrt\]"):
            import_tensorrt()


@pytest.mark.skipif(REASON is not None, reason=f"TensorRT engines cannot be built here: {REASON}")
def test_build_and_run_engine(tmp_path: Path) -> None:  # pragma: no cover - needs a GPU
    import torch

    from captum_vit.explainers import build_explainer
    from captum_vit.export import FastExplainer, export_onnx
    from captum_vit.export.explainers import pltx_export_module
    from captum_vit.export.tensorrt import TensorRTExplainer
    from captum_vit.testing import input_for, make_vit

    vit = make_vit("cls")
    module, meta = pltx_export_module(build_explainer(vit).eval(), vit)
    onnx_path = export_onnx(module, tmp_path / "e.onnx", meta).path
    engine = build_engine(onnx_path, BatchProfile(1, 2, 4), cache_dir=tmp_path)
    assert build_engine(onnx_path, BatchProfile(1, 2, 4), cache_dir=tmp_path) == engine  # cached
    x = input_for(vit, batch=3)
    got = TensorRTExplainer(engine, onnx_path)(x.cuda()).cpu()
    torch.testing.assert_close(got, FastExplainer(onnx_path, ["CPUExecutionProvider"])(x), rtol=1e-3, atol=1e-3)
