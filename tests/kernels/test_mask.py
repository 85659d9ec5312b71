"""apply_mask: reference vs analytic answers and gradcheck; Triton vs reference, forward and backward."""

from __future__ import annotations

import pytest
import torch

from captum_vit.kernels import apply_mask
from captum_vit.kernels.mask import apply_mask_reference
from captum_vit.testing import assert_close

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]

# (B, C, H, W, h, w): odd sizes that leave partial pixel blocks, non-integer scales,
# a full-resolution mask, batch 1 and > 1, and one image larger than a block of 256 pixels.
SHAPES = [(1, 3, 17, 23, 3, 5), (2, 3, 32, 32, 4, 4), (3, 1, 9, 9, 9, 9), (2, 2, 20, 12, 3, 2), (1, 3, 24, 40, 3, 5)]


def _baseline(kind: str, b: int, c: int, h: int, w: int, g: torch.Generator) -> float | torch.Tensor:
    if kind == "float":
        return 0.3
    if kind == "channel":
        return torch.rand(c, generator=g)
    return torch.rand(b, c, h, w, generator=g)


def _case(shape: tuple[int, ...], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Generator]:
    b, c, hh, ww, h, w = shape
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, c, hh, ww, generator=g), torch.rand(b, h, w, generator=g), g


def test_nearest_integer_scale_is_patch_replication() -> None:
    x, m, _ = _case((2, 3, 12, 16, 3, 4))
    out = apply_mask(x, m, baseline=0.25, mean=MEAN, std=STD, mode="nearest", impl="reference")
    full = m.repeat_interleave(4, dim=1).repeat_interleave(4, dim=2).unsqueeze(1)
    expected = (x * full + (1 - full) * 0.25 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    assert_close(out, expected, "fp32")


def test_bilinear_matches_interpolate_and_extreme_masks() -> None:
    x, m, _ = _case((2, 3, 16, 16, 4, 4))
    full = torch.nn.functional.interpolate(m.unsqueeze(1), size=(16, 16), mode="bilinear", align_corners=False)
    assert_close(apply_mask(x, m, impl="reference"), x * full, "fp32")
    base = torch.rand(2, 3, 16, 16)
    assert_close(apply_mask(x, torch.zeros(2, 4, 4), base, impl="reference"), base, "exact")
    assert_close(apply_mask(x, torch.ones(2, 1, 4, 4), base, impl="reference"), x, "exact")


def test_reference_gradcheck_float64() -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.rand(2, 2, 5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    m = torch.rand(2, 2, 2, generator=g, dtype=torch.float64, requires_grad=True)
    base = torch.rand(2, generator=g, dtype=torch.float64, requires_grad=True)
    for mode in ("bilinear", "nearest"):
        assert torch.autograd.gradcheck(
            lambda x, m, b, mode=mode: apply_mask_reference(x, m, b, [0.1, 0.2], [0.5, 2.0], mode),
            (x, m, base),
            fast_mode=True,  # random-projection check: the full Jacobian costs seconds here
        )


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
@pytest.mark.parametrize("index", range(len(SHAPES)))
def test_triton_matches_reference(triton_device: torch.device, mode: str, index: int) -> None:
    shape = SHAPES[index]
    x, m, g = _case(shape, seed=index)
    base = _baseline(["float", "channel", "tensor"][index % 3], shape[0], shape[1], shape[2], shape[3], g)
    norm = {"mean": MEAN[: shape[1]], "std": STD[: shape[1]]} if index % 2 == 0 else {}
    x, m = x.to(triton_device), m.to(triton_device)
    base = base.to(triton_device) if isinstance(base, torch.Tensor) else base
    outs, grads = [], []
    for impl in ("reference", "triton"):
        xi, mi = x.clone().requires_grad_(True), m.clone().requires_grad_(True)
        out = apply_mask(xi, mi, base, mode=mode, impl=impl, **norm)
        grad_out = torch.linspace(-1, 1, out.numel(), device=out.device).view_as(out)
        outs.append(out.detach())
        grads.append(torch.autograd.grad(out, (xi, mi), grad_out))
    assert_close(outs[1], outs[0], "kernel", f"forward {shape} {mode}")
    assert_close(grads[1][0], grads[0][0], "kernel", f"d/dimages {shape} {mode}")
    assert_close(grads[1][1], grads[0][1], "kernel", f"d/dmask {shape} {mode}")


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
def test_triton_matches_reference_fp16(triton_device: torch.device, mode: str) -> None:
    x, m, _ = _case((2, 3, 17, 23, 3, 5), seed=7)
    x, m = x.half().to(triton_device), m.half().to(triton_device)
    base = torch.tensor([0.1, 0.5, 0.9], device=triton_device)
    res = []
    for impl in ("reference", "triton"):
        mi = m.clone().requires_grad_(True)
        out = apply_mask(x, mi, base, MEAN, STD, mode=mode, impl=impl)
        assert out.dtype == torch.float16
        res.append((out.detach(), *torch.autograd.grad(out.float().square().sum(), mi)))
    assert_close(res[1][0], res[0][0], "kernel_fp16", "forward fp16")
    # The mask gradient sums ~100 fp16 upstream gradients per coarse cell: compare relative to its scale.
    scale = res[0][1].abs().max()
    assert_close(res[1][1] / scale, res[0][1] / scale, "kernel_fp16", "d/dmask fp16")


def test_tiny_vit_ltx_masked_input_and_gradient(triton_device: torch.device) -> None:
    """LTX's step (docs/methods.md §2.2): explainee(normalise(x ⊙ upsample(sigmoid(logits)))) → CE;
    the masked input and the gradient reaching the mask logits agree across impls."""
    from captum_vit.testing import make_vit

    model = make_vit("cls").to(triton_device)
    g = torch.Generator().manual_seed(5)
    x = torch.rand(2, 3, 32, 32, generator=g).to(triton_device)
    logits = torch.randn(2, 4, 4, generator=g).to(triton_device)
    res = []
    for impl in ("reference", "triton"):
        lg = logits.clone().requires_grad_(True)
        masked = apply_mask(x, torch.sigmoid(lg), 0.0, [0.5] * 3, [0.5] * 3, impl=impl)
        loss = torch.nn.functional.cross_entropy(model(masked), torch.tensor([1, 3], device=triton_device))
        res.append((masked.detach(), torch.autograd.grad(loss, lg)[0]))
    assert_close(res[1][0], res[0][0], "kernel", "masked input")
    assert_close(res[1][1], res[0][1], "kernel", "mask-logit gradient")


def test_bad_inputs_raise() -> None:
    x = torch.rand(2, 3, 8, 8)
    with pytest.raises(ValueError, match="mask"):
        apply_mask(x, torch.rand(3, 2, 2))
    with pytest.raises(ValueError, match="mode"):
        apply_mask(x, torch.rand(2, 2, 2), mode="bicubic")
    with pytest.raises(ValueError, match="baseline"):
        apply_mask(x, torch.rand(2, 2, 2), baseline=torch.rand(4))
    with pytest.raises(ValueError, match="mean"):
        apply_mask(x, torch.rand(2, 2, 2), mean=[0.5, 0.5])
    with pytest.raises(ValueError, match="std"):
        apply_mask(x, torch.rand(2, 2, 2), std=[1.0, 0.0, 1.0])
    with pytest.raises(ValueError, match="impl"):
        apply_mask(x, torch.rand(2, 2, 2), impl="cuda")
    with pytest.raises(TypeError, match="mask"):
        apply_mask(x, [[0.5]])  # type: ignore[arg-type]


def test_baseline_gradient_needs_reference() -> None:
    x, m = torch.rand(1, 3, 8, 8), torch.rand(1, 2, 2)
    base = torch.rand(3, requires_grad=True)
    out = apply_mask(x, m, base)  # auto: a baseline needing grad stays on the reference
    (grad,) = torch.autograd.grad(out.sum(), base)
    full = torch.nn.functional.interpolate(m.unsqueeze(1), size=(8, 8), mode="bilinear", align_corners=False)
    assert_close(grad, (1 - full).sum().expand(3), "fp32_loose")
    with pytest.raises(ValueError, match="baseline"):
        apply_mask(x, m, base, impl="triton")
