"""Latency of every registered method as a ratio to one forward pass of the same model.

Both are timed in the same test with the same clock (this machine is shared and noisy, so
only the ratio is meaningful). Run:

    .venv/bin/python -m pytest benchmarks/speed/test_bench_methods.py --benchmark-only -p no:xdist \
        --benchmark-columns=median,rounds

The ratio is in each benchmark's ``extra_info['ratio_to_forward']`` (``--benchmark-json``)
and printed. Methods run with their defaults (IIA: 6 x 6 path points; LTX: 25 finetuning steps
of an untrained explainer); DiffMask, which needs gates, gets untrained ones.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from benchmarks.speed._timing import bench_vit, median_time
from captum_vit.attr import get_method, list_methods
from captum_vit.testing import options_for


@pytest.mark.parametrize("name", list_methods("vit"))
def test_method_latency(benchmark, name: str) -> None:
    torch.set_num_threads(1)
    model = bench_vit(device=torch.device("cpu"))
    x = torch.randn(4, 3, 64, 64)
    target = [0, 1, 2, 3]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # LTX warns that its explainer is untrained (timing only)
        try:  # the defaults; only a method that cannot be built without trained parts gets test options
            method = get_method(name)(model)
        except (ValueError, TypeError):
            method = get_method(name)(model, **options_for(name, model))
    with torch.no_grad():
        fwd = median_time(lambda: model(x))
    attr = median_time(lambda: method.attribute(x, target=target))
    benchmark.extra_info["forward_s"] = fwd
    benchmark.extra_info["ratio_to_forward"] = attr / fwd
    print(f"\n{name}: {attr * 1e3:.1f} ms vs forward {fwd * 1e3:.1f} ms -> ratio {attr / fwd:.2f}")
    benchmark.pedantic(method.attribute, args=(x,), kwargs={"target": target}, rounds=3, iterations=1)
