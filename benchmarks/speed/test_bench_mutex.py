"""MUTEX latency as a ratio to one forward pass, and batched vs one-at-a-time mask scoring.

All three are measured in one run, interleaved round by round, on the same model and images:

* ``forward``: one plain forward of the batch (the unit of the ratio);
* ``mutex_batched``: ``MUTEX(model)`` with the default ``internal_batch_size=64``: the 54
  (image, mask) pairs per image are grouped by kept-token count and scored 64 sequences per forward;
* ``mutex_sequential``: the same with ``internal_batch_size=1``, one masked sequence per
  forward, as the official notebook's loop of 54 forwards per image.

Reported (``extra_info`` and stdout): median seconds per call, ``ratio_to_forward`` (MUTEX
batched / one forward) and ``batched_speedup`` (sequential / batched). Both paths must give
the same map (checked).

Run: ``python -m pytest benchmarks/speed/test_bench_mutex.py -p no:xdist -s``. The default model is
ViT-Tiny-shaped (12 blocks, 192 wide) at 64x64 with 8x8 patches, one CPU thread (this machine
is shared: only the ratios are meaningful). ``CAPTUM_VIT_BENCH_FULL=1`` uses ViT-B/16 at
224x224 (random weights: latency does not depend on them), on CUDA when available.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from benchmarks.speed._timing import FULL, ROUNDS, bench_vit, interleaved_medians
from captum_vit.attr import MUTEX
from captum_vit.testing import assert_close

DEVICE = torch.device("cuda" if FULL and torch.cuda.is_available() else "cpu")
BATCH = 2


def test_mutex_latency_and_batched_speedup(benchmark) -> None:
    threads = torch.get_num_threads()
    if DEVICE.type == "cpu":
        torch.set_num_threads(1)
    try:
        model = bench_vit(depth=12, num_classes=10, device=DEVICE)
        size = 224 if FULL else 64
        x = torch.randn(BATCH, 3, size, size, device=DEVICE)
        target = list(range(BATCH))
        batched, sequential = MUTEX(model), MUTEX(model, internal_batch_size=1)
        assert_close(
            batched.attribute(x, target=target, return_patch_map=True),
            sequential.attribute(x, target=target, return_patch_map=True),
            "fp32_loose",
            "batched vs sequential mask scoring",
        )

        def forward() -> None:
            with torch.no_grad():
                model(x)

        runs: dict[str, Callable[[], object]] = {
            "forward": forward,
            "mutex_batched": lambda: batched.attribute(x, target=target),
            "mutex_sequential": lambda: sequential.attribute(x, target=target),
        }
        med = interleaved_medians(runs, ROUNDS, DEVICE)
        info = {
            "device": torch.cuda.get_device_name() if DEVICE.type == "cuda" else f"cpu x{torch.get_num_threads()}",
            "model": "vit_base_patch16_224" if FULL else "vit_tiny(12 blocks, 64x64, patch 8)",
            "batch": BATCH,
            "masks_per_image": len(batched.mask_names),
            **{f"{k}_s": round(v, 5) for k, v in med.items()},
            "ratio_to_forward": round(med["mutex_batched"] / med["forward"], 2),
            "sequential_ratio_to_forward": round(med["mutex_sequential"] / med["forward"], 2),
            "batched_speedup": round(med["mutex_sequential"] / med["mutex_batched"], 2),
        }
        benchmark.extra_info.update(info)
        print("\nMUTEX benchmark:", info)
        benchmark.pedantic(runs["mutex_batched"], rounds=1, iterations=1)
    finally:
        torch.set_num_threads(threads)
