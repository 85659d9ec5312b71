"""Build and run TensorRT engines from exported explainers (optional; needs CUDA).

``tensorrt`` is imported lazily: nothing here is imported by ``captum_vit.export`` unless a
TensorRT function is called. TensorRT 10 and 11 are supported. In TensorRT 11 networks are
strongly typed and the FP16 builder flag is gone, so fp16 engines are built from an fp16 ONNX
(``export_onnx(..., precision="fp16")``); on TensorRT 10 an fp32 ONNX can also be built with
the (deprecated) FP16 flag (ecosystem.md §7.3).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from captum_vit._io import atomic_write
from captum_vit.export.onnx_export import ExplainerMetadata, check_batch, read_metadata


def import_tensorrt() -> Any:
    """``import tensorrt`` with an error that names the extra to install."""
    try:
        import tensorrt as trt
    except ImportError as e:
        raise ImportError(
            "TensorRT is not installed: pip install 'captum_vit[tensorrt]' (its libraries come from "
            "NVIDIA's package index) on a machine with an NVIDIA GPU"
        ) from e
    return trt


def tensorrt_unavailable_reason() -> str | None:
    """``None`` when engines can be built here, else why not (for skips and errors)."""
    if not torch.cuda.is_available():
        return "CUDA is not available"
    try:
        import_tensorrt()
    except ImportError as e:
        return str(e)
    return None


@dataclass(frozen=True)
class BatchProfile:
    """A TensorRT optimisation profile over the dynamic batch dimension.

    Examples
    --------
    >>> BatchProfile(1, 8, 32).shapes((3, 64, 64))
    ((1, 3, 64, 64), (8, 3, 64, 64), (32, 3, 64, 64))
    """

    min_batch: int = 1
    opt_batch: int = 8
    max_batch: int = 32

    def __post_init__(self) -> None:
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            raise ValueError(
                f"batch profile must satisfy 1 <= min <= opt <= max, got "
                f"min={self.min_batch}, opt={self.opt_batch}, max={self.max_batch}"
            )

    def shapes(self, input_size: tuple[int, ...]) -> tuple[tuple[int, ...], ...]:
        return tuple((b, *input_size) for b in (self.min_batch, self.opt_batch, self.max_batch))

    def admits(self, batch: int) -> bool:
        return self.min_batch <= batch <= self.max_batch


def engine_cache_key(
    onnx_path: str | os.PathLike[str], profile: BatchProfile, precision: str, trt_version: str, device_name: str
) -> str:
    """A key that changes whenever the engine would: the graph's bytes, the profile, the
    precision, the TensorRT version and the GPU model (engines are not portable across them).

    Examples
    --------
    >>> import tempfile, os
    >>> f = tempfile.NamedTemporaryFile(delete=False); _ = f.write(b"graph"); f.close()
    >>> a = engine_cache_key(f.name, BatchProfile(1, 8, 32), "fp16", "11.4", "H100")
    >>> a == engine_cache_key(f.name, BatchProfile(1, 8, 64), "fp16", "11.4", "H100")
    False
    >>> os.remove(f.name)
    """
    if precision not in ("fp32", "fp16"):
        raise ValueError(f"precision must be 'fp32' or 'fp16', got {precision!r}")
    h = hashlib.sha256(Path(onnx_path).read_bytes())
    for part in (profile.min_batch, profile.opt_batch, profile.max_batch, precision, trt_version, device_name):
        h.update(b"\0" + str(part).encode())
    return h.hexdigest()[:32]


def _major(trt: Any) -> int:
    return int(str(trt.__version__).split(".")[0])


def build_engine(
    onnx_path: str | os.PathLike[str],
    profile: BatchProfile = BatchProfile(),
    precision: str = "fp32",
    cache_dir: str | os.PathLike[str] | None = None,
    workspace_bytes: int = 1 << 30,
) -> Path:
    """Build (or fetch from the cache) a serialized engine for an exported explainer.

    Returns the engine's path. Raises ``ImportError`` without TensorRT, ``RuntimeError``
    without CUDA or when the parser/builder fails, ``ValueError`` for an int8 export or an
    fp16 request that TensorRT 11 cannot honour from an fp32 ONNX.
    """
    meta = read_metadata(onnx_path)
    if precision not in ("fp32", "fp16"):
        raise ValueError(f"precision must be 'fp32' or 'fp16', got {precision!r}")
    if meta.precision == "int8":
        raise ValueError(
            f"{onnx_path} is an int8 export (onnxruntime's dynamic-quantization operators, for CPU), "
            "which TensorRT does not build: export fp32 or fp16 for TensorRT"
        )
    reason = tensorrt_unavailable_reason()
    if reason is not None:
        raise RuntimeError(f"cannot build a TensorRT engine: {reason}")
    trt = import_tensorrt()
    use_fp16_flag = precision == "fp16" and meta.precision == "fp32"
    if use_fp16_flag and _major(trt) >= 11:
        raise ValueError(
            "TensorRT 11 removed the FP16 builder flag: export an fp16 ONNX "
            "(export_onnx(..., precision='fp16')) and build that"
        )
    cache = Path(cache_dir) if cache_dir is not None else Path(onnx_path).parent
    key = engine_cache_key(onnx_path, profile, precision, trt.__version__, torch.cuda.get_device_name())
    engine_path = cache / f"{Path(onnx_path).stem}.{key}.engine"
    if engine_path.is_file():
        return engine_path

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    if use_fp16_flag:
        config.set_flag(trt.BuilderFlag.FP16)
    opt = builder.create_optimization_profile()
    name = network.get_input(0).name
    opt.set_shape(name, *profile.shapes(tuple(meta.input_size)))
    config.add_optimization_profile(opt)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError(f"TensorRT failed to build an engine for {onnx_path}")
    return atomic_write(engine_path, lambda tmp: tmp.write_bytes(bytes(plan)))


class TensorRTExplainer:
    """Run a serialized engine on CUDA tensors; same call as :class:`FastExplainer`."""

    def __init__(self, engine_path: str | os.PathLike[str], onnx_path: str | os.PathLike[str]) -> None:
        reason = tensorrt_unavailable_reason()
        if reason is not None:
            raise RuntimeError(f"cannot run a TensorRT engine: {reason}")
        trt = import_tensorrt()
        self.metadata: ExplainerMetadata = read_metadata(onnx_path)
        self._logger = trt.Logger(trt.Logger.WARNING)
        self.engine = trt.Runtime(self._logger).deserialize_cuda_engine(Path(engine_path).read_bytes())
        if self.engine is None:
            raise ValueError(f"{engine_path} is not a valid engine for this TensorRT/GPU")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        modes = [self.engine.get_tensor_mode(n) for n in names]
        self.input_name = next(n for n, m in zip(names, modes) if m == trt.TensorIOMode.INPUT)
        self.output_name = next(n for n, m in zip(names, modes) if m == trt.TensorIOMode.OUTPUT)

    def __call__(self, images: Tensor) -> Tensor:
        check_batch(images, self.metadata, "images")
        x = images.detach().to("cuda", torch.float32).contiguous()
        self.context.set_input_shape(self.input_name, tuple(x.shape))
        out = torch.empty((x.shape[0], *self.metadata.patch_grid), device="cuda", dtype=torch.float32)
        self.context.set_tensor_address(self.input_name, x.data_ptr())
        self.context.set_tensor_address(self.output_name, out.data_ptr())
        stream = torch.cuda.current_stream()
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed")
        stream.synchronize()
        return out.to(images.device)
