"""Readouts without a class token (issue 16, "Readouts that are wrong today"): the pooling is
a query attending to the final tokens (the probe's attention for SigLIP's ``global_pool='map'``,
uniform weights for ``'avg'``) whose row each method weighs like its attention layers, reading
GAE's ``norm_rows(R - I) + I`` (eqs. 8-9) so that the identity no longer flattens the map."""

from __future__ import annotations

import warnings

import timm
import torch
from torch import Tensor, nn

from captum_vit.attr import EmptyMapWarning, GenericAttention, RawAttention, get_method
from captum_vit.attr._vit_common import residual_normalized
from captum_vit.testing import assert_close, input_for, make_vit, options_for
from tests.models.test_instrumentation import siglip_like


def manual_siglip(model: nn.Module, x: Tensor) -> tuple[Tensor, list[Tensor], Tensor]:
    """Logits, block attentions ``(heads, N, N)`` and the probe attention ``(heads, 1, N)`` of
    ONE image, by hand (no fused attention, no hooks)."""
    t = model.norm_pre(model._pos_embed(model.patch_embed(x[None])))
    attns = []
    for blk in model.blocks:
        a = blk.attn
        h = blk.norm1(t)
        n, d = h.shape[1], h.shape[2]
        q, k, v = a.qkv(h).reshape(n, 3, a.num_heads, d // a.num_heads).permute(1, 2, 0, 3)
        p = torch.softmax((q * a.scale) @ k.transpose(-2, -1), dim=-1)
        attns.append(p)
        t = t + blk.ls1(a.proj((p @ v).transpose(0, 1).reshape(1, n, d)))
        t = t + blk.ls2(blk.mlp(blk.norm2(t)))
    tokens = model.norm(t)[0]  # (N, D)
    pool = model.attn_pool
    heads, n, d = pool.num_heads, tokens.shape[0], tokens.shape[1]
    q = pool.q_norm(pool.q(pool.latent[0]).reshape(1, heads, -1).transpose(0, 1))  # (heads, 1, hd)
    k, v = pool.kv(tokens).reshape(n, 2, heads, -1).permute(1, 2, 0, 3)  # (heads, N, hd) each
    probe = torch.softmax((q * pool.scale) @ pool.k_norm(k).transpose(-2, -1), dim=-1)  # (heads, 1, N)
    o = pool.proj((probe @ v).transpose(0, 1).reshape(1, d))
    o = o + pool.mlp(pool.norm(o))
    return model.head(model.fc_norm(o))[0], attns, probe


def test_gae_on_attention_pooling_reads_rule_5_of_the_probe() -> None:
    """GAE's map of a SigLIP-like model: ``mean_h((∇a ⊙ a)^+)`` of the probe attention times
    ``norm_rows(R - I) + I`` (the official rule 10 with eqs. 8-9)."""
    model = siglip_like()
    x = input_for(model, batch=2)
    targets = [1, 4]
    got = GenericAttention(model).attribute(x, target=targets, return_patch_map=True)
    raw = RawAttention(model).attribute(x, return_patch_map=True)
    for i, t in enumerate(targets):
        logits, attns, probe = manual_siglip(model, x[i])
        grads = torch.autograd.grad(logits[t], [*attns, probe])
        n = probe.shape[-1]
        r = torch.eye(n)
        for a, g in zip(attns, grads[:-1]):
            r = r + (g * a).clamp(min=0).mean(0) @ r
        gained = r - torch.eye(n)
        r_bar = torch.stack([row / row.sum() if row.sum() != 0 else row for row in gained]) + torch.eye(n)
        row = (grads[-1] * probe).clamp(min=0).mean(0)[0]
        assert_close(got[i], (row @ r_bar).reshape(4, 4), "fp32_loose", f"gae map pooling, image {i}")
        last = attns[-1].detach().clamp(min=0).mean(0)
        assert_close(raw[i], (probe.detach().mean(0)[0] @ last).reshape(4, 4), "fp32_loose", f"raw attention {i}")


def test_every_attention_graph_method_reads_an_attention_pooled_model() -> None:
    model = siglip_like()
    x = input_for(model, batch=2)
    for name in ("gae", "rollout", "raw_attention", "attention_gradcam", "iia", "mutex", "vit_gradcam"):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            maps = get_method(name)(model).attribute(x, target=[0, 2], return_patch_map=True)
        assert maps.shape == (2, 4, 4) and torch.isfinite(maps).all(), name
        flat = maps.flatten(1)
        warned = " ".join(str(w.message) for w in caught if issubclass(w.category, EmptyMapWarning))
        for i in range(2):  # a map has contrast, or is empty and the caller was told
            assert flat[i].amax() > flat[i].amin() or (flat[i].amax() == 0 and f"[{i}]" in warned), f"{name} {i}"


def test_residual_normalized_is_eqs_8_9() -> None:
    r = torch.eye(3) + torch.tensor([[0.0, 0.1, 0.3], [0.0, 0.0, 0.0], [0.2, 0.2, 0.0]])
    want = torch.tensor([[1.0, 0.25, 0.75], [0.0, 1.0, 0.0], [0.5, 0.5, 1.0]])
    assert_close(residual_normalized(r[None])[0], want, "fp32")


def max_over_mean(maps: Tensor) -> Tensor:
    flat = maps.flatten(1)
    return flat.amax(1) / flat.mean(1)


def test_average_pooled_gae_is_no_longer_flat() -> None:
    """Average pooling read as uniform patch rows of ``R`` gave ``1/n`` plus a sliver (max/mean
    1.002 on a random ViT-S at 224 px in issue 16; 1.008 on this ViT-S, 1.03-1.07 on the tiny
    one). Rule 5 on the pool's weights and eqs. 8-9 give 2.6 and 2.0-7.0."""
    torch.manual_seed(0)
    model = timm.create_model(
        "vit_small_patch16_224", pretrained=False, global_pool="avg", class_token=False, img_size=64, depth=4
    ).eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    maps = GenericAttention(model).attribute(x, target=[1, 2], return_patch_map=True)
    assert (max_over_mean(maps) > 2).all(), max_over_mean(maps)
    tiny = make_vit("avg")
    tiny_maps = GenericAttention(tiny).attribute(input_for(tiny, batch=3), target=[0, 1, 2], return_patch_map=True)
    assert (max_over_mean(tiny_maps) > 1.5).all(), max_over_mean(tiny_maps)


def test_learned_explainers_on_an_attention_pooled_model() -> None:
    """LTX finetuning used to fail on SigLIP: the explainer's copy of the pooling head, which
    it never runs, had trainable parameters without a gradient."""
    model = siglip_like()
    x = input_for(model, batch=2)
    for name in ("ltx", "pltx", "diffmask"):
        maps = get_method(name)(model, **options_for(name, model)).attribute(x, target=[0, 2], return_patch_map=True)
        assert maps.shape == (2, 4, 4) and torch.isfinite(maps).all(), name
