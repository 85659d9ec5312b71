"""onnxruntime (CPU) vs PyTorch eager for the pLTX explainer, batch 1 and 8.

Both paths are timed in the same test on the same inputs with the same thread count (the
machine is shared and noisy: only the ratio is meaningful). Run:

    .venv/bin/python -m pytest benchmarks/test_bench_export.py --benchmark-only -p no:xdist -s

Models: the shipped ``synthetic-vit`` explainee's explainer (64x64) and a ViT-S/16 at 224
with random weights (timing only).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch

from benchmarks._timing import median_time
from captum_vit.export import FastExplainer, export_onnx
from captum_vit.export.explainers import pltx_export_module
from captum_vit.models.explainer import build_explainer

THREADS = 2


def explainee(name: str) -> torch.nn.Module:
    if name == "vit_small_patch16_224":
        torch.manual_seed(0)
        return timm.create_model(name, pretrained=False).eval()
    from captum_vit.models import load_pretrained

    return load_pretrained(name)


@pytest.fixture(scope="module", params=["synthetic-vit", "vit_small_patch16_224"])
def exported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    model = explainee(request.param)
    explainer = build_explainer(model).eval()
    module, meta = pltx_export_module(explainer, model)
    path = export_onnx(module, tmp_path_factory.mktemp("bench") / "e.onnx", meta).path
    return request.param, module, meta, Path(path)


@pytest.mark.parametrize("batch", [1, 8])
def test_onnxruntime_vs_eager(benchmark, exported, batch: int) -> None:
    name, module, meta, path = exported
    torch.set_num_threads(THREADS)
    import onnxruntime as ort

    fast = FastExplainer(path, providers=["CPUExecutionProvider"])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = THREADS
    fast.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    x = torch.randn(batch, *meta.input_size)
    with torch.inference_mode():
        eager = median_time(lambda: module(x), repeats=10, warmup=2)
    onnx_s = median_time(lambda: fast(x), repeats=10, warmup=2)
    speedup = eager / onnx_s
    benchmark.extra_info.update(eager_ms=eager * 1e3, onnxruntime_ms=onnx_s * 1e3, speedup=speedup)
    print(
        f"\n{name} batch {batch}: eager {eager * 1e3:.2f} ms, onnxruntime {onnx_s * 1e3:.2f} ms, speed-up {speedup:.2f}x"
    )
    benchmark.pedantic(fast, args=(x,), rounds=5, iterations=1)
