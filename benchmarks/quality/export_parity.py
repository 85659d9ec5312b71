"""ONNX vs PyTorch parity of the shipped pLTX/EEA explainers and DiffMask gates on held-out images.

    .venv/bin/python benchmarks/quality/export_parity.py

Prints, for the fp32, fp16 and int8 exports, the max and mean absolute difference from
PyTorch on 256 held-out images, and what each export's maps score (positive perturbation
AUC, lower is better; segmentation mIoU) next to PyTorch's (README, "Export"). The export's
own parity check runs on the first 8 images; a difference above that precision's tolerance
(``PARITY_ATOL``) on the full set is flagged. The int8 export (onnxruntime dynamic
quantization of MatMul/Gemm) is refused for the CNN explainer; for the DiffMask gates its
errors compound over the product of eight gates.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from torch import Tensor

from captum_vit.attr import PLTX, VisionDiffMask
from captum_vit.data.splits import EXPORT_PARITY_SEED
from captum_vit.data.synthetic import SyntheticBatch, generate
from captum_vit.export import PARITY_ATOL, ExportParityError, FastExplainer, export_onnx
from captum_vit.export.explainers import diffmask_export_module, pltx_export_module
from captum_vit.metrics import model_normalization, positive_perturbation_auc
from captum_vit.metrics.segmentation import segmentation_scores, segmentation_stats
from captum_vit.models import load_pretrained
from captum_vit.models.vit import upsample_patch_map

N_IMAGES = 256


def scores(model: torch.nn.Module, data: SyntheticBatch, pmap: Tensor, mode: str = "bilinear") -> str:
    """Positive AUC and mIoU of patch maps upsampled to the images."""
    maps = upsample_patch_map(pmap, data.images.shape, mode)
    pos = float(positive_perturbation_auc(model, data.images, maps, data.labels).mean())
    miou = segmentation_scores(segmentation_stats(maps, data.masks))["miou"]
    return f"positive AUC {pos:.2f}, mIoU {miou:.2f}"


def main() -> None:
    data = generate(N_IMAGES, seed=EXPORT_PARITY_SEED)
    cases = []
    for name in ("synthetic-vit", "synthetic-resnet"):
        model = load_pretrained(name)
        cases.append((f"{name} pLTX", model, *pltx_export_module(PLTX(model).explainer, model, method="pltx")))
    vit = load_pretrained("synthetic-vit")
    cases.append(("synthetic-vit DiffMask", vit, *diffmask_export_module(VisionDiffMask(vit).gates, vit)))
    for name, model, module, meta in cases:
        mean, std = model_normalization(model)
        x = (data.images - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)
        mode = meta.interpolate_mode
        with torch.no_grad():
            want = module(x)
        print(f"{name} torch fp32: {scores(model, data, want, mode)}")
        folder = Path(tempfile.mkdtemp())
        for precision in ("fp32", "fp16", "int8"):
            try:
                path = export_onnx(
                    module, folder / f"{precision}.onnx", meta, precision=precision, check_inputs=x[:8]
                ).path
            except (ValueError, ExportParityError) as e:
                print(f"{name} {precision}: refused ({e})")
                continue
            got = FastExplainer(path, providers=["CPUExecutionProvider"])(x)
            diff = (got - want).abs()
            flag = (
                f" (above the {precision} tolerance {PARITY_ATOL[precision]:g})"
                if diff.max() > PARITY_ATOL[precision]
                else ""
            )
            print(
                f"{name} {precision}: max |onnxruntime - torch| = {float(diff.max()):.2e}{flag}, "
                f"mean {float(diff.mean()):.1e}; {scores(model, data, got, mode)}"
            )


if __name__ == "__main__":
    main()
