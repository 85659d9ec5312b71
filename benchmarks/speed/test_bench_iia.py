"""IIA latency: batched path points vs the per-point loop, and vs captum's IntegratedGradients.

All three are measured in one run, interleaved round by round, on the same model and images:

* ``iia_batched``: ``IIA(model, n_steps=5, internal_batch_size=72)``, IIA2 with 36 path points
  per image, the whole batch in one forward/backward (the default sizes passes from a memory
  budget instead);
* ``iia_per_point``: the same with ``internal_batch_size=1``, i.e. the released code's
  Python loop of single-image passes (it also runs 6 extra outer passes, not counted here);
* ``captum_ig``: ``IntegratedGradients(model).attribute(..., n_steps=36)``, the same number of
  gradient evaluations per image, all in one pass.

Reported (``extra_info`` and stdout): median seconds per call, ``iia_over_ig`` (IIA batched /
IG) and ``batched_speedup`` (per-point loop / batched).

Run: ``python -m pytest benchmarks/speed/test_bench_iia.py -p no:xdist -s``. The default model is a
small ViT sized for a CPU; ``CAPTUM_VIT_BENCH_FULL=1`` uses ViT-B/16 at 224x224 (random
weights: latency does not depend on them), on CUDA when available.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from captum.attr import IntegratedGradients

from benchmarks.speed._timing import DEVICE, FULL, ROUNDS, bench_vit, interleaved_medians
from captum_vit.attr import IIA
from captum_vit.testing import assert_close

BATCH = 2
N_STEPS = 5  # released ITERATION_STEPS: 6 x 6 = 36 path points per image


@pytest.mark.slow
def test_iia_batched_vs_loop_vs_integrated_gradients(benchmark: pytest.FixtureRequest) -> None:
    model = bench_vit(depth=6, num_classes=10, device=DEVICE)
    size = 224 if FULL else 64
    x = torch.randn(BATCH, 3, size, size, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    targets = [3, 7]
    n_points = (N_STEPS + 1) ** 2
    batched = IIA(model, n_steps=N_STEPS, internal_batch_size=BATCH * n_points)
    loop = IIA(model, n_steps=N_STEPS, internal_batch_size=1)
    ig = IntegratedGradients(model)
    runs: dict[str, Callable[[], torch.Tensor]] = {
        "iia_batched": lambda: batched.attribute(x, target=targets),
        "iia_per_point": lambda: loop.attribute(x, target=targets),
        "captum_ig": lambda: ig.attribute(x, target=targets, n_steps=n_points),
    }
    # Same answer from both IIA schedules (and a warm-up for every run).
    assert_close(runs["iia_per_point"](), runs["iia_batched"](), "fp32_loose")
    runs["captum_ig"]()
    med = interleaved_medians(runs, ROUNDS, DEVICE)
    info = {
        "device": torch.cuda.get_device_name() if DEVICE.type == "cuda" else f"cpu x{torch.get_num_threads()}",
        "model": "vit_base_patch16_224" if FULL else "vit_tiny(depth 6, 64x64, patch 8)",
        "batch": BATCH,
        "gradient_evaluations_per_image": n_points,
        **{f"{k}_s": round(v, 4) for k, v in med.items()},
        "iia_over_ig": round(med["iia_batched"] / med["captum_ig"], 3),
        "batched_speedup": round(med["iia_per_point"] / med["iia_batched"], 3),
    }
    benchmark.extra_info.update(info)
    print("\nIIA benchmark:", info)
    benchmark.pedantic(runs["iia_batched"], rounds=1, iterations=1)
