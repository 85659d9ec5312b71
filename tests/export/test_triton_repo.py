"""The Triton model repository: its config.pbtxt parsed by protobuf against a checked schema.

``tritonclient`` is not a dependency (its model-config module comes with the gRPC client), so
the schema is the subset of Triton's ``ModelConfig`` (``model_config.proto`` of the Triton
``common`` repository: same message, field and enum names and numbers) that the writer uses,
built here as a protobuf descriptor. ``text_format.Parse`` then rejects any unknown field, wrong
type or unknown enum value, and every parsed field is checked against the ONNX graph as
onnxruntime reads it. Triton itself cannot run here (no server, no GPU).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import onnx
import onnxruntime as ort
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory, text_format

from captum_vit.export import read_metadata
from captum_vit.export.triton_repo import write_triton_repository
from tests.export.test_serve_support import tiny_exports

F = descriptor_pb2.FieldDescriptorProto
ORT_TO_TRITON = {"tensor(float)": "TYPE_FP32", "tensor(float16)": "TYPE_FP16", "tensor(int64)": "TYPE_INT64"}


def _field(name: str, number: int, kind: int, repeated: bool = False, type_name: str = "") -> F:
    label = F.LABEL_REPEATED if repeated else F.LABEL_OPTIONAL
    field = F(name=name, number=number, type=kind, label=label)  # type: ignore[arg-type]
    if type_name:
        field.type_name = type_name
    return field


def _message(name: str, *fields: F) -> descriptor_pb2.DescriptorProto:
    return descriptor_pb2.DescriptorProto(name=name, field=list(fields))


def _map_entry(name: str, value: F) -> descriptor_pb2.DescriptorProto:
    entry = _message(name, _field("key", 1, F.TYPE_STRING), value)
    entry.options.map_entry = True
    return entry


def _enum(name: str, *values: str) -> descriptor_pb2.EnumDescriptorProto:
    return descriptor_pb2.EnumDescriptorProto(
        name=name, value=[descriptor_pb2.EnumValueDescriptorProto(name=v, number=i) for i, v in enumerate(values)]
    )


def model_config_class() -> Any:
    s, i32, i64, u64, msg, enum = F.TYPE_STRING, F.TYPE_INT32, F.TYPE_INT64, F.TYPE_UINT64, F.TYPE_MESSAGE, F.TYPE_ENUM
    dtypes = ["TYPE_INVALID", "TYPE_BOOL", "TYPE_UINT8", "TYPE_UINT16", "TYPE_UINT32", "TYPE_UINT64", "TYPE_INT8"]
    dtypes += [
        "TYPE_INT16",
        "TYPE_INT32",
        "TYPE_INT64",
        "TYPE_FP16",
        "TYPE_FP32",
        "TYPE_FP64",
        "TYPE_STRING",
        "TYPE_BF16",
    ]
    model_input = _message(
        "ModelInput",
        _field("name", 1, s),
        _field("data_type", 2, enum, type_name=".inference.DataType"),
        _field("format", 3, enum, type_name=".inference.ModelInput.Format"),
        _field("dims", 4, i64, repeated=True),
    )
    model_input.enum_type.append(_enum("Format", "FORMAT_NONE", "FORMAT_NHWC", "FORMAT_NCHW"))
    model_output = _message(
        "ModelOutput",
        _field("name", 1, s),
        _field("data_type", 2, enum, type_name=".inference.DataType"),
        _field("dims", 3, i64, repeated=True),
    )
    group = _message(
        "ModelInstanceGroup",
        _field("name", 1, s),
        _field("count", 2, i32),
        _field("gpus", 3, i32, repeated=True),
        _field("kind", 4, enum, type_name=".inference.ModelInstanceGroup.Kind"),
    )
    group.enum_type.append(_enum("Kind", "KIND_AUTO", "KIND_GPU", "KIND_CPU", "KIND_MODEL"))
    batching = _message(
        "ModelDynamicBatching",
        _field("preferred_batch_size", 1, i32, repeated=True),
        _field("max_queue_delay_microseconds", 2, u64),
    )
    accelerator = _message(
        "Accelerator",
        _field("name", 1, s),
        _field(
            "parameters",
            2,
            msg,
            True,
            ".inference.ModelOptimizationPolicy.ExecutionAccelerators.Accelerator.ParametersEntry",
        ),
    )
    accelerator.nested_type.append(_map_entry("ParametersEntry", _field("value", 2, s)))
    accelerators = _message(
        "ExecutionAccelerators",
        _field(
            "gpu_execution_accelerator",
            1,
            msg,
            True,
            ".inference.ModelOptimizationPolicy.ExecutionAccelerators.Accelerator",
        ),
        _field(
            "cpu_execution_accelerator",
            2,
            msg,
            True,
            ".inference.ModelOptimizationPolicy.ExecutionAccelerators.Accelerator",
        ),
    )
    accelerators.nested_type.append(accelerator)
    optimization = _message(
        "ModelOptimizationPolicy",
        _field("execution_accelerators", 4, msg, type_name=".inference.ModelOptimizationPolicy.ExecutionAccelerators"),
    )
    optimization.nested_type.append(accelerators)
    parameter = _message("ModelParameter", _field("string_value", 1, s))
    config = _message(
        "ModelConfig",
        _field("name", 1, s),
        _field("platform", 2, s),
        _field("max_batch_size", 4, i32),
        _field("input", 5, msg, True, ".inference.ModelInput"),
        _field("output", 6, msg, True, ".inference.ModelOutput"),
        _field("instance_group", 7, msg, True, ".inference.ModelInstanceGroup"),
        _field("default_model_filename", 8, s),
        _field("dynamic_batching", 11, msg, type_name=".inference.ModelDynamicBatching"),
        _field("optimization", 12, msg, type_name=".inference.ModelOptimizationPolicy"),
        _field("parameters", 14, msg, True, ".inference.ModelConfig.ParametersEntry"),
        _field("backend", 17, s),
    )
    config.nested_type.append(
        _map_entry("ParametersEntry", _field("value", 2, msg, type_name=".inference.ModelParameter"))
    )
    proto = descriptor_pb2.FileDescriptorProto(
        name="test_triton_model_config.proto", package="inference", syntax="proto3"
    )
    proto.enum_type.append(_enum("DataType", *dtypes))
    proto.message_type.extend([model_input, model_output, group, batching, optimization, parameter, config])
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("inference.ModelConfig"))


def parse_config(model_dir: Path) -> dict[str, Any]:
    message = text_format.Parse((model_dir / "config.pbtxt").read_text(), model_config_class()())
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def graph_tensors(path: Path) -> dict[str, list[dict[str, Any]]]:
    """Inputs and outputs as onnxruntime reads them: name, Triton type, non-batch dims."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def rows(tensors: list[Any]) -> list[dict[str, Any]]:
        for t in tensors:
            assert isinstance(t.shape[0], str), f"{t.name}: batch dimension is not dynamic"
        return [
            {"name": t.name, "data_type": ORT_TO_TRITON[t.type], "dims": [str(d) for d in t.shape[1:]]} for t in tensors
        ]

    return {"input": rows(session.get_inputs()), "output": rows(session.get_outputs())}


@pytest.mark.parametrize("which", ["pltx", "predict"])
@pytest.mark.parametrize("kind", ["auto", "cpu", "gpu"])
def test_config_matches_the_onnx_graph(tmp_path: Path, which: str, kind: str) -> None:
    src = getattr(tiny_exports(), which)
    model_dir = write_triton_repository(
        src,
        tmp_path / "repo",
        model_name="explainer",
        max_batch_size=16,
        max_queue_delay_us=250,
        instance_count=2,
        kind=kind,
    )
    assert model_dir == tmp_path / "repo" / "explainer"
    assert sorted(p.relative_to(model_dir).as_posix() for p in model_dir.rglob("*")) == [
        "1",
        "1/model.onnx",
        "config.pbtxt",
    ]
    assert (model_dir / "1" / "model.onnx").read_bytes() == src.read_bytes()
    cfg = parse_config(model_dir)
    meta = read_metadata(src)
    graph = graph_tensors(src)
    assert (
        cfg["name"] == "explainer" and cfg["backend"] == "onnxruntime" and cfg["default_model_filename"] == "model.onnx"
    )
    assert cfg["max_batch_size"] == 16
    assert cfg["input"] == graph["input"] and cfg["output"] == graph["output"]  # int64 dims print as strings
    assert [int(d) for d in cfg["input"][0]["dims"]] == list(meta.input_size)
    assert [int(d) for d in cfg["output"][0]["dims"]] == list(meta.patch_grid)
    if which == "predict":
        assert cfg["output"][1] == {"name": "logits", "data_type": "TYPE_FP32", "dims": [str(meta.num_classes)]}
    assert cfg["dynamic_batching"] == {"max_queue_delay_microseconds": "250"}
    (group,) = cfg["instance_group"]
    assert group["count"] == 2  # proto3 leaves the default KIND_AUTO (0) out of the dict
    assert group.get("kind", "KIND_AUTO") == {"auto": "KIND_AUTO", "cpu": "KIND_CPU", "gpu": "KIND_GPU"}[kind]
    if kind == "cpu":
        assert "optimization" not in cfg
    else:
        (trt,) = cfg["optimization"]["execution_accelerators"]["gpu_execution_accelerator"]
        assert trt["name"] == "tensorrt" and trt["parameters"]["precision_mode"] == "FP16"
        assert int(trt["parameters"]["max_workspace_size_bytes"]) == 1 << 30
    stored = json.loads(cfg["parameters"]["captum_vit"]["string_value"])
    assert stored == json.loads(meta.to_json())


def _rewrite(src: Path, dst: Path, edit: Any) -> Path:
    proto = onnx.load_model(str(src))
    edit(proto)
    onnx.save_model(proto, str(dst))
    return dst


def test_int8_graphs_get_no_tensorrt_accelerator(tmp_path: Path) -> None:
    def mark_int8(proto: Any) -> None:
        for p in proto.metadata_props:
            if p.key == "captum_vit":
                p.value = json.dumps(dict(json.loads(p.value), precision="int8"))

    src = _rewrite(tiny_exports().pltx, tmp_path / "e8.onnx", mark_int8)
    cfg = parse_config(write_triton_repository(src, tmp_path / "repo", kind="gpu"))
    assert cfg["name"] == "e8" and "optimization" not in cfg and cfg["instance_group"][0]["kind"] == "KIND_GPU"


def test_bad_arguments_and_foreign_graphs_are_refused(tmp_path: Path) -> None:
    src = tiny_exports().pltx
    for kwargs, message in [
        ({"kind": "tpu"}, "kind must be one of"),
        ({"model_name": "a/b"}, "model_name must be"),
        ({"max_batch_size": 0}, "max_batch_size must be"),
        ({"max_queue_delay_us": -1}, "max_queue_delay_us must be"),
        ({"instance_count": 0}, "instance_count must be"),
    ]:
        with pytest.raises(ValueError, match=message):
            write_triton_repository(src, tmp_path / "repo", **kwargs)
    with pytest.raises(FileNotFoundError):
        write_triton_repository(tmp_path / "missing.onnx", tmp_path / "repo")

    def drop_metadata(proto: Any) -> None:
        del proto.metadata_props[:]

    def static_batch(proto: Any) -> None:
        proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1

    with pytest.raises(ValueError, match="no 'captum_vit' metadata"):
        write_triton_repository(_rewrite(src, tmp_path / "f.onnx", drop_metadata), tmp_path / "repo")
    with pytest.raises(ValueError, match="no dynamic batch dimension"):
        write_triton_repository(_rewrite(src, tmp_path / "s.onnx", static_batch), tmp_path / "repo")
    assert not (tmp_path / "repo").exists()  # nothing written for a refused graph


def test_parser_rejects_what_triton_would(tmp_path: Path) -> None:
    model_dir = write_triton_repository(tiny_exports().pltx, tmp_path / "repo")
    text = (model_dir / "config.pbtxt").read_text()
    for bad in (text.replace("TYPE_FP32", "TYPE_FLOAT32", 1), text + "max_batch: 4\n"):
        (model_dir / "config.pbtxt").write_text(bad)
        with pytest.raises(text_format.ParseError):
            parse_config(model_dir)
    shutil.rmtree(model_dir)
