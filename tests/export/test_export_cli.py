"""``captum-vit export`` end to end on the shipped ViT explainer."""

from __future__ import annotations

from pathlib import Path

import pytest

from captum_vit.cli import main
from captum_vit.export import FastExplainer, read_metadata


def test_export_cli_int8(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "e8.onnx"
    assert main(["export", "--model", "synthetic-vit", "--precision", "int8", "--out", str(out)]) == 0
    assert "int8" in capsys.readouterr().out
    meta = read_metadata(out)
    assert meta.precision == "int8" and meta.input_size == (3, 64, 64) and meta.patch_grid == (8, 8)
    assert FastExplainer(out).metadata == meta


def test_export_cli_rejects_int8_tensorrt_and_cnn_int8(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="int8 exports are for onnxruntime"):
        main(["export", "--precision", "int8", "--format", "tensorrt", "--out", str(tmp_path / "x.onnx")])
    with pytest.raises(SystemExit, match="MatMul/Gemm"):
        main(["export", "--model", "synthetic-resnet", "--precision", "int8", "--out", str(tmp_path / "r.onnx")])
    assert not any(tmp_path.iterdir())
