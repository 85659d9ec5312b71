"""Attention probabilities and gradients recomputed beside timm's fused kernel (issue 19),
checked against autograd on timm's explicit attention path."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import timm
import torch
from torch import Tensor, nn

import captum_vit.models.recomputed_attention as ra
from captum_vit.models import ViTAdapter
from captum_vit.models.hooks import record_attention
from captum_vit.models.recomputed_attention import attention_gradients, attention_reductions, recomputes_attention
from captum_vit.models.vit import probabilities

HEADS = 4


def _vit(name: str = "vit_tiny_patch16_224", **kw: Any) -> nn.Module:
    torch.manual_seed(0)
    opts: dict[str, Any] = {"depth": 3, "embed_dim": 32, "num_heads": HEADS, "img_size": 32, "patch_size": 8}
    return timm.create_model(name, pretrained=False, num_classes=5, **(opts | kw)).eval()


def _explicit(model: nn.Module, x: Tensor) -> dict[int, tuple[Tensor, Tensor]]:
    got: dict[int, tuple[Tensor, Tensor]] = {}
    with record_attention(model, on_grad=lambda i, a, g: got.__setitem__(i, (a, g))) as rec:
        out = model(x)
        assert rec.attentions[0] is not None
        torch.autograd.grad(out[:, 1].sum(), [rec.attentions[0]])
    return got


def _recomputed(
    model: nn.Module, x: Tensor, reduce: Callable[[Tensor, Tensor], Tensor]
) -> tuple[dict[int, Tensor], list[int]]:
    got: dict[int, Tensor] = {}
    order: list[int] = []

    def keep(i: int, r: Tensor) -> None:
        got[i] = r
        order.append(i)

    before = [a.fused_attn for a in ViTAdapter(model).attentions]
    with attention_gradients(ViTAdapter(model), reduce, keep) as outs:
        out = model(x)
        assert outs[0] is not None
        torch.autograd.grad(out[:, 1].sum(), [outs[0]])
    assert [a.fused_attn for a in ViTAdapter(model).attentions] == before
    return got, order


def _rel(got: Tensor, want: Tensor) -> float:
    return float((got - want).abs().max()) / max(float(want.abs().max()), 1e-30)


@pytest.mark.parametrize("slice_floats", [2**18, 2400, 7])
@pytest.mark.parametrize(
    "kw",
    [{}, {"qk_norm": True}, {"class_token": False, "global_pool": "avg"}, {"reg_tokens": 2, "no_embed_class": True}],
)
def test_recomputed_equals_explicit_autograd(
    kw: dict[str, Any], slice_floats: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every head's probabilities and their gradients equal autograd's on the explicit path,
    block by block, last block first, for any slicing (all images at once; 2 images, then 1; one row at a time)."""
    monkeypatch.setattr(ra, "SLICE_FLOATS", slice_floats)
    model = _vit(**kw)
    x = torch.rand(3, 3, 32, 32)
    want = _explicit(model, x)
    for h in range(HEADS):
        probs, order = _recomputed(model, x, lambda a, g, h=h: a[:, h])  # type: ignore[misc]
        grads, _ = _recomputed(model, x, lambda a, g, h=h: g[:, h])  # type: ignore[misc]
        assert order == [2, 1, 0]
        for i, (a, g) in want.items():
            assert _rel(probs[i], a[:, h]) <= 1e-6, (h, i)
            assert _rel(grads[i], g[:, h]) <= 1e-5, (h, i)  # fused vs explicit backward rounding


def test_user_model_untouched_and_unsupported_models() -> None:
    model = _vit()
    flags = [b.attn.fused_attn for b in model.blocks]  # type: ignore[union-attr]
    _recomputed(model, torch.rand(1, 3, 32, 32), lambda a, g: a.mean(1))
    assert [b.attn.fused_attn for b in model.blocks] == flags  # type: ignore[union-attr]
    assert not any(b.attn._forward_hooks or b.attn._forward_pre_hooks for b in model.blocks)  # type: ignore[union-attr]
    beit = timm.create_model(
        "beit_base_patch16_224",
        pretrained=False,
        num_classes=5,
        depth=2,
        embed_dim=32,
        num_heads=2,
        img_size=32,
        patch_size=8,
    ).eval()
    assert not recomputes_attention(ViTAdapter(beit))
    with (
        pytest.raises(TypeError, match="standard Attention"),
        attention_gradients(ViTAdapter(beit), lambda a, g: a, print),
    ):
        pass
    trained = _vit().train()
    trained.blocks[0].attn.attn_drop.p = 0.1  # type: ignore[union-attr]
    assert not recomputes_attention(ViTAdapter(trained))


@pytest.mark.parametrize("mask", ["bool", "float", "causal"])
def test_masks_follow_scaled_dot_product_attention(mask: str) -> None:
    """An ``attn_mask`` / ``is_causal`` passed to the attention is applied as the fused kernel does."""
    torch.manual_seed(1)
    attn = ra.Attention(32, num_heads=HEADS).eval()
    x = torch.randn(2, 6, 32)
    q, k, v = attn.qkv(x).reshape(2, 6, 3, HEADS, 8).permute(2, 0, 3, 1, 4)
    causal = mask == "causal"
    m = None
    if mask == "bool":
        m = torch.rand(2, 1, 6, 6) > 0.3
        m[..., 0] = True  # every row keeps a key
    elif mask == "float":
        m = torch.randn(2, 1, 6, 6)
    bias = ra._additive_mask(6, q, m, causal)
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=m, is_causal=causal)
    assert torch.allclose(probabilities(q, k, attn.scale, bias) @ v, want, atol=1e-6)


@pytest.mark.parametrize("slice_floats", [2**18, 2400, 7])
@pytest.mark.parametrize("mask", [None, "bool", "float"])
def test_reductions_equal_recorded_probabilities(
    mask: str | None, slice_floats: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sliced forward's outputs equal the model's, and each head's recorded probabilities
    equal the explicit path's, with or without an attention mask passed to the model."""
    monkeypatch.setattr(ra, "SLICE_FLOATS", slice_floats)
    model = _vit(qk_norm=True)
    x = torch.rand(2, 3, 32, 32)
    n = 17
    torch.manual_seed(3)
    m: Tensor | None = None
    if mask == "bool":
        m = torch.rand(2, 1, n, n) > 0.3
        m[..., 0] = True
    elif mask == "float":
        m = torch.randn(2, 1, n, n)
    with torch.no_grad(), record_attention(model, detach=True) as rec:
        want_logits = model(x, attn_mask=m)
    for h in range(HEADS):
        with torch.no_grad(), attention_reductions(ViTAdapter(model), lambda a, h=h: a[:, h], (0, 2)) as kept:  # type: ignore[misc]
            logits = model(x, attn_mask=m)
        assert kept[1] is None
        assert _rel(logits, want_logits) <= 1e-5
        for i in (0, 2):
            got, ref = kept[i], rec.attentions[i]
            assert got is not None and ref is not None
            assert _rel(got, ref[:, h]) <= 1e-6, (h, i)
    assert not any("forward" in b.attn.__dict__ for b in model.blocks)  # type: ignore[union-attr]
    with pytest.raises(RuntimeError, match="no_grad"), attention_reductions(ViTAdapter(model), lambda a: a[:, 0], (0,)):
        pass


def test_gradients_with_an_attention_mask() -> None:
    """A mask passed to the model reaches the recomputation (captured from the call)."""
    model = _vit()
    x = torch.rand(2, 3, 32, 32)
    torch.manual_seed(4)
    m = torch.rand(2, 1, 17, 17) > 0.4
    m[..., 0] = True
    want: dict[int, Tensor] = {}
    with record_attention(model, on_grad=lambda i, a, g: want.__setitem__(i, (g.clamp(min=0) * a).mean(1))) as rec:
        assert rec is not None
        out = model(x, attn_mask=m)
        torch.autograd.grad(out[:, 1].sum(), [rec.attentions[0]])  # type: ignore[list-item]
    got: dict[int, Tensor] = {}
    with attention_gradients(ViTAdapter(model), lambda a, g: (g.clamp(min=0) * a).mean(1), got.__setitem__) as outs:
        out = model(x, attn_mask=m)
        torch.autograd.grad(out[:, 1].sum(), [outs[0]])  # type: ignore[list-item]
    for i in want:
        assert _rel(got[i], want[i]) <= 1e-5, i
        assert bool((got[i][~m[:, 0]] == 0).all())  # masked keys get no relevance
