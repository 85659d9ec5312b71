"""``captum-vit export`` end to end on the shipped ViT explainer."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from captum_vit._io import default_file_mode
from captum_vit.cli import main
from captum_vit.export import FastExplainer, read_metadata
from captum_vit.export.tensorrt import tensorrt_unavailable_reason


def test_export_cli_int8_with_a_triton_repository(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, repo = tmp_path / "e8.onnx", tmp_path / "triton"
    argv = ["export", "--model", "synthetic-vit", "--precision", "int8", "--out", str(out), "--triton-repo", str(repo)]
    assert main([*argv, "--max-batch", "16"]) == 0
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith(f"wrote {out} (pltx, int8, max |onnx - torch| = ")
    assert lines[1:] == [f"wrote {repo / 'e8'} (Triton model: config.pbtxt and 1/model.onnx)"]
    meta = read_metadata(out)
    assert meta.precision == "int8" and meta.input_size == (3, 64, 64) and meta.patch_grid == (8, 8)
    assert FastExplainer(out).metadata == meta
    assert (repo / "e8" / "1" / "model.onnx").read_bytes() == out.read_bytes()
    assert "max_batch_size: 16" in (repo / "e8" / "config.pbtxt").read_text()
    # Normal permissions (0666 & ~umask), not the 0600 of a temporary file; no temporary left.
    assert stat.S_IMODE(out.stat().st_mode) == default_file_mode()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e8.onnx", "triton"]


@pytest.mark.skipif(tensorrt_unavailable_reason() is None, reason="TensorRT can build engines here")
def test_export_cli_refuses_tensorrt_before_exporting(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", "--precision", "fp16", "--format", "tensorrt", "--out", str(tmp_path / "e.onnx")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("captum-vit export: error: --format tensorrt: cannot build engines here: ")
    assert err.count("\n") == 1 and not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--precision", "int8", "--format", "tensorrt"], "int8 exports are for onnxruntime"),
        (["--model", "synthetic-resnet", "--precision", "int8"], "the CNN explainer of synthetic-resnet has none"),
        (["--method", "diffmask", "--explainer", "x"], "--explainer/--checkpoint are pLTX options"),
        (["--gates", "synthetic-vit-diffmask"], "--gates/--layer are DiffMask options"),
        (["--model", "no-such-model"], "'no-such-model' is not a registered classifier"),
        (["--checkpoint", "/nonexistent/ckpt.pt"], "--checkpoint: no such file: /nonexistent/ckpt.pt"),
        (["--min-batch", "4", "--opt-batch", "2"], "must be in increasing order"),
        (["--max-batch", "0"], "argument --max-batch: expected a positive integer, got '0'"),
        (["--triton-repo", "/proc/version"], "--triton-repo: /proc/version exists and is not a folder"),
    ],
)
def test_export_cli_rejects_bad_options_before_exporting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert main(["export", *argv, "--out", str(tmp_path / "x.onnx")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("captum-vit export: error: ") and message in err and err.count("\n") == 1
    assert not any(tmp_path.iterdir())


def test_export_cli_rejects_output_paths(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err == (
        f"captum-vit export: error: --out: {tmp_path} is a folder; expected a file path ending in .onnx\n"
    )
    assert main(["export", "--out", str(tmp_path / "e.txt")]) == 2
    assert "expected a file path ending in .onnx" in capsys.readouterr().err
