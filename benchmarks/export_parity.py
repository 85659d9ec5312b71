"""ONNX vs PyTorch parity of the shipped pLTX/EEA explainers on 64 held-out images.

    .venv/bin/python benchmarks/export_parity.py

Prints the max absolute difference of the fp32 and fp16 exports (README, "Export").
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from captum_vit.attr import PLTX
from captum_vit.data.synthetic import generate
from captum_vit.export import FastExplainer, export_onnx
from captum_vit.export.explainers import pltx_export_module
from captum_vit.metrics import model_normalization
from captum_vit.models import load_pretrained


def main() -> None:
    data = generate(64, seed=777001)
    for name in ("synthetic-vit", "synthetic-resnet"):
        model = load_pretrained(name)
        module, meta = pltx_export_module(PLTX(model).explainer, model, method="pltx")
        mean, std = model_normalization(model)
        x = (data.images - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)
        with torch.no_grad():
            want = module(x)
        folder = Path(tempfile.mkdtemp())
        for precision in ("fp32", "fp16"):
            path = export_onnx(module, folder / f"{precision}.onnx", meta, precision=precision, check_inputs=x[:8]).path
            diff = float((FastExplainer(path)(x) - want).abs().max())
            print(f"{name} {precision}: max |onnxruntime - torch| = {diff:.2e}")


if __name__ == "__main__":
    main()
