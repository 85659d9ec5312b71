"""perturbation_batch: reference vs a per-pixel loop; Triton vs reference."""

from __future__ import annotations

import pytest
import torch

from captum_vit.kernels import perturbation_batch
from captum_vit.testing import assert_close


def _loop_reference(
    images: torch.Tensor, scores: torch.Tensor, fractions: list[float], baseline: torch.Tensor, first: bool
) -> torch.Tensor:
    """Straightforward spec: per image, order pixels by (score, then flat index) and blank the first k."""
    k_imgs, (b, _, h, w) = [], images.shape
    for p in fractions:
        out = images.clone()
        for i in range(b):
            flat = scores[i].reshape(-1).tolist()
            sign = -1.0 if first else 1.0
            order = sorted(range(h * w), key=lambda j, flat=flat, sign=sign: (sign * flat[j], j))
            for j in order[: int(round(p * h * w))]:
                out[i, :, j // w, j % w] = baseline[i, :, j // w, j % w]
        k_imgs.append(out)
    return torch.stack(k_imgs)


def _case(b: int, c: int, h: int, w: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    # Few distinct score values, so ties (patch-constant maps) are exercised.
    return torch.rand(b, c, h, w, generator=g), torch.randint(0, 6, (b, h, w), generator=g).float()


@pytest.mark.parametrize("most_relevant_first", [True, False])
def test_reference_matches_pixel_loop(most_relevant_first: bool) -> None:
    x, s = _case(2, 3, 5, 7, seed=0)
    base = torch.rand(3)
    fractions = [0.0, 0.1, 0.5, 0.77, 1.0]
    out = perturbation_batch(x, s, fractions, base, most_relevant_first, impl="reference")
    expected = _loop_reference(x, s, fractions, base.view(1, 3, 1, 1).expand_as(x), most_relevant_first)
    assert_close(out, expected, "exact")


def test_sets_are_nested_and_counts_exact() -> None:
    x, s = _case(3, 2, 9, 11, seed=1)
    x = x + 1.0  # never equal to the 0 baseline
    out = perturbation_batch(x, s, torch.linspace(0, 1, 11), impl="reference")
    removed = (out == 0).all(dim=2)  # (K, B, H, W)
    assert removed.sum(dim=(2, 3)).tolist() == [[round(p * 99)] * 3 for p in torch.linspace(0, 1, 11).tolist()]
    assert bool((removed[:-1] <= removed[1:]).all())


# (B, C, H, W): odd sizes with partial blocks, batch 1 and > 1, one image over 256 pixels.
SHAPES = [(1, 3, 7, 9), (3, 2, 16, 17), (2, 1, 19, 23)]


@pytest.mark.parametrize("index", range(len(SHAPES)))
def test_triton_matches_reference(triton_device: torch.device, index: int) -> None:
    b, c, h, w = SHAPES[index]
    x, s = _case(b, c, h, w, seed=index)
    g = torch.Generator().manual_seed(10 + index)
    base = [0.5, torch.rand(c, generator=g), torch.rand(b, c, h, w, generator=g)][index]
    x, s = x.to(triton_device), s.to(triton_device)
    base = base.to(triton_device) if isinstance(base, torch.Tensor) else base
    for first in (True, False):
        args = (x, s, [0.0, 0.05, 0.3, 0.9, 1.0], base, first)
        assert_close(perturbation_batch(*args, impl="triton"), perturbation_batch(*args, impl="reference"), "exact")


def test_triton_matches_reference_fp16(triton_device: torch.device) -> None:
    x, s = _case(2, 3, 10, 13, seed=4)
    x, s = x.half().to(triton_device), s.to(triton_device)
    args = (x, s, torch.tensor([0.2, 0.6]), torch.tensor([0.1, 0.2, 0.3]))
    out = perturbation_batch(*args, impl="triton")
    assert out.dtype == torch.float16
    assert_close(out, perturbation_batch(*args, impl="reference"), "exact")


def test_bad_inputs_raise() -> None:
    x, s = _case(2, 3, 4, 4, seed=0)
    with pytest.raises(ValueError, match="scores"):
        perturbation_batch(x, s[:, :3], [0.5])
    with pytest.raises(ValueError, match="fractions"):
        perturbation_batch(x, s, [0.5, 1.5])
    with pytest.raises(ValueError, match="fractions"):
        perturbation_batch(x, s, [])
    with pytest.raises(ValueError, match="baseline"):
        perturbation_batch(x, s, [0.5], baseline=torch.zeros(2))
    with pytest.raises(ValueError, match="not differentiable"):
        perturbation_batch(x.requires_grad_(True), s, [0.5], impl="triton")
