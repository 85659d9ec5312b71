"""Where the adapter finds attention probabilities and how it makes them explicit (fused
attention off, the attention pool's explicit forward), the view's dtype option, and the
checks every method relies on."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from captum_vit.models import ViTAdapter
from captum_vit.models.hooks import count_output_bytes, record_attention
from captum_vit.models.view import private_view
from captum_vit.testing import assert_close, input_for, make_vit


def siglip_like(depth: int = 2) -> nn.Module:
    """A tiny SigLIP-style tower: no class token, attention pooling (``global_pool='map'``)."""
    torch.manual_seed(0)
    return timm.create_model(
        "vit_base_patch16_siglip_224",
        pretrained=False,
        num_classes=5,
        img_size=32,
        patch_size=8,
        embed_dim=32,
        depth=depth,
        num_heads=2,
    ).eval()


def test_explicit_pool_forward_is_timms_and_exposes_the_probe_attention() -> None:
    model = siglip_like()
    adapter = ViTAdapter(model)
    assert adapter.readout.attention_pool
    x = input_for(model, batch=3)
    with torch.no_grad():
        expected = model(x)
        with record_attention(model) as rec:
            got = model(x)
    assert_close(got, expected, "fp32", "explicit attention pool vs timm's forward")
    assert rec.pool is not None and rec.pool.shape == (3, 2, 1, 16)  # (B, heads, probes, tokens)
    assert_close(rec.pool.sum(-1), torch.ones(3, 2, 1), "fp32", "probe attention rows sum to 1")
    pool = model.attn_pool
    assert "forward" not in vars(pool) and "captum_vit_probe" not in pool._modules  # restored
    assert all(b.attn.fused_attn == pool.fused_attn for b in model.blocks)


def test_pool_probe_exists_only_inside_explicit_attention() -> None:
    adapter = ViTAdapter(siglip_like())
    with pytest.raises(RuntimeError, match="explicit_attention"):
        adapter.pool_attention_probe()
    with adapter.explicit_attention():
        assert isinstance(adapter.pool_attention_probe(), nn.Module)
    assert ViTAdapter(make_vit("cls")).pool_attention_probe() is None


def test_compiled_model_adapter_reads_the_original_module() -> None:
    model = make_vit("cls")
    adapter = ViTAdapter(torch.compile(model, backend="eager"))
    assert adapter.model is model and adapter.blocks[0] is model.blocks[0]


def test_float32_view_of_a_half_model_leaves_the_model_half() -> None:
    model = make_vit("cls").half()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    view = private_view(model, torch.float32)
    assert all(p.dtype == torch.float32 for p in view.parameters())
    assert all(p.dtype == torch.float16 for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    x = input_for(model, batch=2)
    assert_close(view(x), model.float()(x), "fp32", "float32 view computes the float32 model")


def test_view_runs_an_in_place_compiled_module_eagerly() -> None:
    model = make_vit("cls")
    model.compile(backend="eager")
    view = private_view(model)
    assert "_compiled_call_impl" not in vars(view)
    seen: list[int] = []
    view.blocks[0].attn.attn_drop.register_forward_hook(lambda *_: seen.append(1))
    ViTAdapter(view).attentions[0].fused_attn = False
    view(input_for(model, batch=1))
    assert seen == [1]  # the view's own hooks run: it is not the compiled original


def test_input_dtype_must_match_the_model() -> None:
    adapter = ViTAdapter(make_vit("cls"))
    with pytest.raises(
        TypeError, match=r"inputs have dtype torch\.float16 but the model's parameters are torch\.float32"
    ):
        adapter.check_input(input_for(adapter.model, batch=1).half())


def test_count_output_bytes_sums_leaf_outputs() -> None:
    model = make_vit("cls", depth=1)
    with torch.no_grad(), ViTAdapter(model).explicit_attention(), count_output_bytes(model) as counted:
        model(input_for(model, batch=1))
    with torch.no_grad(), ViTAdapter(model).explicit_attention(), count_output_bytes(model) as counted2:
        model(input_for(model, batch=2))
    assert counted[0] > 0 and counted2[0] == 2 * counted[0]  # per image, linear in the batch
    assert all(not m._forward_hooks for m in model.modules())


def test_eval_view_of_a_training_model() -> None:
    model = make_vit("cls", drop_rate=0.5).train()
    view = private_view(model, training=False)
    assert not any(m.training for m in view.modules()) and all(m.training for m in model.modules())
    x = input_for(model, batch=2)
    assert_close(view(x), model.eval()(x), "exact", "the eval view computes the eval model")
