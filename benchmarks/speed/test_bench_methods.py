"""Latency of every registered method as a ratio to one forward pass of the same model, and the
overhead of explaining a private view of the model (issue 16) as a ratio to the old path.

Both ratios are timed in the same test with the same clock (this machine is shared and noisy,
so only ratios are meaningful). Run:

    .venv/bin/python -m pytest benchmarks/speed/test_bench_methods.py --benchmark-only -p no:xdist \
        --benchmark-columns=median,rounds

``extra_info['ratio_to_forward']`` is a method's latency over one forward pass;
``extra_info['view_overhead']`` its latency over the latency of the old path, which registered
the hooks on the user's model itself (kept reachable for this benchmark only through
``captum_vit.attr._base._instrument_user_model``); the two paths are timed interleaved. Methods
run with their defaults (IIA: 6 x 6 path points; LTX: 25 finetuning steps of an untrained
explainer); DiffMask, which needs gates, gets untrained ones.
"""

from __future__ import annotations

import statistics
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
import torch

import captum_vit.attr._base as attr_base
from benchmarks.speed._timing import bench_vit, median_time, timed
from captum_vit.attr import get_method, list_methods
from captum_vit.testing import options_for


@contextmanager
def old_path() -> Iterator[None]:
    """Instrument the user's model directly, as before the private view (benchmark only)."""
    attr_base._instrument_user_model = True
    try:
        yield
    finally:
        attr_base._instrument_user_model = False


def view_overhead(fn: Callable[[], object], repeats: int = 5) -> float:
    """Median latency of ``fn`` over its median latency on the old path, timed interleaved."""
    new, old = [], []
    fn()
    for r in range(repeats):
        for label in ("new", "old") if r % 2 == 0 else ("old", "new"):
            if label == "new":
                new.append(timed(fn))
            else:
                with old_path():
                    old.append(timed(fn))
    return statistics.median(new) / statistics.median(old)


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
    overhead = view_overhead(lambda: method.attribute(x, target=target))
    benchmark.extra_info["forward_s"] = fwd
    benchmark.extra_info["ratio_to_forward"] = attr / fwd
    benchmark.extra_info["view_overhead"] = overhead
    print(
        f"\n{name}: {attr * 1e3:.1f} ms vs forward {fwd * 1e3:.1f} ms -> ratio {attr / fwd:.2f}; "
        f"private view vs old path {overhead:.3f}"
    )
    benchmark.pedantic(method.attribute, args=(x,), kwargs={"target": target}, rounds=3, iterations=1)
