"""The hooks in captum_vit.models.hooks and the LRP trace: what they record, checked against
timm's modules run by hand, and that they leave no hook or flag behind, also on errors."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from captum_vit.models.hooks import AttentionRecord, record_activations, record_attention
from captum_vit.models.lrp_trace import record_lrp_trace
from captum_vit.testing import assert_close, input_for, make_cnn, make_vit


def _hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def _attention_by_hand(model: nn.Module, x: Tensor, block: int) -> Tensor:
    """softmax(q kᵀ · scale) of ``block``, from timm's modules called one at a time."""
    t = model.norm_pre(model._pos_embed(model.patch_embed(x)))
    for blk in model.blocks[:block]:
        t = blk(t)
    attn = model.blocks[block].attn
    b, n, _ = t.shape
    qkv = attn.qkv(model.blocks[block].norm1(t)).reshape(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k = attn.q_norm(qkv[0]), attn.k_norm(qkv[1])
    return ((q * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1)


@pytest.mark.parametrize("kind", ["cls", "reg", "dist"])
def test_record_attention_matches_hand_computed_softmax(kind: str) -> None:
    model = make_vit(kind)
    x = input_for(model, batch=2)
    with torch.no_grad(), record_attention(model) as rec:
        model(x)
    stacked = rec.stacked()
    assert stacked.shape[0] == len(model.blocks)
    with torch.no_grad():
        for i in range(len(model.blocks)):
            assert_close(stacked[i], _attention_by_hand(model, x, i), "fp32", f"{kind} block {i}")
    assert _hook_count(model) == 0 and all(b.attn.fused_attn for b in model.blocks)


def test_override_replaces_the_attention_and_is_what_is_recorded() -> None:
    model = make_vit("cls")
    x = input_for(model, batch=2)
    uniform = lambda a: torch.full_like(a, 1.0 / a.shape[-1])  # noqa: E731
    with torch.no_grad(), record_attention(model, override={-1: uniform}) as rec:
        out = model(x)
    last = rec.attentions[-1]
    assert last is not None and torch.equal(last, torch.full_like(last, 1.0 / last.shape[-1]))
    with torch.no_grad():
        assert not torch.allclose(out, model(x))  # the replacement reached the output
    with pytest.raises(ValueError, match="override block index"):
        with record_attention(model, override={len(model.blocks): uniform}):
            pass


def test_hooks_and_flags_restored_when_the_body_raises() -> None:
    model = make_vit("cls")
    for ctx in (lambda: record_attention(model), lambda: record_lrp_trace(model)):
        with pytest.raises(RuntimeError, match="boom"), ctx():
            assert not any(b.attn.fused_attn for b in model.blocks)  # off inside
            raise RuntimeError("boom")
        assert _hook_count(model) == 0 and all(b.attn.fused_attn for b in model.blocks)


def test_record_attention_before_a_forward_pass() -> None:
    with pytest.raises(RuntimeError, match="no attention was recorded"):
        AttentionRecord([None, None]).stacked()


def test_record_activations_holds_the_module_output_in_the_graph() -> None:
    model = make_cnn()
    x = input_for(model, batch=2)
    with record_activations([model.layer3, model.layer4]) as acts:
        assert acts == [None, None]
        logits = model(x)
    l3, l4 = acts
    assert l3 is not None and l4 is not None
    assert_close(l4, model.layer4(l3), "fp32")  # layer4's output is layer4 applied to layer3's
    (grad,) = torch.autograd.grad(logits[:, 0].sum(), l4)  # still in the autograd graph
    assert grad.shape == l4.shape
    assert _hook_count(model) == 0


def test_record_activations_rejects_tuple_outputs() -> None:
    class Pair(nn.Module):
        def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
            return x, x

    pair = Pair()
    with pytest.raises(TypeError, match="returns tuple, expected a Tensor"), record_activations([pair]):
        pair(torch.zeros(1))
    assert _hook_count(pair) == 0


def test_lrp_trace_residual_stream_is_consistent() -> None:
    model = make_vit("cls")
    x = input_for(model, batch=2)
    with torch.no_grad(), record_lrp_trace(model) as trace:
        logits = model(x)
    blocks = trace.blocks()
    for i, b in enumerate(blocks):
        assert_close(b.x + b.attn_branch, b.mid, "fp32", f"block {i} mid")
        if i + 1 < len(blocks):
            assert_close(b.mid + b.mlp_branch, blocks[i + 1].x, "fp32", f"block {i} output")
    assert_close(trace.heads()[0].logits, logits, "fp32")
