"""Batched perturbation evaluation vs the same computation as per-step loops.

    python -m pytest benchmarks/speed/test_bench_metrics.py -p no:xdist --benchmark-only -s

The batched path (:func:`captum_vit.metrics.perturbation_curves`) builds all ten removal levels
(x = 0 and 10-90 %) with one :func:`captum_vit.kernels.perturbation_batch` call and scores them
in one forward pass. Two loops do exactly the same work and give the same numbers:

* ``per_step_loop``: one perturbation and one forward pass of the whole batch per level
  (Chefer's evaluation script);
* ``per_image_loop``: the same, one image at a time (LTX's ``infer_perturbation_tests``).

All three are timed in the same run, interleaved round by round so machine load affects them
alike, for evaluation batches of 1, 8 and 32 images, with one intra-op thread by default
(``CAPTUM_VIT_BENCH_THREADS`` sets another count). The median speed-ups are stored in the
benchmark's ``extra_info``.

What to expect: batching removes per-call overhead, not arithmetic. On a GPU, where a small
ViT's forward pass is launch-bound, that is most of the cost. On a CPU the shipped ViT's
forward pass reaches full throughput from about 4-8 images per pass, so a per-step loop over
a batch of 8 or more costs about as much as the batched pass (README, "Benchmarks"). The 3x
target of issue 3 is therefore asserted only on CUDA; on CPU the test asserts that batching is
not slower than the per-step loop beyond timing noise (25 %).
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable

import pytest
import timm
import torch
from torch import Tensor, nn

from captum_vit.kernels import perturbation_batch
from captum_vit.metrics import CHEFER_FRACTIONS, perturbation_curves
from captum_vit.models.preprocess import model_normalization, normalize

ROUNDS = 5
THREADS = int(os.environ.get("CAPTUM_VIT_BENCH_THREADS", "1"))


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
def per_step_loop(model: nn.Module, images: Tensor, scores: Tensor, labels: Tensor) -> Tensor:
    """The reference loop: one perturbation and one forward pass per removal level."""
    mean, std = model_normalization(model)
    probs = []
    for p in (0.0, *CHEFER_FRACTIONS):
        level = perturbation_batch(images, scores, [p])[0]
        logits = model(normalize(level, mean, std))
        probs.append(logits.softmax(1).gather(1, labels[:, None])[:, 0])
    return torch.stack(probs, 1)


def per_image_loop(model: nn.Module, images: Tensor, scores: Tensor, labels: Tensor) -> Tensor:
    return torch.cat(
        [per_step_loop(model, images[i : i + 1], scores[i : i + 1], labels[i : i + 1]) for i in range(len(images))]
    )


def _median_speedups(batched: Callable[[], object], loops: dict[str, Callable[[], object]]) -> dict[str, float]:
    ratios: dict[str, list[float]] = {k: [] for k in loops}
    for _ in range(ROUNDS):
        t0 = time.perf_counter()
        batched()
        t_batched = time.perf_counter() - t0
        for name, fn in loops.items():
            t0 = time.perf_counter()
            fn()
            ratios[name].append((time.perf_counter() - t0) / t_batched)
    return {k: statistics.median(v) for k, v in ratios.items()}


@pytest.mark.benchmark(group="perturbation-eval")
@pytest.mark.parametrize("batch", [1, 8, 32])
def test_batched_perturbation_vs_loops(benchmark: pytest.FixtureRequest, batch: int) -> None:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        model = shipped_vit().to(device)
        size = int(model.pretrained_cfg.get("input_size", (3, 64, 64))[-1])
        g = torch.Generator().manual_seed(0)
        images = torch.rand(batch, 3, size, size, generator=g).to(device)
        scores = torch.rand(batch, size, size, generator=g).to(device)
        labels = torch.randint(0, 5, (batch,), generator=g).to(device)

        def batched() -> Tensor:
            return perturbation_curves(model, images, scores, labels).probability

        expected = batched()
        for loop in (per_step_loop, per_image_loop):  # the same numbers from every path
            torch.testing.assert_close(expected, loop(model, images, scores, labels).cpu(), rtol=1e-4, atol=1e-5)
        speedups = _median_speedups(
            batched,
            {
                "per_step": lambda: per_step_loop(model, images, scores, labels),
                "per_image": lambda: per_image_loop(model, images, scores, labels),
            },
        )
        benchmark.pedantic(batched, rounds=ROUNDS, iterations=1)
    finally:
        torch.set_num_threads(threads)
    benchmark.extra_info.update({f"speedup_vs_{k}": round(v, 2) for k, v in speedups.items()})
    benchmark.extra_info.update(batch=batch, levels=len(CHEFER_FRACTIONS) + 1, device=str(device))
    print(
        f"\n[{device}, {THREADS} thread(s), batch {batch}] batched vs per-step loop {speedups['per_step']:.2f}x, "
        f"vs per-image loop {speedups['per_image']:.2f}x (median of {ROUNDS} interleaved rounds)"
    )
    if device.type == "cuda" and batch >= 8:
        assert speedups["per_step"] >= 3.0, f"batched only {speedups['per_step']:.2f}x faster than the loop"
    else:
        assert speedups["per_step"] >= 0.75, f"batched is slower than the loop ({speedups['per_step']:.2f}x)"
