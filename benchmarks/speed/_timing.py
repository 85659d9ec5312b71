"""Timing helpers and the benchmark models shared by the benchmark files.

``CAPTUM_VIT_BENCH_FULL=1`` switches the ViT benchmarks to ViT-B/16 at 224 (random weights),
on CUDA where available.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable

import timm
import torch
from torch import nn

FULL = os.environ.get("CAPTUM_VIT_BENCH_FULL", "") == "1"
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
ROUNDS = int(os.environ.get("CAPTUM_VIT_BENCH_ROUNDS", "3"))


def bench_vit(depth: int = 12, num_classes: int = 10, device: torch.device = DEVICE) -> nn.Module:
    """ViT-B/16 at 224 with ``FULL``, else a ViT-Tiny-shaped model (192 wide) of ``depth``
    blocks at 64x64 with 8x8 patches; random weights, eval mode."""
    torch.manual_seed(0)
    if FULL:
        m = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=1000)
    else:
        m = timm.create_model(
            "vit_tiny_patch16_224", pretrained=False, num_classes=num_classes, img_size=64, patch_size=8, depth=depth
        )
    return m.eval().to(device)


def timed(fn: Callable[[], object], device: torch.device = DEVICE) -> float:
    """Seconds one call of ``fn`` takes (synchronising CUDA around it)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def median_time(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> float:
    """Median seconds of ``repeats`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    return statistics.median(timed(fn) for _ in range(repeats))


def interleaved_medians(
    runs: dict[str, Callable[[], object]], rounds: int, device: torch.device = DEVICE
) -> dict[str, float]:
    """Median seconds of each run, timed in turn ``rounds`` times (the machine is shared and
    noisy: interleaving exposes every run to the same load)."""
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(rounds):
        for name, fn in runs.items():
            times[name].append(timed(fn, device))
    return {k: statistics.median(v) for k, v in times.items()}
