"""Fused kernels vs the unfused torch sequences they replace (pytest-benchmark).

    python -m pytest benchmarks/speed/test_bench_kernels.py --benchmark-only -p no:xdist
    python benchmarks/speed/test_bench_kernels.py          # the memory-traffic table (no timing)

CPU: the reference (the unfused torch sequence, the spec) against a leaner torch variant of the
same computation, at reduced sizes. Triton cannot be timed on a CPU (there it only runs in its
interpreter, a correctness tool), so the Triton-vs-reference benchmarks run only where CUDA
exists, at ViT-B/16 sizes (224 x 224, 14 x 14 patches, N = 197, 12 layers x 12 heads, batch 32),
and skip elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor

from captum_vit.kernels import apply_mask, attention_graph_centralities, perturbation_batch, rollout_step
from captum_vit.kernels.perturbation import pixel_ranks, removal_counts

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(
    not CUDA, reason="Triton speed needs a CUDA GPU; on CPU Triton runs only in its (correctness) interpreter"
)
FRACTIONS = [i / 10 for i in range(1, 10)]  # Chefer et al.'s 9 removal steps (docs/methods.md §7.1)
MEAN, STD = [0.5] * 3, [0.5] * 3


def _inputs(kernel: str, device: str, batch: int) -> tuple[Any, ...]:
    g = torch.Generator().manual_seed(0)
    if kernel == "apply_mask":
        return (
            torch.rand(batch, 3, 224, 224, generator=g).to(device),
            torch.rand(batch, 14, 14, generator=g).to(device),
        )
    if kernel == "perturbation_batch":
        return (
            torch.rand(batch, 3, 224, 224, generator=g).to(device),
            torch.rand(batch, 224, 224, generator=g).to(device),
        )
    if kernel == "attention_graph_centralities":
        return ((torch.randn(12, batch, 12, 197, 197, generator=g) * 3).softmax(-1).to(device),)
    return (torch.rand(batch, 197, 197, generator=g).softmax(-1).to(device),)


def _dispatch(kernel: str, impl: str) -> Callable[..., Any]:
    fns: dict[str, Callable[..., Any]] = {
        "apply_mask": lambda x, m: apply_mask(x, m, 0.0, MEAN, STD, impl=impl),
        "perturbation_batch": lambda x, s: perturbation_batch(x, s, FRACTIONS, impl=impl),
        "attention_graph_centralities": lambda a: attention_graph_centralities(a, "sum", 0.01, impl=impl),
        "rollout_step": lambda a: rollout_step(a, impl=impl),
    }
    return fns[kernel]


# Leaner torch variants (CPU comparison only): fewer temporaries, same result.
def _apply_mask_lerp(x: Tensor, m: Tensor) -> Tensor:
    full = torch.nn.functional.interpolate(m.unsqueeze(1), size=x.shape[-2:], mode="bilinear", align_corners=False)
    return torch.lerp(torch.zeros((), dtype=x.dtype), x, full).sub_(0.5).div_(0.5)


def _perturbation_masked_fill(x: Tensor, s: Tensor) -> Tensor:
    ranks = pixel_ranks(s).view(x.shape[0], 1, *x.shape[-2:])
    out = x.unsqueeze(0).repeat(len(FRACTIONS), 1, 1, 1, 1)
    for k, count in enumerate(removal_counts(FRACTIONS, x.shape[-2] * x.shape[-1])):
        out[k].masked_fill_(ranks < count, 0.0)
    return out


def _graph_inplace(a: Tensor) -> tuple[Tensor, Tensor]:
    fused = a.sum(dim=2)
    fused.mul_(fused >= 0.01 * fused.amax(dim=(-2, -1), keepdim=True))
    return fused.sum(dim=-2), fused.sum(dim=-1)


def _rollout_inplace(a: Tensor) -> Tensor:
    out = a.clone()
    out.diagonal(dim1=-2, dim2=-1).add_(1.0)
    return out.div_(out.sum(dim=-1, keepdim=True))


VARIANTS = {
    "apply_mask": _apply_mask_lerp,
    "perturbation_batch": _perturbation_masked_fill,
    "attention_graph_centralities": _graph_inplace,
    "rollout_step": _rollout_inplace,
}
CPU_BATCH = {"apply_mask": 4, "perturbation_batch": 2, "attention_graph_centralities": 1, "rollout_step": 8}


@pytest.mark.parametrize("variant", ["reference", "lean_torch"])
@pytest.mark.parametrize("kernel", list(VARIANTS))
def test_cpu(benchmark: Any, kernel: str, variant: str) -> None:
    torch.set_num_threads(2)
    args = _inputs(kernel, "cpu", CPU_BATCH[kernel])
    benchmark.group = f"{kernel} cpu batch={CPU_BATCH[kernel]}"
    fn = _dispatch(kernel, "reference") if variant == "reference" else VARIANTS[kernel]
    out = benchmark(fn, *args)
    expected = _dispatch(kernel, "reference")(*args)
    for o, e in zip(
        out if isinstance(out, tuple) else (out,), expected if isinstance(expected, tuple) else (expected,)
    ):
        torch.testing.assert_close(o, e, rtol=1e-4, atol=1e-5)


@needs_cuda
@pytest.mark.parametrize("impl", ["reference", "triton"])
@pytest.mark.parametrize("kernel", list(VARIANTS))
def test_gpu(benchmark: Any, kernel: str, impl: str) -> None:
    args = _inputs(kernel, "cuda", 32)
    fn = _dispatch(kernel, impl)
    fn(*args)  # compile / warm up

    def run() -> Any:
        out = fn(*args)
        torch.cuda.synchronize()
        return out

    benchmark.group = f"{kernel} cuda ViT-B batch=32"
    benchmark(run)


# ---------------------------------------------------------------- memory traffic (bytes per call)
def memory_traffic(batch: int = 32) -> dict[str, tuple[float, float]]:
    """``{kernel: (unfused_bytes, fused_bytes)}`` at ViT-B/16, 224 px, fp32, from the shapes.

    Counts every tensor each op of the reference reads and writes (DRAM traffic if nothing were
    cached); the fused count is what the Triton kernels read and write. The ranking sort in
    perturbation_batch and rollout's discard top-k are the same torch ops on both paths and are
    left out of both.
    """
    f, b = 4, batch
    img, pix, coarse = b * 3 * 224 * 224 * f, b * 224 * 224 * f, b * 14 * 14 * f
    k, ranks, boolmask = len(FRACTIONS), b * 224 * 224 * 8, b * 224 * 224
    attn, fused, fmask = 12 * b * 12 * 197 * 197 * f, 12 * b * 197 * 197 * f, 12 * b * 197 * 197
    rmat = b * 197 * 197 * f
    mask_unfused = (
        (coarse + pix)  # interpolate
        + (img + pix + img)  # images * M
        + (pix + pix)  # 1 - M
        + (pix + img)  # (1 - M) * baseline (broadcast to C channels)
        + 3 * img  # add
        + 2 * img  # - mean
        + 2 * img  # / std
    )
    mask_fused = img + coarse + img
    pert_unfused = k * ((ranks + boolmask) + (boolmask + img + img)) + 2 * k * img  # compare, where; stack
    pert_fused = img + ranks + k * img
    graph_unfused = (attn + fused) + fused + (fused + fmask) + (fmask + 2 * fused) + 2 * fused
    graph_fused = attn + fused + 2 * fused  # fuse+write once; read twice (row sums, column sums)
    roll_unfused = 2 * rmat + rmat + 2 * rmat  # + I, row sums, divide
    roll_fused = 2 * rmat + rmat  # two passes over each row tile (the second mostly from cache), one write
    return {
        "apply_mask (fwd)": (mask_unfused, mask_fused),
        "perturbation_batch (K=9)": (pert_unfused, pert_fused),
        "attention_graph_centralities": (graph_unfused, graph_fused),
        "rollout_step": (roll_unfused, roll_fused),
    }


def test_memory_traffic_model_is_consistent() -> None:
    table = memory_traffic()
    assert all(unfused > fused > 0 for unfused, fused in table.values())
    # The fused apply_mask reads the images and writes the model input once each (+ the mask).
    assert table["apply_mask (fwd)"][1] == 2 * 32 * 3 * 224 * 224 * 4 + 32 * 14 * 14 * 4


if __name__ == "__main__":
    print("| kernel | unfused torch (MB) | fused Triton (MB) | ratio |\n|---|---|---|---|")
    for name, (unfused, fused) in memory_traffic().items():
        print(f"| {name} | {unfused / 1e6:.1f} | {fused / 1e6:.1f} | {unfused / fused:.2f}x |")
