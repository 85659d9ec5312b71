"""Export a trained explainer network to ONNX, with metadata and a parity check.

An *explainer network* maps normalised images ``(B, C, H, W)`` to a patch-level map
``(B, h, w)`` in one forward pass (pLTX's explainer, docs/methods.md §2.1). The export uses
torch's current (dynamo) exporter with only the batch dimension dynamic, opset 18–20, in
fp32 or fp16 (an fp16 graph with fp32 inputs and outputs: TensorRT 11 has no FP16 builder
flag, so fp16 means an fp16 ONNX, ecosystem.md §7.3). After export the graph is run with
onnxruntime's CPU provider and compared with PyTorch; beyond tolerance the export fails.

``precision="int8"`` is for onnxruntime on CPU: the fp32 graph's MatMul/Gemm layers are
quantized dynamically by onnxruntime (int8 weights per output channel, activations quantized
per call), which is where a transformer explainer spends its time. Convolutions stay fp32
(onnxruntime's ``ConvInteger`` is slower than its fp32 convolution on CPU), so a CNN explainer,
which has no MatMul to quantize, is refused. TensorRT does not build these operators.
"""

from __future__ import annotations

import copy
import io
import json
import os
import tempfile
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from captum_vit._io import atomic_write

#: Metadata key under which the explainer description is stored in the ONNX file.
METADATA_KEY = "captum_vit"
#: Format version of that metadata.
METADATA_VERSION = 1
#: Parity tolerance (max absolute difference) per precision.
#: int8: the shipped ViT explainer differs by at most 1.9e-2 (mean 5e-4) on 256 held-out
#: images, and its positive AUC / mIoU move by < 0.3 points (README, "Export").
PARITY_ATOL = {"fp32": 1e-4, "fp16": 1e-2, "int8": 5e-2}
#: Operators ``precision="int8"`` quantizes.
INT8_OP_TYPES = ("MatMul", "Gemm")


class ExportParityError(RuntimeError):
    """The exported graph disagrees with PyTorch beyond the tolerance."""


@dataclass
class ExplainerMetadata:
    """What a runtime needs to use an exported explainer without the Python model.

    ``input_size`` is ``(C, H, W)``; ``patch_grid`` ``(h, w)``; ``mean``/``std`` the
    explainee's normalisation (the graph takes normalised images); ``method`` the registry
    name the map reproduces (e.g. ``"ltx"`` with ``finetune_steps=0``); ``source_sha256`` the
    :func:`~captum_vit.models.fingerprint.model_fingerprint` of the exported module's weights.
    """

    input_size: tuple[int, int, int]
    patch_grid: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    method: str
    source_sha256: str
    precision: str = "fp32"
    interpolate_mode: str = "bilinear"
    num_classes: int = 0
    version: int = METADATA_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ExplainerMetadata:
        try:
            d = json.loads(text)
            d["input_size"] = tuple(d["input_size"])
            d["patch_grid"] = tuple(d["patch_grid"])
            d["mean"], d["std"] = tuple(d["mean"]), tuple(d["std"])
            return cls(**d)
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"malformed {METADATA_KEY} metadata in the ONNX file: {e}") from None


class _HalfPrecision(nn.Module):
    """fp16 weights and compute, fp32 inputs and outputs."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner.half()

    def forward(self, x: Tensor) -> Tensor:
        return self.inner(x.half()).float()


@dataclass
class ExportReport:
    path: Path
    precision: str
    max_abs_diff: float
    checked_batches: tuple[int, ...]
    metadata: ExplainerMetadata


def export_onnx(
    explainer: nn.Module,
    path: str | os.PathLike[str],
    metadata: ExplainerMetadata,
    precision: str = "fp32",
    opset: int = 20,
    check_inputs: Tensor | None = None,
    atol: float | None = None,
) -> ExportReport:
    """Export ``explainer`` to ONNX at ``path`` (written atomically) and check parity.

    Parameters
    ----------
    explainer : nn.Module
        Maps normalised images ``(B, *metadata.input_size)`` to ``(B, *metadata.patch_grid)``.
        It is copied; the module passed in is not changed.
    path : path-like
        Output ``.onnx`` file (weights inline).
    metadata : ExplainerMetadata
        Stored in the file under the ``captum_vit`` metadata key.
    precision : {"fp32", "fp16", "int8"}
        ``"fp16"``: an fp16 graph with fp32 inputs and outputs. ``"int8"``: onnxruntime's
        dynamic quantization of the MatMul/Gemm layers (CPU inference; not for TensorRT).
    opset : int
        ONNX opset, 18 to 20 (TensorRT / onnxruntime compatibility, ecosystem.md §7.1).
    check_inputs : Tensor, optional
        Normalised images for the parity check (default: seeded random images). The check
        also runs on a different batch size to exercise the dynamic batch dimension.
    atol : float, optional
        Maximum absolute difference allowed (default ``PARITY_ATOL[precision]``).

    Returns
    -------
    ExportReport

    Raises
    ------
    ValueError
        Bad precision/opset, an explainer whose output does not have the metadata's shape, or
        ``"int8"`` for a graph without MatMul/Gemm layers.
    ExportParityError
        onnxruntime's output differs from PyTorch's beyond ``atol`` (the file is not written).

    Examples
    --------
    >>> import tempfile, timm
    >>> from captum_vit.export.explainers import pltx_export_module
    >>> from captum_vit.explainers import build_explainer
    >>> vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3,
    ...                         depth=1, img_size=32).eval()
    >>> module, meta = pltx_export_module(build_explainer(vit), vit)
    >>> report = export_onnx(module, Path(tempfile.mkdtemp()) / "e.onnx", meta)
    >>> report.precision, report.max_abs_diff <= PARITY_ATOL["fp32"], read_metadata(report.path).patch_grid
    ('fp32', True, (2, 2))
    """
    if precision not in PARITY_ATOL:
        raise ValueError(f"precision must be one of {sorted(PARITY_ATOL)}, got {precision!r}")
    if not 18 <= opset <= 20:
        raise ValueError(f"opset must be between 18 and 20, got {opset}")
    c, h, w = metadata.input_size
    if check_inputs is None:
        g = torch.Generator().manual_seed(0)
        check_inputs = torch.randn(3, c, h, w, generator=g)
    if tuple(check_inputs.shape[1:]) != (c, h, w):
        raise ValueError(f"check_inputs must be (B, {c}, {h}, {w}), got {tuple(check_inputs.shape)}")
    reference = copy.deepcopy(explainer).float().eval()
    with torch.no_grad():
        expected = reference(check_inputs)
    if tuple(expected.shape[1:]) != tuple(metadata.patch_grid):
        raise ValueError(
            f"explainer output {tuple(expected.shape)} does not match metadata.patch_grid {metadata.patch_grid}"
        )
    module: nn.Module = _HalfPrecision(copy.deepcopy(reference)) if precision == "fp16" else copy.deepcopy(reference)
    module.eval()
    metadata = replace(metadata, precision=precision)

    batch = torch.export.Dim("batch", min=1, max=4096)
    example = check_inputs[:2]
    with warnings.catch_warnings(), _quiet():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module,
            (example,),
            dynamo=True,
            input_names=["images"],
            output_names=["maps"],
            dynamic_shapes={"x": {0: batch}},
            opset_version=opset,
            verbose=False,
        )
    assert program is not None
    proto = program.model_proto
    if precision == "int8":
        proto = _quantize_int8(proto)
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, metadata.to_json()

    diffs: list[float] = []
    limit = PARITY_ATOL[precision] if atol is None else atol

    def write_checked(tmp: Path) -> None:
        import onnx

        onnx.save_model(proto, str(tmp))
        onnx.checker.check_model(str(tmp), full_check=True)
        sess = _cpu_session(tmp)
        for batch_inputs in (check_inputs, check_inputs[:1]):
            got = torch.from_numpy(sess.run(None, {"images": batch_inputs.float().numpy()})[0])
            with torch.no_grad():
                want = reference(batch_inputs)
            diffs.append(float((got - want).abs().max()))
        if max(diffs) > limit:  # raising here leaves no file behind
            raise ExportParityError(
                f"{precision} ONNX export differs from PyTorch by {max(diffs):.3e} (> {limit:.1e}); not written"
            )

    path = atomic_write(path, write_checked)
    return ExportReport(path, precision, max(diffs), (int(check_inputs.shape[0]), 1), metadata)


def _quantize_int8(proto: Any) -> Any:
    """onnxruntime's dynamic int8 quantization of the MatMul/Gemm layers of ``proto``."""
    import logging

    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as folder:
        src, dst = Path(folder) / "fp32.onnx", Path(folder) / "int8.onnx"
        onnx.save_model(proto, str(src))
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)  # the quantizer logs a pre-processing hint through root
        try:
            quantize_dynamic(
                src, dst, op_types_to_quantize=list(INT8_OP_TYPES), per_channel=True, weight_type=QuantType.QInt8
            )
        finally:
            root.setLevel(level)
        quantized = onnx.load_model(str(dst))
    if not any(n.op_type in ("MatMulInteger", "DynamicQuantizeMatMul") for n in quantized.graph.node):
        raise ValueError(
            "precision='int8' quantizes MatMul/Gemm layers and this explainer has none (a CNN explainer?); "
            "export it as 'fp32' or 'fp16'"
        )
    return quantized


class _quiet:
    """Silence the exporter's progress prints (it writes to stdout)."""

    def __enter__(self) -> None:
        import contextlib

        self._ctx = contextlib.redirect_stdout(io.StringIO())
        self._ctx.__enter__()

    def __exit__(self, *exc: object) -> None:
        self._ctx.__exit__(None, None, None)


def _cpu_session(path: str | os.PathLike[str]) -> Any:
    try:
        import onnxruntime as ort
    except ImportError as e:  # pragma: no cover - exercised only without the extra
        raise ImportError("onnxruntime is required: pip install 'captum_vit[onnx]'") from e
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def read_metadata(path: str | os.PathLike[str]) -> ExplainerMetadata:
    """Read and validate the ``captum_vit`` metadata of an exported explainer.

    Raises
    ------
    FileNotFoundError, ValueError
        Missing file, a file that is not a valid ONNX model, or one without our metadata.
    """
    import onnx

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no ONNX file at {path}")
    try:
        proto = onnx.load_model(str(path), load_external_data=False)
    except Exception as e:  # onnx raises DecodeError and others for corrupt files
        raise ValueError(f"{path} is not a valid ONNX model: {e}") from None
    for p in proto.metadata_props:
        if p.key == METADATA_KEY:
            return ExplainerMetadata.from_json(p.value)
    raise ValueError(f"{path} has no '{METADATA_KEY}' metadata: it was not exported by captum_vit.export")


def check_batch(images: Tensor, metadata: ExplainerMetadata, name: str = "inputs") -> None:
    """Validate images against an exported explainer's expected input."""
    if images.dim() != 4 or tuple(images.shape[1:]) != tuple(metadata.input_size):
        raise ValueError(
            f"{name} must have shape (B, {', '.join(map(str, metadata.input_size))}), got {tuple(images.shape)}"
        )
