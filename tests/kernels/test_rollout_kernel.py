"""rollout_step / attention_rollout and their row forms rollout_row_step /
attention_rollout_rows: reference vs a loop or the matrix form; Triton vs reference; tiny-ViT
parity."""

from __future__ import annotations

import pytest
import torch

from captum_vit.kernels import attention_rollout, rollout_step
from captum_vit.kernels.rollout import (
    attention_rollout_rows,
    rollout_row_step,
    rollout_row_step_reference,
    rollout_step_reference,
)
from captum_vit.testing import assert_close


def _fused(b: int, n: int, seed: int) -> torch.Tensor:
    return torch.rand(b, n, n, generator=torch.Generator().manual_seed(seed)).softmax(-1)


def test_reference_matches_loop() -> None:
    a = _fused(2, 5, seed=0)
    out = rollout_step(a, impl="reference")
    for i in range(2):
        for r in range(5):
            row = a[i, r].clone()
            row[r] += 1.0
            assert_close(out[i, r], row / row.sum(), "fp32")


def test_reference_gradcheck_float64() -> None:
    a = _fused(2, 4, seed=1).double().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: rollout_step_reference(t, 0.0), (a,))


# (B, N): N not a power of two, below / above the 16-row tile, batch 1 and > 1.
SHAPES = [(1, 5), (3, 17), (2, 50)]


@pytest.mark.parametrize("discard_ratio", [0.0, 0.6])
@pytest.mark.parametrize("index", range(len(SHAPES)))
def test_triton_matches_reference(triton_device: torch.device, index: int, discard_ratio: float) -> None:
    a = _fused(*SHAPES[index], seed=index).to(triton_device)
    got = rollout_step(a, discard_ratio, impl="triton")
    assert_close(got, rollout_step(a, discard_ratio, impl="reference"), "kernel", f"{SHAPES[index]}")


def test_triton_matches_reference_fp16(triton_device: torch.device) -> None:
    a = _fused(2, 19, seed=3).half().to(triton_device)
    got = rollout_step(a, impl="triton")
    assert got.dtype == torch.float16
    # The reference computes in fp16 here; both round to fp16 at the end.
    assert_close(got, rollout_step_reference(a.float(), 0.0).half(), "kernel_fp16")


def test_tiny_vit_rollout_identical(triton_device: torch.device) -> None:
    from captum_vit.models.hooks import record_attention
    from captum_vit.testing import make_vit

    model = make_vit("reg").to(triton_device)  # 5 prefix tokens: N = 21
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)).to(triton_device)
    with torch.no_grad(), record_attention(model, detach=True) as rec:
        model(x)
    attn = rec.stacked()
    for fusion, discard in (("mean", 0.0), ("max", 0.9)):
        ref = attention_rollout(attn, 0, fusion, discard, impl="reference")
        assert_close(attention_rollout(attn, 0, fusion, discard, impl="triton"), ref, "kernel", fusion)


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="fused"):
        rollout_step(torch.rand(2, 3, 4))
    with pytest.raises(ValueError, match="discard_ratio"):
        rollout_step(torch.rand(1, 3, 3), 1.0)
    with pytest.raises(ValueError, match="impl"):
        rollout_step(torch.rand(1, 3, 3), impl="gpu")


def test_unnormalised_factor_reference_and_triton(triton_device: torch.device) -> None:
    a = _fused(2, 17, seed=4).to(triton_device)
    ref = rollout_step(a, impl="reference", row_normalize=False)
    assert_close(ref, a + torch.eye(17, device=a.device), "fp32")
    assert_close(rollout_step(a, impl="triton", row_normalize=False), ref, "kernel")


@pytest.mark.parametrize("kind", ["cls", "reg"])
def test_tiny_vit_method_maps_identical(triton_device: torch.device, kind: str) -> None:
    """Rollout, GAE and T-Attr maps with impl='reference' and impl='triton' (issue 8's done-when)."""
    from captum_vit.attr import AttentionRollout, GenericAttention, TransformerAttribution
    from captum_vit.testing import input_for, make_vit

    model = make_vit(kind).to(triton_device)
    x = input_for(model, batch=2).to(triton_device)
    cases = ((AttentionRollout, {"discard_ratio": 0.5}), (GenericAttention, {}), (TransformerAttribution, {}))
    for cls, opts in cases:
        ref = cls(model, impl="reference", **opts).attribute(x, target=[1, 3], return_patch_map=True)
        got = cls(model, impl="triton", **opts).attribute(x, target=[1, 3], return_patch_map=True)
        assert_close(got, ref, "kernel", cls.__name__)


def _rel(got: torch.Tensor, want: torch.Tensor) -> float:
    """Largest difference relative to the largest entry (the row form's parity measure)."""
    return float((got.double() - want.double()).abs().max() / want.double().abs().max())


@pytest.mark.parametrize("row_normalize", [True, False])
@pytest.mark.parametrize("discard_ratio", [0.0, 0.6])
@pytest.mark.parametrize("index", range(len(SHAPES)))
def test_row_step_reference_is_the_row_of_the_factor(index: int, discard_ratio: float, row_normalize: bool) -> None:
    a = _fused(*SHAPES[index], seed=index)
    rows = torch.rand(SHAPES[index], generator=torch.Generator().manual_seed(9))
    want = torch.einsum("bn,bnm->bm", rows.double(), rollout_step_reference(a.double(), discard_ratio, row_normalize))
    got = rollout_row_step_reference(rows, a, discard_ratio, row_normalize)
    assert _rel(got, want) <= 1e-6, f"{SHAPES[index]}"


@pytest.mark.parametrize("row_normalize", [True, False])
@pytest.mark.parametrize("discard_ratio", [0.0, 0.6])
@pytest.mark.parametrize("index", range(len(SHAPES)))
def test_row_triton_matches_reference(
    triton_device: torch.device, index: int, discard_ratio: float, row_normalize: bool
) -> None:
    a = _fused(*SHAPES[index], seed=index).to(triton_device)
    rows = torch.rand(SHAPES[index], generator=torch.Generator().manual_seed(9)).to(triton_device)
    got = rollout_row_step(rows, a, discard_ratio, impl="triton", row_normalize=row_normalize)
    want = rollout_row_step(rows, a, discard_ratio, impl="reference", row_normalize=row_normalize)
    assert got.shape == want.shape and _rel(got, want) <= 1e-6, f"{SHAPES[index]}"


def test_row_triton_fp16_attention(triton_device: torch.device) -> None:
    a = _fused(2, 19, seed=3).half().to(triton_device)
    rows = torch.rand(2, 19, generator=torch.Generator().manual_seed(9)).to(triton_device)
    got = rollout_row_step(rows, a, impl="triton")
    assert got.dtype == torch.float32  # accumulates in float32, as the reference
    assert _rel(got, rollout_row_step_reference(rows, a.float())) <= 1e-6


@pytest.mark.parametrize("kind", ["cls", "reg", "avg"])
def test_tiny_vit_rollout_rows_are_rows_of_the_product(triton_device: torch.device, kind: str) -> None:
    from captum_vit.models.hooks import record_attention
    from captum_vit.testing import make_vit

    model = make_vit(kind, depth=4).to(triton_device)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)).to(triton_device)
    with torch.no_grad(), record_attention(model, detach=True) as rec:
        model(x)
    attn = rec.stacked()
    rows = torch.rand(2, attn.shape[-1], generator=torch.Generator().manual_seed(1)).to(triton_device)
    for start, fusion, discard, normalize in ((0, "mean", 0.0, True), (1, "max", 0.9, True), (0, "mean", 0.0, False)):
        full = torch.einsum("bn,bnm->bm", rows, attention_rollout(attn, start, fusion, discard, "reference", normalize))
        for impl in ("reference", "triton"):
            got = attention_rollout_rows(attn, rows, start, fusion, discard, impl, normalize)
            assert _rel(got, full) <= 1e-6, f"{impl} start={start} {fusion} discard={discard} normalize={normalize}"


def test_row_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="rows must be a \\(2, 3\\)"):
        rollout_row_step(torch.rand(2, 4), torch.rand(2, 3, 3))
    with pytest.raises(ValueError, match="fused"):
        rollout_row_step(torch.rand(2, 3), torch.rand(2, 3, 4))
    with pytest.raises(ValueError, match="discard_ratio"):
        rollout_row_step(torch.rand(1, 3), torch.rand(1, 3, 3), 1.0)
    with pytest.raises(ValueError, match="start_layer"):
        attention_rollout_rows(torch.rand(2, 1, 1, 3, 3), torch.rand(1, 3), start_layer=2)
