"""onnxruntime (CPU) vs PyTorch eager for the pLTX explainer, batch 1 and 8.

All paths are timed in the same test on the same inputs with the same thread count, in
blocks taken in turn over several rounds so that the shared machine's load hits them alike
(only the ratios are meaningful). Run:

    .venv/bin/python -m pytest benchmarks/speed/test_bench_export.py --benchmark-only -p no:xdist -s

Paths:

* ``eager``: the PyTorch explainer in fp32 under ``inference_mode`` (the reference);
* ``ort_fp32``: the fp32 ONNX export on onnxruntime's CPU provider;
* ``ort_int8``: ``export_onnx(..., precision="int8")`` (onnxruntime's dynamic quantization of
  the MatMul/Gemm layers) on the CPU provider;
* ``eager_int8``: PyTorch's own dynamic int8 quantization of the ``nn.Linear`` layers
  (``torch.ao.quantization.quantize_dynamic``), the same-precision eager comparison.

Threads: one intra-op thread for every runtime by default (``CAPTUM_VIT_BENCH_THREADS`` sets
another count). On this 2-core shared machine two thread pools (PyTorch's OpenMP pool and
onnxruntime's) contend when runs alternate, and 2-thread ratios swung from 0.9x to 3.9x
between runs; single-thread ratios repeat within about 10 %.

Models: the shipped ``synthetic-vit`` explainee's explainer (64x64) and a ViT-S/16 at 224
with random weights (timing only).
"""

from __future__ import annotations

import copy
import os
import statistics
import time
import warnings

import pytest
import timm
import torch

from captum_vit.explainers import build_explainer
from captum_vit.export import FastExplainer, export_onnx
from captum_vit.export.explainers import pltx_export_module

THREADS = int(os.environ.get("CAPTUM_VIT_BENCH_THREADS", "1"))
ROUNDS, BLOCK, SETTLE_S = 3, 5, 0.5


def explainee(name: str) -> torch.nn.Module:
    if name == "vit_small_patch16_224":
        torch.manual_seed(0)
        return timm.create_model(name, pretrained=False).eval()
    from captum_vit.models import load_pretrained

    return load_pretrained(name)


def eager_int8(module: torch.nn.Module) -> torch.nn.Module | None:
    """PyTorch's dynamic int8 quantization of the Linear layers, or None where torch lacks it."""
    try:
        from torch.ao.quantization import quantize_dynamic
    except ImportError:  # pragma: no cover - removed in a future torch
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return quantize_dynamic(copy.deepcopy(module), {torch.nn.Linear}, dtype=torch.qint8)


@pytest.fixture(scope="module", params=["synthetic-vit", "vit_small_patch16_224"])
def exported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    model = explainee(request.param)
    explainer = build_explainer(model).eval()
    module, meta = pltx_export_module(explainer, model)
    folder = tmp_path_factory.mktemp("bench")
    paths = {p: export_onnx(module, folder / f"{p}.onnx", meta, precision=p).path for p in ("fp32", "int8")}
    return request.param, module, meta, paths


def interleaved_medians(fns: dict[str, object], rounds: int = ROUNDS, block: int = BLOCK) -> dict[str, float]:
    """Median seconds per call of each function, timed in blocks taken in turn.

    Each round runs every function for one warm-up call and ``block`` timed calls. Between
    blocks the process sleeps briefly: the previous runtime's worker threads spin for a while
    after a call (OpenMP's and onnxruntime's wait policies), and on two cores a spinning
    thread pool would be timed as the next runtime's slowness.
    """
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            time.sleep(SETTLE_S)
            fn()  # type: ignore[operator]
            for _ in range(block):
                start = time.perf_counter()
                fn()  # type: ignore[operator]
                times[name].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


@pytest.mark.parametrize("batch", [1, 8])
def test_onnxruntime_vs_eager(benchmark, exported, batch: int) -> None:
    name, module, meta, paths = exported
    torch.set_num_threads(THREADS)
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = THREADS
    fast = {p: FastExplainer(path, ["CPUExecutionProvider"], session_options=opts) for p, path in paths.items()}
    x = torch.randn(batch, *meta.input_size)
    quantized = eager_int8(module)

    def run_eager(m: torch.nn.Module) -> object:
        with torch.inference_mode():
            return m(x)

    fns = {
        "eager": lambda: run_eager(module),
        "ort_fp32": lambda: fast["fp32"](x),
        "ort_int8": lambda: fast["int8"](x),
    }
    if quantized is not None:
        fns["eager_int8"] = lambda: run_eager(quantized)
    t = interleaved_medians(fns)
    ratios = {
        "ort_fp32_vs_eager": t["eager"] / t["ort_fp32"],
        "ort_int8_vs_eager": t["eager"] / t["ort_int8"],
    }
    if quantized is not None:
        ratios["ort_int8_vs_eager_int8"] = t["eager_int8"] / t["ort_int8"]
    benchmark.extra_info.update({f"{k}_ms": v * 1e3 for k, v in t.items()})
    benchmark.extra_info.update(ratios)
    print(
        f"\n{name} batch {batch} ({THREADS} threads): "
        + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in t.items())
        + " | speed-ups: "
        + ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items())
    )
    benchmark.pedantic(fast["int8"], args=(x,), rounds=5, iterations=1)
