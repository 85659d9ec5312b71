""" "Predict and explain" in one ONNX graph: the explainee's logits beside the explainer's map.

A service that explains a prediction usually also needs the prediction. Exporting both in one
graph (outputs ``maps`` ``(B, h, w)`` then ``logits`` ``(B, num_classes)``) answers both in one
onnxruntime call; ``captum-vit serve`` then returns the predicted class and its probability.
The map is the first output, so :class:`captum_vit.export.FastExplainer` and
:class:`captum_vit.export.FastAttribution` read such a graph like a map-only one.

The explainee runs once for the logits; the map module runs its own forward (the pLTX
explainer is a separate network; exported DiffMask gates contain their own copy of the ViT).
"""

from __future__ import annotations

import copy
import os
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from captum_vit._io import atomic_write
from captum_vit.export.onnx_export import PARITY_ATOL, ExplainerMetadata, ExportParityError, ExportReport, _quiet
from captum_vit.models.preprocess import model_logits

#: Output names of the graph, in order.
OUTPUT_NAMES = ("maps", "logits")


class PredictAndExplain(nn.Module):
    """``x -> (map_module(x), logits of explainee(x))`` for normalised images ``x``."""

    def __init__(self, map_module: nn.Module, explainee: nn.Module) -> None:
        super().__init__()
        self.map_module, self.explainee = map_module, explainee

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.map_module(x), model_logits(self.explainee(x))


def predict_explain_module(
    map_module: nn.Module, metadata: ExplainerMetadata, explainee: nn.Module
) -> tuple[nn.Module, ExplainerMetadata]:
    """The module and metadata to export for ``map_module`` (from
    :func:`captum_vit.export.explainers.pltx_export_module` or ``diffmask_export_module``)
    with ``explainee``'s logits. Both are copied; the class names of ``explainee.pretrained_cfg``
    (``label_names``), when it has them, go into the metadata.
    """
    module = PredictAndExplain(copy.deepcopy(map_module), copy.deepcopy(explainee)).eval()
    labels = (getattr(explainee, "pretrained_cfg", None) or {}).get("label_names")
    extra = dict(metadata.extra, outputs=list(OUTPUT_NAMES))
    if labels:
        extra["label_names"] = [str(v) for v in labels]
    return module, replace(metadata, extra=extra)


def export_predict_explain(
    module: nn.Module,
    path: str | os.PathLike[str],
    metadata: ExplainerMetadata,
    opset: int = 20,
    check_inputs: Tensor | None = None,
    atol: float = PARITY_ATOL["fp32"],
) -> ExportReport:
    """Export a :class:`PredictAndExplain` module (fp32) and check both outputs against PyTorch.

    Returns
    -------
    ExportReport
        ``max_abs_diff`` over maps and logits.

    Raises
    ------
    ValueError
        A module whose outputs do not have the metadata's grid, or a bad opset.
    ExportParityError
        onnxruntime differs from PyTorch beyond ``atol`` (nothing is written).

    Examples
    --------
    >>> import tempfile, timm
    >>> from captum_vit.export import FastExplainer
    >>> from captum_vit.export.explainers import pltx_export_module
    >>> from captum_vit.explainers import build_explainer
    >>> vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3,
    ...                         depth=1, img_size=32).eval()
    >>> module, meta = predict_explain_module(*pltx_export_module(build_explainer(vit), vit), vit)
    >>> report = export_predict_explain(module, Path(tempfile.mkdtemp()) / "pe.onnx", meta)
    >>> [o.name for o in FastExplainer(report.path).session.get_outputs()]
    ['maps', 'logits']
    """
    if not 18 <= opset <= 20:
        raise ValueError(f"opset must be between 18 and 20, got {opset}")
    c, h, w = metadata.input_size
    if check_inputs is None:
        check_inputs = torch.randn(3, c, h, w, generator=torch.Generator().manual_seed(0))
    reference = copy.deepcopy(module).float().eval()
    with torch.no_grad():
        maps, logits = reference(check_inputs)
    if tuple(maps.shape[1:]) != tuple(metadata.patch_grid) or logits.dim() != 2:
        raise ValueError(
            f"module outputs {tuple(maps.shape)} and {tuple(logits.shape)}; expected (B, {h}, {w})-grid maps "
            f"{metadata.patch_grid} and (B, num_classes) logits"
        )
    metadata = replace(metadata, precision="fp32", num_classes=int(logits.shape[1]))
    batch = torch.export.Dim("batch", min=1, max=4096)
    with warnings.catch_warnings(), _quiet():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            copy.deepcopy(reference),
            (check_inputs[:2],),
            dynamo=True,
            input_names=["images"],
            output_names=list(OUTPUT_NAMES),
            dynamic_shapes={"x": {0: batch}},
            opset_version=opset,
            verbose=False,
        )
    if program is None:  # pragma: no cover - dynamo export always returns a program
        raise RuntimeError("torch.onnx.export returned no program")
    proto = program.model_proto
    entry = proto.metadata_props.add()
    entry.key, entry.value = "captum_vit", metadata.to_json()
    return _save_checked(proto, Path(path), reference, check_inputs, atol, metadata)


def _save_checked(
    proto: Any, path: Path, reference: nn.Module, check_inputs: Tensor, atol: float, metadata: ExplainerMetadata
) -> ExportReport:
    import onnx
    import onnxruntime as ort

    diffs: list[float] = []

    def write(tmp: Path) -> None:
        onnx.save_model(proto, str(tmp))
        onnx.checker.check_model(str(tmp), full_check=True)
        session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        for x in (check_inputs, check_inputs[:1]):
            got = session.run(list(OUTPUT_NAMES), {"images": x.float().numpy()})
            with torch.no_grad():
                want = reference(x)
            diffs.extend(float((torch.from_numpy(g) - t).abs().max()) for g, t in zip(got, want))
        if max(diffs) > atol:
            raise ExportParityError(
                f"predict-and-explain export differs from PyTorch by {max(diffs):.3e} (> {atol:.1e})"
            )

    atomic_write(path, write)
    return ExportReport(path, "fp32", max(diffs), (int(check_inputs.shape[0]), 1), metadata)
