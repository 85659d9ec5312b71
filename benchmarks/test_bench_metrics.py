"""Batched perturbation evaluation vs the same computation as a per-step loop.

    python -m pytest benchmarks/test_bench_metrics.py -p no:xdist --benchmark-only -s

The batched path (:func:`captum_vit.metrics.perturbation_curves`) builds all removal levels
with one :func:`captum_vit.kernels.perturbation_batch` call and scores them in one forward
pass. The loop does exactly the same work one level at a time, as the official evaluation
scripts do (rank the pixels, perturb, normalise, classify, per step). Both are timed in the
same run, interleaved round by round so machine load affects them alike; the median ratio is
stored in the benchmark's ``extra_info`` and must be at least 3x.
"""

from __future__ import annotations

import statistics
import time

import pytest
import timm
import torch
from torch import nn

from captum_vit.kernels import perturbation_batch
from captum_vit.metrics import CHEFER_FRACTIONS, perturbation_curves
from captum_vit.metrics._common import model_normalization, normalize

BATCH, ROUNDS = 8, 5


def shipped_vit() -> nn.Module:
    """The shipped ViT, or an untrained model of its architecture (timing does not depend on weights)."""
    try:
        from captum_vit.models.pretrained import load_pretrained

        return load_pretrained("synthetic-vit")
    except (ValueError, FileNotFoundError):
        m = timm.create_model(
            "vit_tiny_patch16_224", pretrained=False, num_classes=5, img_size=64, patch_size=8, embed_dim=128,
            depth=6, num_heads=4,
        )  # fmt: skip
        m.pretrained_cfg = dict(m.pretrained_cfg, mean=(0.5,) * 3, std=(0.22,) * 3, input_size=(3, 64, 64))
        return m.eval()


@torch.no_grad()
def per_step_loop(model: nn.Module, images: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The reference loop: one perturbation and one forward pass per removal level."""
    mean, std = model_normalization(model)
    probs = []
    for p in (0.0, *CHEFER_FRACTIONS):
        level = perturbation_batch(images, scores, [p])[0]
        logits = model(normalize(level, mean, std))
        probs.append(logits.softmax(1).gather(1, labels[:, None])[:, 0])
    return torch.stack(probs, 1)


@pytest.mark.benchmark(group="perturbation-eval")
def test_batched_perturbation_is_3x_faster_than_loop(benchmark: pytest.FixtureRequest) -> None:
    model = shipped_vit()
    size = int(model.pretrained_cfg.get("input_size", (3, 64, 64))[-1])
    g = torch.Generator().manual_seed(0)
    images = torch.rand(BATCH, 3, size, size, generator=g)
    scores = torch.rand(BATCH, size, size, generator=g)
    labels = torch.randint(0, 5, (BATCH,), generator=g)

    def batched() -> torch.Tensor:
        return perturbation_curves(model, images, scores, labels).probability

    # Same numbers from both paths, then interleaved timing.
    torch.testing.assert_close(batched(), per_step_loop(model, images, scores, labels), rtol=1e-4, atol=1e-5)
    ratios = []
    for _ in range(ROUNDS):
        t0 = time.perf_counter()
        per_step_loop(model, images, scores, labels)
        t1 = time.perf_counter()
        batched()
        t2 = time.perf_counter()
        ratios.append((t1 - t0) / (t2 - t1))
    benchmark.pedantic(batched, rounds=ROUNDS, iterations=1)
    speedup = statistics.median(ratios)
    benchmark.extra_info.update(speedup=round(speedup, 2), batch=BATCH, levels=len(CHEFER_FRACTIONS) + 1)
    print(f"\nbatched vs per-step loop: {speedup:.2f}x (median of {ROUNDS} interleaved rounds, batch {BATCH})")
    assert speedup >= 3.0, f"batched perturbation evaluation only {speedup:.2f}x faster than the per-step loop"
