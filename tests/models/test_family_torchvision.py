"""torchvision's VisionTransformer: the explicit ``nn.MultiheadAttention`` forward, forward
parity inside ``explicit_attention``, the adapter's geometry and token plumbing, and every
registered ViT method (values of raw attention, rollout and GAE against a manual forward)."""

from __future__ import annotations

import copy
import warnings
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torchvision.models import VisionTransformer, vit_b_16
from torchvision.models.vision_transformer import ConvStemConfig

from captum_vit.attr import EmptyMapWarning, get_method, list_methods
from captum_vit.models import ViTAdapter
from captum_vit.models.families._mha import MHA_PROBE, explicit_mha, probed_mha
from captum_vit.models.families.torchvision_vit import TorchvisionViTAdapter
from captum_vit.models.hooks import record_attention, replace_patch_embeddings
from captum_vit.models.token_selection import keep_patch_tokens
from captum_vit.models.view import private_view
from captum_vit.testing import assert_close
from captum_vit.testing.contract import assert_untouched, options_for, snapshot


def tiny_tv_vit(seed: int = 0, **kwargs: Any) -> VisionTransformer:
    """A 2-block, 32-wide torchvision ViT on 32x32 images (4x4 patches of 8 pixels).

    torchvision zero-initialises the head and the class token: both are drawn at random here
    so that logits, gradients and attention differ between images and classes."""
    torch.manual_seed(seed)
    cfg: dict[str, Any] = dict(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64)
    m = VisionTransformer(**(cfg | {"num_classes": 5} | kwargs)).eval()
    with torch.no_grad():
        nn.init.normal_(m.heads.head.weight, std=0.5)
        nn.init.normal_(m.class_token, std=1.0)
        nn.init.normal_(m.encoder.pos_embedding, std=0.5)
    return m


def manual_forward(m: VisionTransformer, x: Tensor, keep: Tensor | None = None) -> tuple[Tensor, list[Tensor]]:
    """torchvision's forward written out, each block's attention by :func:`explicit_mha`;
    ``keep`` ``(B, K)``: only those patch tokens enter the first block."""
    t = m.conv_proj(x).flatten(2).transpose(1, 2)
    t = torch.cat([m.class_token.expand(x.shape[0], -1, -1), t], dim=1) + m.encoder.pos_embedding
    if keep is not None:
        idx = (keep + 1).unsqueeze(-1).expand(-1, -1, t.shape[-1])
        t = torch.cat([t[:, :1], t.gather(1, idx)], dim=1)
    probs = []
    for blk in m.encoder.layers:
        y = blk.ln_1(t)
        out, p = explicit_mha(blk.self_attention, y, y, y, nn.Identity())
        t = t + out
        t = t + blk.mlp(blk.ln_2(t))
        probs.append(p)
    return m.heads(m.encoder.ln(t)[:, 0]), probs


# ------------------------------------------------------------------ explicit_mha
@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("extras", [{}, {"add_bias_kv": True}, {"add_zero_attn": True}, {"kdim": 6, "vdim": 6}])
def test_explicit_mha_is_the_modules_forward(batch_first: bool, bias: bool, extras: dict[str, Any]) -> None:
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(8, 2, bias=bias, batch_first=batch_first, **extras).eval()
    q, kv = torch.randn(3, 5, 8), torch.randn(3, 7, int(extras.get("kdim", 8)))
    if not batch_first:
        q, kv = q.transpose(0, 1), kv.transpose(0, 1)
    attn_mask = torch.randn(5, 7)
    pad = torch.zeros(3, 7, dtype=torch.bool)
    pad[0, 3:] = True
    with torch.no_grad():
        ref_out, ref_w = mha(
            q, kv, kv, attn_mask=attn_mask, key_padding_mask=pad.float() * -1e9, average_attn_weights=False
        )
        out, p = explicit_mha(mha, q, kv, kv, nn.Identity(), pad.float() * -1e9, attn_mask)
        fused = mha(q, kv, kv, need_weights=False)[0]
        plain = explicit_mha(mha, q, kv, kv, nn.Identity())[0]
    assert_close(out, ref_out, msg="output")
    assert_close(p, ref_w, msg="probabilities")
    assert_close(plain, fused, msg="output vs the fused path")
    assert_close(p.sum(-1), torch.ones(p.shape[:-1]), msg="rows sum to one")


def test_explicit_mha_boolean_masks_and_unbatched_input() -> None:
    torch.manual_seed(1)
    mha = nn.MultiheadAttention(8, 2).eval()
    x = torch.randn(5, 8)
    with torch.no_grad():
        assert_close(explicit_mha(mha, x, x, x, nn.Identity())[0], mha(x, x, x)[0], msg="unbatched")
        x3 = torch.randn(5, 3, 8)
        mask = torch.rand(6, 5, 5) < 0.3
        mask[..., 0] = False  # every query keeps one key
        out = explicit_mha(mha, x3, x3, x3, nn.Identity(), attn_mask=mask)[0]
        assert_close(out, mha(x3, x3, x3, attn_mask=mask)[0], msg="per-head boolean mask")


def test_probe_output_replaces_the_probabilities() -> None:
    torch.manual_seed(2)
    mha = nn.MultiheadAttention(8, 2, batch_first=True).eval()
    view = private_view(mha)
    x = torch.randn(2, 4, 8)
    with torch.no_grad():
        expected = mha(x, x, x, need_weights=False)[0]
        with probed_mha([view]) as (probe,):
            h = probe.register_forward_hook(lambda _m, _i, o: o.clone())  # replaced by itself
            same = view(x, x, x, need_weights=False)[0]
            h.remove()
            probe.register_forward_hook(lambda _m, _i, o: torch.full_like(o, 0.25))  # uniform
            uniform, weights = view(x, x, x)
    assert_close(same, expected, msg="probabilities replaced by themselves")
    v = nn.functional.linear(x, *[t.chunk(3)[2] for t in (mha.in_proj_weight, mha.in_proj_bias)])
    assert_close(uniform, mha.out_proj(v.mean(1, keepdim=True)).expand(-1, 4, -1), msg="uniform attention")
    assert_close(weights, torch.full((2, 4, 4), 0.25), "exact", "returned weights are the probe's")
    assert MHA_PROBE not in view._modules and "forward" not in view.__dict__


def test_probed_mha_restores_on_error_and_rejects_other_modules() -> None:
    mha = nn.MultiheadAttention(8, 2)
    with pytest.raises(RuntimeError, match="boom"), probed_mha([mha]):
        raise RuntimeError("boom")
    assert MHA_PROBE not in mha._modules and "forward" not in mha.__dict__
    with pytest.raises(TypeError, match="nn.MultiheadAttention"), probed_mha([nn.Linear(2, 2)]):  # type: ignore[list-item]
        pass


# ---------------------------------------------------------------- the adapter
def test_adapter_geometry_and_parts() -> None:
    m = tiny_tv_vit()
    a = ViTAdapter(m)
    assert type(a) is TorchvisionViTAdapter
    got = (a.num_blocks, a.num_heads, a.num_prefix_tokens, a.num_classes, a.embed_dim, a.in_chans)
    assert got == (2, 2, 1, 5, 32, 3)
    assert (a.patch_size, a.img_size, a.grid_size((32, 32)), a.readout.rows) == ((8, 8), (32, 32), (4, 4), (0,))
    assert a.pool_input is m.encoder.ln and a.gradcam_layer is m.encoder.layers[-1].ln_1
    assert a.patch_embedding is m.conv_proj and a.pool_attention_probe() is None
    assert "torchvision" in (a.lrp_unsupported or "")
    parts = a.embedding_parts
    assert parts[0] is m.conv_proj and parts[1] is m.class_token and parts[2] is m.encoder.pos_embedding
    with pytest.raises(RuntimeError, match="explicit_attention"):
        _ = a.attention_probes
    with pytest.raises(ValueError, match=r"img_size \(32, 32\)"):
        a.check_input(torch.rand(1, 3, 48, 48))
    copied = ViTAdapter(copy.deepcopy(m))
    copied.strip_head()
    assert copied.num_classes == 0 and isinstance(copied.module.heads, nn.Identity)
    assert isinstance(m.heads, nn.Sequential)


def test_a_torchvision_model_without_attention_blocks_is_refused() -> None:
    m = tiny_tv_vit()
    m.encoder.layers = nn.Sequential(nn.Identity())
    with pytest.raises(TypeError, match="nn.MultiheadAttention"):
        ViTAdapter(m)


def test_final_tokens_and_patch_token_layout() -> None:
    m = tiny_tv_vit()
    a = ViTAdapter(m)
    x = torch.rand(2, 3, 32, 32)
    seen: list[Tensor] = []
    h = m.encoder.ln.register_forward_hook(lambda _m, _i, o: seen.append(o))
    with torch.no_grad():
        logits = m(x)
        tokens = a.final_tokens(x)
    h.remove()
    assert_close(tokens, seen[0], "exact", "final tokens")
    out = m.conv_proj(x)
    flat = a.patch_tokens(out)
    assert flat.shape == (2, 16, 32)
    assert_close(flat[:, 5], out[:, :, 1, 1], "exact", "raster order")
    assert_close(a.restore_patch_tokens(flat, out), out, "exact", "round trip")
    with torch.no_grad(), replace_patch_embeddings(m, lambda t: t):
        assert_close(m(x), logits, "exact", "identity replacement")


@pytest.mark.parametrize(
    "build",
    [
        pytest.param(lambda: tiny_tv_vit(), id="tiny"),
        pytest.param(
            lambda: tiny_tv_vit(
                representation_size=16, conv_stem_configs=[ConvStemConfig(8, 3, 2), ConvStemConfig(16, 3, 4)]
            ),
            id="conv-stem-pre-logits",
        ),
        pytest.param(lambda: vit_b_16(weights=None, num_classes=5, image_size=32).eval(), id="vit_b_16"),
    ],
)
def test_explicit_attention_keeps_the_forward_and_exposes_probabilities(build: Any) -> None:
    m = build()
    before = snapshot(m)
    x = torch.rand(2, 3, 32, 32)
    view = private_view(m, training=False)
    a = ViTAdapter(view)
    with torch.no_grad():
        expected = m(x)
        with record_attention(a) as rec:
            got = view(x)
    assert float((got - expected).abs().max()) <= 1e-5
    att = rec.stacked()
    h, w = a.grid_size((32, 32))
    assert att.shape == (a.num_blocks, 2, a.num_heads, 1 + h * w, 1 + h * w)
    assert_close(att.sum(-1), torch.ones(att.shape[:-1]), msg="probability rows sum to one")
    assert_untouched(m, before)
    assert all(MHA_PROBE not in mod._modules and "forward" not in mod.__dict__ for mod in m.modules())


def test_token_removal_runs_the_kept_tokens_only() -> None:
    m = tiny_tv_vit()
    x = torch.rand(2, 3, 32, 32)
    keep = torch.tensor([[0, 5, 15], [3, 4, 9]])
    with torch.no_grad(), keep_patch_tokens(m, keep):
        got = m(x)
    with torch.no_grad():
        assert_close(got, manual_forward(m, x, keep)[0], msg="kept tokens")
        with keep_patch_tokens(m, torch.arange(16).expand(2, 16)):
            assert_close(m(x), m.heads(ViTAdapter(m).final_tokens(x)[:, 0]), msg="all tokens kept")


# ------------------------------------------------------------------ the methods
def _map(name: str, m: nn.Module, x: Tensor, target: int, **kw: Any) -> Tensor:
    method = get_method(name)(m, **(options_for(name, m) | kw))
    return method.attribute(x, target=target, return_patch_map=True)  # type: ignore[no-any-return]


def test_raw_attention_and_rollout_are_the_manual_ones() -> None:
    m = tiny_tv_vit()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        _, probs = manual_forward(m, x)
    fused = [p.mean(1) for p in probs]
    assert_close(_map("raw_attention", m, x, 0), fused[-1][:, 0, 1:].reshape(2, 4, 4), msg="raw attention")
    eye = torch.eye(17)
    factors = [(f + eye) / (f + eye).sum(-1, keepdim=True) for f in fused]
    rollout = factors[1] @ factors[0]
    assert_close(_map("rollout", m, x, 0), rollout[:, 0, 1:].reshape(2, 4, 4), msg="rollout")


def test_gae_is_the_manual_one() -> None:
    m = tiny_tv_vit(seed=3)
    x = torch.rand(2, 3, 32, 32)
    logits, probs = manual_forward(m, x)
    grads = torch.autograd.grad(logits[:, 1].sum(), probs)
    r = torch.eye(17).expand(2, 17, 17)
    for p, g in zip(probs, grads):
        r = r + (g * p).clamp(min=0).mean(1) @ r
    assert_close(_map("gae", m, x, 1), r[:, 0, 1:].detach().reshape(2, 4, 4), msg="GAE")


def test_every_vit_method_works_or_says_why() -> None:
    m = tiny_tv_vit()
    x = torch.rand(2, 3, 32, 32)
    for name in list_methods("vit"):
        before = snapshot(m)
        if name == "transformer_attribution":
            with pytest.raises(TypeError, match="LRP|relevance"):
                get_method(name)(m)
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("error", EmptyMapWarning)
            out = _map(name, m, x, 2)
        assert out.shape == (2, 4, 4), name
        assert torch.isfinite(out).all(), name
        assert float(out.flatten(1).std(1).min()) > 0, f"{name} gives a constant map"
        assert_untouched(m, before)


def spotlight_vit(k: int) -> VisionTransformer:
    """One block, one head, no norms or MLP: the class token's query seeks the marker ``u``
    that only patch ``k``'s position embedding carries, and class 0's logit is ``u`` (plus
    noise) dotted with the attention output, so class 0 rests on patch ``k`` by construction."""
    d = 32
    torch.manual_seed(0)
    m = VisionTransformer(
        image_size=32, patch_size=8, num_layers=1, num_heads=1, hidden_dim=d, mlp_dim=64, num_classes=3
    ).eval()
    blk, u = m.encoder.layers[0], torch.zeros(d)
    u[0] = 1.0
    blk.ln_1, m.encoder.ln = nn.Identity(), nn.Identity()
    sa = blk.self_attention
    with torch.no_grad():
        m.conv_proj.weight.mul_(0.1)
        m.encoder.pos_embedding.zero_()
        m.encoder.pos_embedding[0, k + 1] = 4.0 * u
        sa.in_proj_weight.zero_()
        sa.in_proj_bias.zero_()
        sa.in_proj_bias[:d] = 2.0 * u  # every query is the marker direction
        sa.in_proj_weight[d:] = torch.eye(d).repeat(2, 1)  # keys and values: the tokens themselves
        sa.out_proj.weight.copy_(torch.eye(d))
        sa.out_proj.bias.zero_()
        blk.mlp[3].weight.zero_()
        blk.mlp[3].bias.zero_()
        m.heads.head.weight.copy_(torch.randn(3, d) * 0.1)
        m.heads.head.weight[0] += u
    return m


@pytest.mark.parametrize("k", [0, 6, 13])
def test_methods_find_the_patch_the_class_rests_on(k: int) -> None:
    m = spotlight_vit(k)
    x = torch.randn(4, 3, 32, 32)
    for name in ("raw_attention", "rollout", "attention_gradcam", "vit_gradcam", "gae", "iia"):
        flat = _map(name, m, x, 0).flatten(1)
        assert flat.argmax(1).tolist() == [k] * 4, name
    for name in ("gae", "iia"):  # class-specific relevance: nearly all of it on patch k
        flat = _map(name, m, x, 0).flatten(1)
        assert float((flat[:, k] / flat.abs().sum(1)).min()) > 0.9, name
