"""Shared by the serving tests: tiny exported explainers, a server in a subprocess, references.

No tests here; the helpers are cached per process so each graph is exported once.
"""

from __future__ import annotations

import functools
import io
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from captum_vit.explainers import build_explainer
from captum_vit.export import ExplainerMetadata, FastAttribution, export_onnx, read_metadata
from captum_vit.export.explainers import pltx_export_module
from captum_vit.export.predict_explain import export_predict_explain, predict_explain_module
from captum_vit.export.serving.process import ServerProcess
from captum_vit.models.fingerprint import model_fingerprint
from captum_vit.models.preprocess import normalize
from captum_vit.testing import make_vit


@dataclass
class TinyExports:
    folder: Path
    pltx: Path  # map-only pLTX graph of a 2-block 32x32 ViT (4x4 grid)
    predict: Path  # the same explainer plus the ViT's logits
    vit: nn.Module


@functools.cache
def tiny_exports() -> TinyExports:
    folder = Path(tempfile.mkdtemp(prefix="captum-vit-serve-"))
    vit = make_vit("cls")
    vit.pretrained_cfg = dict(vit.pretrained_cfg, mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3))
    vit.pretrained_cfg["label_names"] = [f"class-{i}" for i in range(vit.num_classes)]
    torch.manual_seed(0)
    module, meta = pltx_export_module(build_explainer(vit).eval(), vit)
    pltx = export_onnx(module, folder / "pltx.onnx", meta).path
    pe_module, pe_meta = predict_explain_module(module, meta, vit)
    predict = export_predict_explain(pe_module, folder / "predict.onnx", pe_meta).path
    return TinyExports(folder, pltx, predict, vit)


class SlowMap(nn.Module):
    """A convolution stack heavy enough (~5 GFLOP per 64x64 image) to keep requests in flight."""

    def __init__(self, width: int = 64, depth: int = 16) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, width, 3, padding=1)]
        layers += [nn.Conv2d(width, width, 3, padding=1) for _ in range(depth)]
        self.body = nn.Sequential(*layers, nn.Conv2d(width, 1, 1), nn.AdaptiveAvgPool2d(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)[:, 0].sigmoid()


@functools.cache
def slow_export() -> Path:
    torch.manual_seed(0)
    module = SlowMap().eval()
    meta = ExplainerMetadata((3, 64, 64), (4, 4), (0.5,) * 3, (0.25,) * 3, "test-slow", model_fingerprint(module))
    return export_onnx(module, Path(tempfile.mkdtemp(prefix="captum-vit-slow-")) / "slow.onnx", meta).path


class Server(ServerProcess):
    """The service in a subprocess, one onnxruntime thread (the tests share two cores)."""

    def __init__(self, models: dict[str, Path], *args: str) -> None:
        super().__init__(models, args, threads=1)


def random_pixels(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def png_bytes(pixels: np.ndarray, fmt: str = "PNG", **save: object) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt, **save)
    return buf.getvalue()


def normalised(path: Path, pixels: np.ndarray) -> torch.Tensor:
    """``(1, C, H, W)``: ``[0, 1]`` pixels normalised with the metadata's mean and std."""
    meta = read_metadata(path)
    x = torch.from_numpy(pixels.astype(np.float32) / 255.0).permute(2, 0, 1)[None]
    return normalize(x, torch.tensor(meta.mean), torch.tensor(meta.std))


def reference_map(path: Path, pixels: np.ndarray) -> np.ndarray:
    """What :class:`FastAttribution` returns for the image (already at the input size)."""
    return FastAttribution(path).attribute(normalised(path, pixels), return_patch_map=True)[0].numpy()
