"""Latency of Transformer Attribution (and its LRP variants) as a ratio to one forward pass.

The forward pass and the attribution are timed in the same test with the same clock on the
same model and batch; only the ratio is meaningful on a shared machine. Run:

    .venv/bin/python -m pytest benchmarks/speed/test_bench_tattr.py --benchmark-only -p no:xdist \
        --benchmark-columns=median,rounds -s

The ratio is in each benchmark's ``extra_info['ratio_to_forward']`` (``--benchmark-json``) and
printed. For comparison, ``"gae"`` (one forward + one backward, no LRP) is timed the same way.
"""

from __future__ import annotations

import pytest
import torch

from benchmarks.speed._timing import bench_vit, median_time
from captum_vit.attr import GenericAttention, TransformerAttribution


@pytest.mark.parametrize("method", ["transformer_attribution", "full", "gae"])
def test_tattr_latency_ratio(benchmark, method: str) -> None:
    torch.set_num_threads(1)
    model = bench_vit(device=torch.device("cpu"))
    x = torch.randn(4, 3, 64, 64)
    target = [0, 1, 2, 3]
    explainer = GenericAttention(model) if method == "gae" else TransformerAttribution(model, method=method)
    with torch.no_grad():
        fwd = median_time(lambda: model(x))
    attr = median_time(lambda: explainer.attribute(x, target=target))
    benchmark.extra_info["forward_s"] = fwd
    benchmark.extra_info["ratio_to_forward"] = attr / fwd
    print(f"\n{method}: {attr * 1e3:.1f} ms vs forward {fwd * 1e3:.1f} ms -> ratio {attr / fwd:.2f}")
    benchmark.pedantic(explainer.attribute, args=(x,), kwargs={"target": target}, rounds=3, iterations=1)
