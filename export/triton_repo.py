"""A model repository for NVIDIA Triton Inference Server from an exported explainer.

Triton serves a folder per model: ``<repo>/<name>/config.pbtxt`` and the graph in a numbered
version folder, ``<repo>/<name>/1/model.onnx``. The configuration is derived from the ONNX
graph itself (input/output names, element types, the non-batch dimensions) and checked against
the ``captum_vit`` metadata stored in the file (input size, patch grid), so a mismatch is
caught here rather than when Triton loads the model. The preprocessing a client must apply
(mean, std, input size) travels in the config as the ``captum_vit`` model parameter.

The config is written in protobuf text format following Triton's ``ModelConfig`` message
(``model_config.proto`` of the Triton ``common`` repository): ``max_batch_size`` with a dynamic
batch dimension, ``dynamic_batching`` with a maximum queue delay, one ``instance_group``, and
for GPU instances the TensorRT execution accelerator of Triton's onnxruntime backend at FP16.
int8 graphs (onnxruntime's ``MatMulInteger`` / ``DynamicQuantizeMatMul``) get no TensorRT
accelerator: TensorRT does not build those operators.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

from captum_vit._io import atomic_write

#: ONNX ``TensorProto`` element type -> Triton ``DataType`` name.
ONNX_TO_TRITON_DTYPE = {
    1: "TYPE_FP32",
    2: "TYPE_UINT8",
    3: "TYPE_INT8",
    4: "TYPE_UINT16",
    5: "TYPE_INT16",
    6: "TYPE_INT32",
    7: "TYPE_INT64",
    9: "TYPE_BOOL",
    10: "TYPE_FP16",
    11: "TYPE_FP64",
    12: "TYPE_UINT32",
    13: "TYPE_UINT64",
    16: "TYPE_BF16",
}
#: ``kind`` argument -> Triton ``ModelInstanceGroup.Kind``.
INSTANCE_KINDS = {"auto": "KIND_AUTO", "cpu": "KIND_CPU", "gpu": "KIND_GPU"}
#: Bytes of GPU memory TensorRT may use while building an engine (Triton's default, 1 GiB).
TENSORRT_WORKSPACE_BYTES = 1 << 30

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class _Enum(str):
    """A protobuf enum value: written bare, not quoted."""


def graph_signature(onnx_path: str | os.PathLike[str]) -> dict[str, list[dict[str, Any]]]:
    """The graph's inputs and outputs: name, Triton data type and non-batch dims (-1 if dynamic).

    Raises
    ------
    ValueError
        If a tensor has no leading dynamic batch dimension or an element type Triton lacks.
    """
    import onnx

    graph = onnx.load_model(str(onnx_path), load_external_data=False).graph
    initializers = {t.name for t in graph.initializer}

    def describe(value: Any) -> dict[str, Any]:
        ttype = value.type.tensor_type
        dims = list(ttype.shape.dim)
        if not dims or dims[0].HasField("dim_value"):
            raise ValueError(
                f"{onnx_path}: tensor {value.name!r} has no dynamic batch dimension; "
                "export with captum_vit.export.export_onnx (its batch dimension is dynamic)"
            )
        if ttype.elem_type not in ONNX_TO_TRITON_DTYPE:
            raise ValueError(f"{onnx_path}: tensor {value.name!r} has ONNX element type {ttype.elem_type}")
        return {
            "name": value.name,
            "data_type": ONNX_TO_TRITON_DTYPE[ttype.elem_type],
            "dims": [int(d.dim_value) if d.HasField("dim_value") else -1 for d in dims[1:]],
        }

    return {
        "input": [describe(v) for v in graph.input if v.name not in initializers],
        "output": [describe(v) for v in graph.output],
    }


def triton_config(
    onnx_path: str | os.PathLike[str],
    *,
    model_name: str,
    max_batch_size: int = 32,
    max_queue_delay_us: int = 100,
    instance_count: int = 1,
    kind: str = "auto",
) -> dict[str, Any]:
    """The ``ModelConfig`` fields for ``onnx_path`` as nested dicts (see :func:`to_pbtxt`)."""
    from captum_vit.export.onnx_export import read_metadata

    meta = read_metadata(onnx_path)
    sig = graph_signature(onnx_path)
    if len(sig["input"]) != 1 or sig["input"][0]["dims"] != list(meta.input_size):
        raise ValueError(f"{onnx_path}: graph inputs {sig['input']} do not match the metadata {meta.input_size}")
    if sig["output"][0]["dims"] != list(meta.patch_grid):
        raise ValueError(f"{onnx_path}: first output {sig['output'][0]} does not match the grid {meta.patch_grid}")
    for tensors in sig.values():
        for t in tensors:
            t["data_type"] = _Enum(t["data_type"])
    config: dict[str, Any] = {
        "name": model_name,
        "backend": "onnxruntime",
        "default_model_filename": "model.onnx",
        "max_batch_size": max_batch_size,
        "input": sig["input"],
        "output": sig["output"],
        "dynamic_batching": {"max_queue_delay_microseconds": max_queue_delay_us},
        "instance_group": [{"count": instance_count, "kind": _Enum(INSTANCE_KINDS[kind])}],
    }
    if kind != "cpu" and meta.precision != "int8":
        trt = {
            "name": "tensorrt",
            "parameters": [
                {"key": "precision_mode", "value": "FP16"},
                {"key": "max_workspace_size_bytes", "value": str(TENSORRT_WORKSPACE_BYTES)},
            ],
        }
        config["optimization"] = {"execution_accelerators": {"gpu_execution_accelerator": [trt]}}
    config["parameters"] = [{"key": "captum_vit", "value": {"string_value": meta.to_json()}}]
    return config


def _quote(text: str) -> str:
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif not 32 <= ord(ch) < 127:
            out.extend(f"\\{b:03o}" for b in ch.encode("utf-8"))  # text format's octal byte escapes
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _scalar(value: Any) -> str:
    if isinstance(value, _Enum):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return _quote(value)
    raise TypeError(f"cannot write {type(value).__name__} in protobuf text format")


def to_pbtxt(message: dict[str, Any], indent: int = 0) -> str:
    """Protobuf text format for nested dicts: dicts are messages, lists repeated fields.

    Examples
    --------
    >>> print(to_pbtxt({"name": "m", "dims": [3, 8], "instance_group": [{"count": 1}]}))
    name: "m"
    dims: [ 3, 8 ]
    instance_group {
      count: 1
    }
    <BLANKLINE>
    """
    pad = "  " * indent
    lines = []
    for key, value in message.items():
        items = value if isinstance(value, list) else [value]
        if items and all(isinstance(v, dict) for v in items):
            for v in items:
                lines.append(f"{pad}{key} {{\n{to_pbtxt(v, indent + 1)}{pad}}}\n")
        elif isinstance(value, list):
            lines.append(f"{pad}{key}: [ {', '.join(_scalar(v) for v in value)} ]\n")
        else:
            lines.append(f"{pad}{key}: {_scalar(value)}\n")
    return "".join(lines)


def write_triton_repository(
    onnx_path: str | os.PathLike[str],
    repo_dir: str | os.PathLike[str],
    *,
    model_name: str | None = None,
    max_batch_size: int = 32,
    max_queue_delay_us: int = 100,
    instance_count: int = 1,
    kind: str = "auto",
) -> Path:
    """Write ``<repo_dir>/<model_name>/config.pbtxt`` and ``<model_name>/1/model.onnx``.

    Parameters
    ----------
    onnx_path : path-like
        An explainer exported by :func:`captum_vit.export.export_onnx` (or the predict-and-explain
        graph of :mod:`captum_vit.export.predict_explain`).
    repo_dir : path-like
        The model repository (created if missing; other models in it are left alone).
    model_name : str, optional
        Triton's model name and folder (default: the ONNX file's stem).
    max_batch_size : int
        Largest batch Triton's dynamic batcher forms (1 to 4096, the exported batch range).
    max_queue_delay_us : int
        How long a request may wait for others to join its batch, in microseconds (>= 0).
    instance_count : int
        Model instances (per GPU for GPU instances).
    kind : {"auto", "cpu", "gpu"}
        Instance placement; ``"auto"`` and ``"gpu"`` add the TensorRT FP16 accelerator (used
        by Triton only for instances placed on a GPU).

    Returns
    -------
    Path
        The model folder ``<repo_dir>/<model_name>``.

    Raises
    ------
    FileNotFoundError, ValueError
        A missing or foreign ONNX file, a graph that does not match its metadata, or an
        argument out of range.

    Examples
    --------
    >>> import tempfile, timm
    >>> from captum_vit.export import export_onnx
    >>> from captum_vit.export.explainers import pltx_export_module
    >>> from captum_vit.explainers import build_explainer
    >>> vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3,
    ...                         depth=1, img_size=32).eval()
    >>> folder = Path(tempfile.mkdtemp())
    >>> module, meta = pltx_export_module(build_explainer(vit), vit)
    >>> onnx_file = export_onnx(module, folder / "e.onnx", meta).path
    >>> model_dir = write_triton_repository(onnx_file, folder / "repo", model_name="explainer")
    >>> sorted(str(p.relative_to(model_dir)) for p in model_dir.rglob("*") if p.is_file())
    ['1/model.onnx', 'config.pbtxt']
    >>> "max_batch_size: 32" in (model_dir / "config.pbtxt").read_text()
    True
    """
    src = Path(onnx_path)
    name = src.stem if model_name is None else model_name
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ValueError(f"model_name must be letters, digits, '_', '.' or '-' (not starting with one), got {name!r}")
    for arg, value, low, high in (
        ("max_batch_size", max_batch_size, 1, 4096),
        ("max_queue_delay_us", max_queue_delay_us, 0, 60_000_000),
        ("instance_count", instance_count, 1, 1024),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"{arg} must be an int in [{low}, {high}], got {value!r}")
    if kind not in INSTANCE_KINDS:
        raise ValueError(f"kind must be one of {sorted(INSTANCE_KINDS)}, got {kind!r}")
    config = triton_config(
        src,
        model_name=name,
        max_batch_size=max_batch_size,
        max_queue_delay_us=max_queue_delay_us,
        instance_count=instance_count,
        kind=kind,
    )
    model_dir = Path(repo_dir) / name
    atomic_write(model_dir / "1" / "model.onnx", lambda tmp: shutil.copyfile(src, tmp))
    atomic_write(model_dir / "config.pbtxt", lambda tmp: tmp.write_text(to_pbtxt(config)))
    return model_dir
