"""Values of the attention baselines against straightforward per-example references.

The reference re-implements timm's ViT forward by hand for one image (so it also checks
that the hooks capture the right tensors) and computes each method with explicit loops.
"""

from __future__ import annotations

from typing import Any

import pytest
import timm
import torch
from torch import Tensor, nn

from captum_vit.attr import (
    AttentionGradCAM,
    AttentionRollout,
    ConstantMapWarning,
    GenericAttention,
    RawAttention,
    ViTGradCAM,
    get_method,
)
from captum_vit.testing import assert_close, input_for, make_vit, options_for


def manual_forward(
    model: nn.Module, x: Tensor, keep: dict[str, Tensor] | None = None
) -> tuple[Tensor, list[Tensor], Tensor]:
    """Logits, per-block attention probabilities (heads, N, N) and the last block's norm1
    output (1, N, D), for ONE image, computed without timm's fused attention or any hooks;
    ``keep["tokens"]`` receives the final token states (1, N, D) the head pools."""
    t = model.patch_embed(x[None])
    t = model.norm_pre(model.patch_drop(model._pos_embed(t)))
    attns = []
    norm1_last = t
    for blk in model.blocks:
        a = blk.attn
        h = blk.norm1(t)
        norm1_last = h
        n, d = h.shape[1], h.shape[2]
        qkv = a.qkv(h).reshape(n, 3, a.num_heads, d // a.num_heads).permute(1, 2, 0, 3)
        q, k, v = qkv[0], qkv[1], qkv[2]
        p = torch.softmax((q * a.scale) @ k.transpose(-2, -1), dim=-1)  # (heads, N, N)
        attns.append(p)
        o = (p @ v).transpose(0, 1).reshape(1, n, d)
        t = t + blk.ls1(a.proj(o))
        t = t + blk.ls2(blk.mlp(blk.norm2(t)))
    tokens = model.norm(t)
    if keep is not None:
        keep["tokens"] = tokens
    logits = model.forward_head(tokens)
    return logits[0], attns, norm1_last


def readout_rows(model: nn.Module, n: int) -> list[int]:
    p = model.num_prefix_tokens
    if getattr(model, "dist_token", None) is not None:
        return [0, 1]
    if model.global_pool == "avg":
        return list(range(p, n))
    return [0]


def patch_part(model: nn.Module, row: Tensor) -> Tensor:
    h, w = model.patch_embed.grid_size
    return row[model.num_prefix_tokens :].reshape(h, w)


def ref_raw(model: nn.Module, x: Tensor) -> Tensor:
    _, attns, _ = manual_forward(model, x)
    a = attns[-1].mean(0)
    rows = readout_rows(model, a.shape[0])
    return patch_part(model, sum(a[r] for r in rows) / len(rows))


def ref_rollout(model: nn.Module, x: Tensor, start: int = 0) -> Tensor:
    _, attns, _ = manual_forward(model, x)
    n = attns[0].shape[-1]
    joint = torch.eye(n)
    for a in attns[start:]:
        f = a.mean(0) + torch.eye(n)
        f = f / f.sum(1, keepdim=True)
        joint = f @ joint
    rows = readout_rows(model, n)
    return patch_part(model, sum(joint[r] for r in rows) / len(rows))


def ref_gae(model: nn.Module, x: Tensor, target: int) -> Tensor:
    keep: dict[str, Tensor] = {}
    logits, attns, _ = manual_forward(model, x, keep)
    grads = torch.autograd.grad(logits[target], [*attns, keep["tokens"]])
    n = attns[0].shape[-1]
    r = torch.eye(n)
    for a, g in zip(attns, grads[:-1]):
        cam = (g * a).clamp(min=0).mean(0)
        r = r + cam @ r
    rows = readout_rows(model, n)
    if model.global_pool == "avg":
        # The pooling is an attention with weights a_j = 1/n: rule 5 on it, (dy/da_j * a_j)^+ =
        # <dy/dt_j, t_j>^+, read with eqs. 8-9 (rows of R - I normalised, then + I).
        gained = r - torch.eye(n)
        r = torch.stack([g / g.sum() if g.sum() != 0 else g for g in gained]) + torch.eye(n)
        t, g = keep["tokens"][0].detach(), grads[-1][0]
        row = torch.stack([(g[i] * t[i]).sum().clamp(min=0) for i in rows])
        return patch_part(model, row @ r[rows])
    return patch_part(model, sum(r[i] for i in rows) / len(rows))


def ref_attn_gradcam(model: nn.Module, x: Tensor, target: int) -> Tensor:
    logits, attns, _ = manual_forward(model, x)
    (g,) = torch.autograd.grad(logits[target], [attns[-1]])
    a = attns[-1]
    rows = readout_rows(model, a.shape[-1])
    p = model.num_prefix_tokens
    a_row = sum(a[:, r, p:] for r in rows) / len(rows)  # (heads, patches)
    g_row = sum(g[:, r, p:] for r in rows) / len(rows)
    heads = [a_row[h] * g_row[h].mean() for h in range(a.shape[0])]
    cam = (sum(heads) / len(heads)).clamp(min=0)
    gh, gw = model.patch_embed.grid_size
    return cam.reshape(gh, gw)


def ref_vit_gradcam(model: nn.Module, x: Tensor, target: int) -> Tensor:
    logits, _, act = manual_forward(model, x)
    (g,) = torch.autograd.grad(logits[target], [act])
    act, g = act[0], g[0]
    p = model.num_prefix_tokens
    w = g[p:].mean(0)
    cam = (act[p:] * w).sum(-1).clamp(min=0)
    gh, gw = model.patch_embed.grid_size
    return cam.reshape(gh, gw)


KINDS = ["cls", "dist", "reg", "avg", "rect"]


@pytest.mark.parametrize("kind", KINDS)
def test_against_per_example_references(kind: str) -> None:
    model = make_vit(kind)
    x = input_for(model, batch=3)
    targets = [2, 0, 4]
    maps = {
        "raw": RawAttention(model).attribute(x, target=targets, return_patch_map=True),
        "rollout": AttentionRollout(model).attribute(x, return_patch_map=True),
        "rollout1": AttentionRollout(model, start_layer=1).attribute(x, return_patch_map=True),
        "gae": GenericAttention(model).attribute(x, target=targets, return_patch_map=True),
        "agc": AttentionGradCAM(model).attribute(x, target=targets, return_patch_map=True),
        "vgc": ViTGradCAM(model).attribute(x, target=targets, return_patch_map=True),
    }
    for i, t in enumerate(targets):
        xi = x[i]
        assert_close(maps["raw"][i], ref_raw(model, xi), "fp32_loose", f"raw {kind}")
        assert_close(maps["rollout"][i], ref_rollout(model, xi), "fp32_loose", f"rollout {kind}")
        assert_close(maps["rollout1"][i], ref_rollout(model, xi, start=1), "fp32_loose", f"rollout1 {kind}")
        assert_close(maps["gae"][i], ref_gae(model, xi, t), "fp32_loose", f"gae {kind}")
        assert_close(maps["agc"][i], ref_attn_gradcam(model, xi, t), "fp32_loose", f"attn gradcam {kind}")
        assert_close(maps["vgc"][i], ref_vit_gradcam(model, xi, t), "fp32_loose", f"vit gradcam {kind}")


def uniform_attention_vit() -> nn.Module:
    """q = k = 0 makes every attention row uniform (1/N)."""
    model = make_vit("cls")
    with torch.no_grad():
        for blk in model.blocks:
            d = blk.attn.qkv.in_features
            blk.attn.qkv.weight[: 2 * d] = 0
            blk.attn.qkv.bias[: 2 * d] = 0
    return model


def test_uniform_attention_analytic() -> None:
    model = uniform_attention_vit()
    x = input_for(model, batch=2)
    n = 1 + 16
    # a constant map is what the definitions give here, and the caller is told so
    with pytest.warns(ConstantMapWarning, match=r"RawAttention: the map of image\(s\) \[0, 1\] is constant"):
        raw = RawAttention(model).attribute(x, return_patch_map=True)
    assert_close(raw, torch.full_like(raw, 1 / n), "fp32", "raw attention of uniform attention")
    # ((U + I)/2)^L = 2^-L I + (1 - 2^-L) U, since U is idempotent: patch entries of row 0.
    depth = len(model.blocks)
    with pytest.warns(ConstantMapWarning, match="AttentionRollout"):
        roll = AttentionRollout(model).attribute(x, return_patch_map=True)
    assert_close(roll, torch.full_like(roll, (1 - 2.0**-depth) / n), "fp32", "rollout of uniform attention")


def test_rollout_discard_and_head_fusion() -> None:
    model = make_vit("cls")
    x = input_for(model, batch=2)
    base = AttentionRollout(model).attribute(x, return_patch_map=True)
    assert not torch.allclose(AttentionRollout(model, head_fusion="max").attribute(x, return_patch_map=True), base)
    discarded = AttentionRollout(model, discard_ratio=0.5).attribute(x, return_patch_map=True)
    assert not torch.allclose(discarded, base)
    # per-example discard: example 1 alone == example 1 in the batch (vit-explain only did example 0)
    alone = AttentionRollout(model, discard_ratio=0.5).attribute(x[1:], return_patch_map=True)
    assert_close(alone[0], discarded[1], "fp32_loose")
    for cls in (AttentionRollout, RawAttention):  # one check, shared with the kernels and MUTEX
        with pytest.raises(ValueError, match="head_fusion must be one of"):
            cls(model, head_fusion="median")


def test_bilinear_upsampling_matches_interpolate() -> None:
    model = make_vit("rect")
    x = input_for(model, batch=1)
    m = GenericAttention(model)
    pm = m.attribute(x, target=1, return_patch_map=True)
    full = m.attribute(x, target=1)
    ref = torch.nn.functional.interpolate(pm[:, None], size=(48, 64), mode="bilinear", align_corners=False)
    assert_close(full, ref.expand(-1, 3, -1, -1), "fp32")
    assert full.shape == (1, 3, 48, 64) and pm.shape == (1, 6, 8)


def test_dynamic_img_size_any_input() -> None:
    model = make_vit("dynamic")
    x = torch.randn(2, 3, 40, 56)
    out = GenericAttention(model).attribute(x, target=[0, 1], return_patch_map=True)
    assert out.shape == (2, 5, 7)


@pytest.mark.parametrize(
    "prefix",
    [
        {"class_token": False},
        {"class_token": True},  # timm pools the patch tokens only: the probe is 0 at the prefix
        {"class_token": True, "reg_tokens": 2},
        {"class_token": True, "pool_include_prefix": True},
    ],
    ids=["none", "cls", "cls+reg", "cls-pooled"],
)
def test_attention_pooling_reads_the_probe_row(prefix: dict[str, Any]) -> None:
    """``global_pool='map'``: rollout reads its joint matrix at the pooling head's probe
    attention (mean over heads), recorded by hand here, with or without prefix tokens."""
    torch.manual_seed(0)
    m = timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        num_classes=3,
        img_size=32,
        patch_size=8,
        embed_dim=32,
        depth=1,
        num_heads=2,
        global_pool="map",
        **prefix,
    ).eval()
    x = torch.randn(2, 3, 32, 32)
    pool, p = m.attn_pool, m.num_prefix_tokens
    skipped = 0 if prefix.get("pool_include_prefix") else p
    with torch.no_grad():
        tokens = m.forward_features(x)[:, skipped:]  # the pool's input
        q = pool.q(pool.latent.expand(2, -1, -1)).reshape(2, 1, pool.num_heads, -1).transpose(1, 2)
        k = pool.kv(tokens).reshape(2, tokens.shape[1], 2, pool.num_heads, -1).permute(2, 0, 3, 1, 4)[0]
        probe = torch.softmax((q * pool.scale) @ k.transpose(-2, -1), dim=-1)[:, :, 0].mean(1)  # (B, pooled)
        probe = torch.nn.functional.pad(probe, (skipped, 0))  # (B, N): 0 at the tokens not pooled
    got = AttentionRollout(m).attribute(x, return_patch_map=True)
    for i in range(2):
        _, attns, _ = manual_forward(m, x[i])
        n = attns[0].shape[-1]
        f = attns[0].mean(0) + torch.eye(n)
        joint = f / f.sum(1, keepdim=True)
        assert_close(got[i], (probe[i] @ joint)[p:].reshape(4, 4), "fp32_loose", f"example {i}")
    for name in ("gae", "raw_attention", "attention_gradcam", "iia", "mutex"):  # every reader of the probe
        assert get_method(name)(m, **options_for(name, m)).attribute(x, target=[0, 2]).shape == x.shape


def test_full_size_timm_models_offline() -> None:
    """The issue's named models work end-to-end (randomly initialised, batch 1)."""
    for name, kw in [
        ("vit_small_patch16_224", {}),
        ("deit_tiny_distilled_patch16_224", {}),
        ("vit_tiny_patch16_224", {"reg_tokens": 4, "no_embed_class": True}),
        ("vit_tiny_patch16_224", {"img_size": (96, 128)}),
    ]:
        m = timm.create_model(name, pretrained=False, depth=2, **kw).eval()
        x = torch.randn(1, 3, *m.patch_embed.img_size)
        out = AttentionRollout(m).attribute(x, target=3)
        assert out.shape == x.shape


def test_cnn_gradcam_against_manual_split() -> None:
    """Grad-CAM on timm's resnet10t vs a hook-free split at layer4 (features -> head)."""
    from captum_vit.attr import GradCAM
    from captum_vit.testing import make_cnn

    model = make_cnn()
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    targets = [4, 0, 2]
    got = GradCAM(model).attribute(x, target=targets, return_patch_map=True)
    for i, t in enumerate(targets):
        feats = model.forward_features(x[i : i + 1]).detach().requires_grad_(True)
        logit = model.forward_head(feats)[0, t]
        (g,) = torch.autograd.grad(logit, feats)
        ref = (g.mean(dim=(2, 3), keepdim=True) * feats.detach()).sum(1).clamp(min=0)[0]
        assert_close(got[i], ref, "fp32_loose", f"example {i}")
