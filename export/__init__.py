"""Export trained explainers to ONNX / TensorRT and run them fast (``captum_vit.export``).

TensorRT support lives in ``captum_vit.export.tensorrt`` and imports ``tensorrt`` lazily.
"""

from captum_vit.export.onnx_export import (
    PARITY_ATOL,
    ExplainerMetadata,
    ExportParityError,
    ExportReport,
    export_onnx,
    read_metadata,
)
from captum_vit.export.runtime import FastAttribution, FastExplainer, select_providers

__all__ = [
    "PARITY_ATOL",
    "ExplainerMetadata",
    "ExportParityError",
    "ExportReport",
    "FastAttribution",
    "FastExplainer",
    "export_onnx",
    "read_metadata",
    "select_providers",
]
