"""attention_graph_centralities: reference vs a per-layer loop; Triton vs reference; MUTEX parity."""

from __future__ import annotations

import pytest
import torch

from captum_vit.kernels import attention_graph_centralities
from captum_vit.kernels.graph_pruning import attention_graph_centralities_reference
from captum_vit.testing import assert_close

FUSIONS = ["mean", "max", "min", "sum"]


def _attn(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (3 * torch.randn(*shape, generator=g)).softmax(-1)


def _loop_reference(attn: torch.Tensor, fusion: str, min_cut: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Spec, one layer and example at a time: fuse heads, prune below min_cut × max, degrees."""
    n_layers, b, heads, n, _ = attn.shape
    ins, outs = torch.zeros(n_layers, b, n), torch.zeros(n_layers, b, n)
    for layer in range(n_layers):
        for i in range(b):
            stack = attn[layer, i]
            fused = {"mean": stack.mean(0), "max": stack.max(0).values, "min": stack.min(0).values, "sum": stack.sum(0)}
            a = fused[fusion]
            a = a * (a >= min_cut * a.max())
            ins[layer, i], outs[layer, i] = a.sum(0), a.sum(1)
    return ins, outs


@pytest.mark.parametrize("fusion", FUSIONS)
def test_reference_matches_loop(fusion: str) -> None:
    attn = _attn((3, 2, 3, 9, 9), seed=0)
    for min_cut in (0.0, 0.3):
        got = attention_graph_centralities(attn, fusion, min_cut, impl="reference")
        for g, e in zip(got, _loop_reference(attn, fusion, min_cut)):
            assert_close(g, e, "fp32")


def test_min_cut_one_keeps_only_the_largest_edge() -> None:
    attn = _attn((1, 1, 2, 5, 5), seed=1)
    in_deg, out_deg = attention_graph_centralities(attn, "max", 1.0, impl="reference")
    assert int((in_deg > 0).sum()) == 1 and int((out_deg > 0).sum()) == 1
    assert_close(in_deg.sum(), attn.amax(2).max(), "fp32")


def test_reference_gradcheck_float64() -> None:
    # Differentiable away from the threshold (the pruning pattern is piecewise constant).
    attn = _attn((2, 1, 2, 4, 4), seed=2).double().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a: attention_graph_centralities_reference(a, "mean", 0.05), (attn,))


# (L, B, heads, N): N below, across and not a multiple of the 32-row tile / 64-column chunk.
SHAPES = [(2, 1, 3, 17), (1, 3, 2, 70), (3, 2, 1, 33)]


@pytest.mark.parametrize("fusion", FUSIONS)
@pytest.mark.parametrize("index", range(len(SHAPES)))
def test_triton_matches_reference(triton_device: torch.device, fusion: str, index: int) -> None:
    n_layers, b, heads, n = SHAPES[index]
    attn = _attn((n_layers, b, heads, n, n), seed=index).to(triton_device)
    min_cut = [0.01, 0.2, 0.0][index]
    got = attention_graph_centralities(attn, fusion, min_cut, impl="triton")
    expected = attention_graph_centralities(attn, fusion, min_cut, impl="reference")
    for g, e, name in zip(got, expected, ("in", "out")):
        assert_close(g, e, "kernel", f"{name}-degree {SHAPES[index]} {fusion}")


def test_triton_reads_strided_views(triton_device: torch.device) -> None:
    """MUTEX passes ``attn[start:, :, :, p:, p:]``: a non-contiguous view, read without a copy."""
    full = _attn((3, 2, 2, 22, 22), seed=4).to(triton_device)
    view = full[1:, :, :, 5:, 5:]
    assert not view.is_contiguous()
    got = attention_graph_centralities(view, "max", 0.1, impl="triton")
    expected = attention_graph_centralities(view.contiguous(), "max", 0.1, impl="reference")
    for g, e in zip(got, expected):
        assert_close(g, e, "kernel")


def test_triton_matches_reference_fp16(triton_device: torch.device) -> None:
    attn = _attn((2, 2, 3, 21, 21), seed=5).half().to(triton_device)
    for fusion in ("mean", "sum"):
        got = attention_graph_centralities(attn, fusion, 0.05, impl="triton")
        expected = attention_graph_centralities(attn, fusion, 0.05, impl="reference")
        assert got[0].dtype == torch.float16
        for g, e in zip(got, expected):
            assert_close(g, e, "kernel_fp16")


def test_tiny_vit_mutex_maps_identical(triton_device: torch.device) -> None:
    from captum_vit.attr.mutex import MUTEX
    from captum_vit.testing import make_vit

    model = make_vit("cls").to(triton_device)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)).to(triton_device)
    maps = [MUTEX(model, impl=impl).attribute(x, target=1, return_patch_map=True) for impl in ("reference", "triton")]
    assert_close(maps[1], maps[0], "kernel", "MUTEX map")


def test_bad_inputs_raise() -> None:
    attn = _attn((1, 1, 2, 4, 4), seed=0)
    with pytest.raises(ValueError, match="attentions"):
        attention_graph_centralities(attn[0])
    with pytest.raises(ValueError, match="head_fusion"):
        attention_graph_centralities(attn, "median")
    with pytest.raises(ValueError, match="min_cut"):
        attention_graph_centralities(attn, "sum", 1.5)
    with pytest.raises(ValueError, match="not differentiable"):
        attention_graph_centralities(attn.requires_grad_(True), impl="triton")
