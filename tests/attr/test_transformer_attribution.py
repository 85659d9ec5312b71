"""Transformer Attribution: LRP conservation, an independent per-example reference, batching.

The reference below re-runs the tiny ViT by hand (calling its submodules) for one example at
a time and applies each LRP rule the way Chefer et al.'s ``layers_ours.py`` does, through
autograd (``R_in = X * d<f(X), R/f(X)>/dX``), rather than with the closed forms of
``captum_vit.attr._lrp``.
"""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from captum_vit.attr import TransformerAttribution
from captum_vit.attr._lrp import linear_relevance, propagate, residual_relevance
from captum_vit.models.hooks import record_attention
from captum_vit.models.lrp_trace import LinearInput, record_lrp_trace
from captum_vit.testing import ALL_VIT_KINDS, assert_close, input_for, make_vit

METHODS = ("transformer_attribution", "rollout", "last_layer", "full")


# ------------------------------------------------------------------ reference (one example)
def _div(a: Tensor, b: Tensor) -> Tensor:
    return torch.where(b == 0, torch.zeros_like(a), a / (b + 1e-9 * torch.where(b >= 0, 1.0, -1.0)))


def _zrule(fn, inputs: list[Tensor], r: Tensor) -> list[Tensor]:
    xs = [t.detach().requires_grad_(True) for t in inputs]
    z = fn(*xs)
    grads = torch.autograd.grad(z, xs, _div(r, z.detach()))
    return [x.detach() * g for x, g in zip(xs, grads)]


def _linear(x: Tensor, w: Tensor, r: Tensor) -> Tensor:
    return sum(
        _zrule(
            lambda p, n: F.linear(p, w.clamp(min=0)) + F.linear(n, w.clamp(max=0)), [x.clamp(min=0), x.clamp(max=0)], r
        )
    )


def _add(a: Tensor, b: Tensor, r: Tensor) -> tuple[Tensor, Tensor]:
    ra, rb = _zrule(lambda u, v: u + v, [a, b], r)
    sa, sb = ra.sum(), rb.sum()
    fa = _div(sa.abs(), sa.abs() + sb.abs()) * r.sum()
    fb = _div(sb.abs(), sa.abs() + sb.abs()) * r.sum()
    return ra * _div(fa, sa), rb * _div(fb, sb)


def _forward(model: nn.Module, x: Tensor) -> tuple[dict, list[dict]]:
    pre = model._pos_embed(model.patch_embed(x))
    t = model.norm_pre(pre)
    blocks = []
    for blk in model.blocks:
        a = blk.attn
        h = blk.norm1(t)
        q, k, v = a.qkv(h).reshape(1, h.shape[1], 3, a.num_heads, a.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = a.q_norm(q), a.k_norm(k)
        attn = (q @ k.transpose(-2, -1) * a.scale).softmax(-1)
        o = (attn @ v).transpose(1, 2).reshape(1, h.shape[1], -1)
        branch = blk.ls1(a.proj(o))
        mid = t + branch
        f1_in = blk.norm2(mid)
        f2_in = blk.mlp.act(blk.mlp.fc1(f1_in))
        out = mid + blk.ls2(blk.mlp.fc2(f2_in))
        blocks.append(
            dict(
                x=t,
                h=h,
                q=q,
                k=k,
                v=v,
                attn=attn,
                o=o,
                branch=branch,
                mid=mid,
                f1=f1_in,
                f2=f2_in,
                mlp=out - mid,
                blk=blk,
            )
        )
        t = out
    tok = model.norm(t)
    p = model.num_prefix_tokens
    if getattr(model, "dist_token", None) is not None:
        heads = [(tok[:, 0], model.head), (tok[:, 1], model.head_dist)]
        logits = (heads[0][1](heads[0][0]) + heads[1][1](heads[1][0])) / 2
    else:
        pooled = tok[:, p:].mean(1) if model.global_pool == "avg" else tok[:, 0]
        heads = [(model.fc_norm(pooled), model.head)]
        logits = model.head(heads[0][0])
    return dict(tok=tok, heads=heads, logits=logits, pre=pre), blocks


def reference(model: nn.Module, x: Tensor, target: int) -> dict[tuple[str, int], Tensor]:
    """Chefer's ``generate_LRP`` + ``VisionTransformer.relprop`` for one image ``(1, C, H, W)``:
    ``{(method, start_layer): map}``."""
    fw, blocks = _forward(model, x)
    p, n = model.num_prefix_tokens, fw["tok"].shape[1]
    one_hot = F.one_hot(torch.tensor([target]), fw["logits"].shape[-1]).double()
    r_tok = torch.zeros_like(fw["tok"])
    if len(fw["heads"]) == 2:
        outs = [lin(h) / 2 for h, lin in fw["heads"]]
        for row, ((h, lin), r) in enumerate(zip(fw["heads"], _add(outs[0], outs[1], one_hot))):
            r_tok[:, row] = _linear(h, lin.weight, r)
    else:
        ((h, lin),) = fw["heads"]
        r_pool = _linear(h, lin.weight, one_hot)
        if model.global_pool == "avg":
            r_tok = _zrule(lambda t: t[:, p:].mean(1), [fw["tok"]], r_pool)[0]
        else:
            r_tok[:, 0] = r_pool
    r, r_attn = r_tok, [None] * len(blocks)
    for i in reversed(range(len(blocks))):
        b = blocks[i]
        r_mid, r_mlp = _add(b["mid"], b["mlp"], r)
        r_mid = r_mid + _linear(b["f1"], b["blk"].mlp.fc1.weight, _linear(b["f2"], b["blk"].mlp.fc2.weight, r_mlp))
        r_x, r_branch = _add(b["x"], b["branch"], r_mid)
        r_o = _linear(b["o"], b["blk"].attn.proj.weight, r_branch)
        r_o = r_o.reshape(1, n, b["q"].shape[1], -1).transpose(1, 2)
        ra, rv = (t / 2 for t in _zrule(lambda u, v: u @ v, [b["attn"], b["v"]], r_o))
        rq, rk = (t / 2 for t in _zrule(lambda u, v: u @ v.transpose(-1, -2), [b["q"], b["k"]], ra))
        r_qkv = torch.stack([rq, rk, rv]).permute(1, 3, 0, 2, 4).reshape(1, n, -1)
        r = r_x + _linear(b["h"], b["blk"].attn.qkv.weight, r_qkv)
        r_attn[i] = ra[0]
    hh, ww = model.patch_embed.grid_size
    emb = model.patch_embed(x).reshape(1, hh * ww, -1)
    r_emb, _ = _add(emb, fw["pre"][:, p:] - emb, r[:, p:])
    conv = model.patch_embed.proj
    lo, hi = torch.full_like(x, x.min().item()), torch.full_like(x, x.max().item())
    w, pw, nw = conv.weight, conv.weight.clamp(min=0), conv.weight.clamp(max=0)

    def zb(a: Tensor, b: Tensor, c: Tensor) -> Tensor:
        st = conv.stride
        return F.conv2d(a, w, stride=st) - F.conv2d(b, pw, stride=st) - F.conv2d(c, nw, stride=st)

    r_pix = sum(_zrule(zb, [x, lo, hi], r_emb.transpose(1, 2).reshape(1, -1, hh, ww)))
    out = {("full", 0): r_pix.sum(1)[0]}
    rows = [0, 1] if getattr(model, "dist_token", None) is not None else [0]
    rows = list(range(p, n)) if model.global_pool == "avg" else rows

    grads = torch.autograd.grad(fw["logits"][0, target], [b["attn"] for b in blocks] + [fw["tok"]])
    # Average pooling: an attention with weights 1/n whose row is weighed like the blocks'
    # attentions, (grad_a * R(a))^+ (or R(a)^+), with R(a_j) token j's relevance at the pool and
    # dy/da_j = <dy/dt_j, t_j> * n.
    rel_a = r_tok[0].sum(-1)
    grad_a = (grads[-1][0] * fw["tok"][0].detach()).sum(-1) * (n - p)

    def read(joint: Tensor, residual: bool = False, weighted: bool = True) -> Tensor:
        if model.global_pool != "avg":
            return joint[rows].mean(0)[p:].reshape(hh, ww)
        if residual:  # GAE eqs. 8-9 for a readout of patch rows
            gained = joint - torch.eye(n, dtype=joint.dtype)
            joint = torch.stack([g / g.sum() if g.sum() != 0 else g for g in gained]) + torch.eye(n, dtype=joint.dtype)
        row = (grad_a * rel_a if weighted else rel_a).clamp(min=0)
        return (row @ joint)[p:].reshape(hh, ww)

    eye = torch.eye(n, dtype=torch.float64)
    for method in ("transformer_attribution", "rollout"):
        if method == "transformer_attribution":
            cams = [(grads[i][0] * r_attn[i]).clamp(min=0).mean(0) for i in range(len(blocks))]
        else:
            cams = [r_attn[i].clamp(min=0).mean(0) for i in range(len(blocks))]
        for start in range(len(blocks)):
            joint = eye
            for i in range(start, len(blocks)):
                joint = (cams[i] + eye) @ joint
            out[method, start] = read(joint, residual=True, weighted=method == "transformer_attribution")
    out["last_layer", 0] = read(cams[-1], weighted=False)
    return out


# --------------------------------------------------------------------------------- tests
@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # these tensors are tiny: a second intra-op thread only adds contention on a shared machine
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture(scope="module")
def models() -> dict[str, nn.Module]:
    return {k: make_vit(k).double() for k in ALL_VIT_KINDS}


@pytest.mark.parametrize("kind", ALL_VIT_KINDS)
def test_matches_per_example_reference(models: dict[str, nn.Module], kind: str) -> None:
    model = models[kind]
    x = input_for(model, batch=2).double()
    targets = [1, 3]
    refs = [reference(model, x[i : i + 1], t) for i, t in enumerate(targets)]
    assert set(refs[0]) == {
        (m, s) for m in METHODS for s in ((0, 1) if m in ("transformer_attribution", "rollout") else (0,))
    }
    for method, start in refs[0]:
        ours = TransformerAttribution(model, method=method, start_layer=start).attribute(
            x, target=targets, return_patch_map=True
        )
        for i, ref in enumerate(refs):
            assert_close(ours[i], ref[method, start], "fp32", f"{kind} {method} start={start} example {i}")


def _relevances(model: nn.Module, x: Tensor, target: list[int]):
    with torch.no_grad(), record_lrp_trace(model) as trace:
        model(x)
    return trace, propagate(trace, torch.tensor(target), to_pixels=True)


@pytest.mark.parametrize("kind", ["cls", "dist", "avg"])
def test_relevance_is_conserved_per_layer(models: dict[str, nn.Module], kind: str) -> None:
    # Every rule used conserves exactly up to the 1e-9 stabilisers (float64 here): the one-hot
    # relevance 1 reaches the final tokens and every block input; R(A) carries half the
    # attention branch's relevance (the A v rule halves); the zᴮ rule conserves into pixels.
    model = models[kind]
    x = input_for(model, batch=3).double()
    trace, rel = _relevances(model, x, [0, 2, 4])
    one = torch.ones(3, dtype=torch.float64)
    assert_close(rel.tokens.sum((1, 2)), one, "fp32", "final tokens")
    for i, (r_in, r_attn, r_out) in enumerate(zip(rel.block_input, rel.attention, rel.attention_output)):
        assert_close(r_in.sum((1, 2)), one, "fp32", f"block {i} input")
        assert_close(2 * r_attn.sum((1, 2, 3)), r_out.sum((1, 2)), "fp32", f"block {i} attention")
    emb = trace.embedding()
    r_tokens, r_pos = residual_relevance(emb.tokens, emb.position, rel.block_input[0][:, model.num_prefix_tokens :])
    assert_close(r_tokens.sum((1, 2)) + r_pos.sum((1, 2)), rel.block_input[0][:, model.num_prefix_tokens :].sum((1, 2)))
    assert_close(rel.pixels.sum((1, 2, 3)), r_tokens.sum((1, 2)), "fp32", "patch embedding z^B")


def test_conservation_in_float32_within_stated_tolerance() -> None:
    # float32: conservation holds to ~1e-5 relative (TOL["fp32_loose"]).
    model = make_vit("reg")
    _, rel = _relevances(model, input_for(model), [0, 1, 2])
    for r_in in rel.block_input:
        assert_close(r_in.sum((1, 2)), torch.ones(3), "fp32_loose")


def test_alpha_beta_rule_conserves_and_matches_hand_computation() -> None:
    g = torch.Generator().manual_seed(0)
    layer = LinearInput(
        torch.randn(4, 6, generator=g, dtype=torch.float64), torch.randn(5, 6, generator=g, dtype=torch.float64)
    )
    r = torch.randn(4, 5, generator=g, dtype=torch.float64)
    px, nx, pw, nw = layer.x.clamp(min=0), layer.x.clamp(max=0), layer.weight.clamp(min=0), layer.weight.clamp(max=0)
    # z⁺ conserves the relevance of outputs with some activating contribution, z⁻ of those
    # with some inhibiting one (this seed has an output with none: its relevance is absorbed).
    kept_pos = (F.linear(px, pw) + F.linear(nx, nw)) > 0
    kept_neg = (F.linear(px, nw) + F.linear(nx, pw)) < 0
    assert not kept_pos.all()
    for alpha in (1.0, 2.0):
        expected = alpha * (r * kept_pos).sum(-1) - (alpha - 1) * (r * kept_neg).sum(-1)
        assert_close(linear_relevance(layer, r, alpha).sum(-1), expected, "fp32", f"alpha={alpha}")
    # one output, x = (1, -1), w = (2, 3): activators x⁺w⁺ = 2 only -> all relevance on x_0
    one = LinearInput(torch.tensor([[1.0, -1.0]]), torch.tensor([[2.0, 3.0]]))
    assert_close(linear_relevance(one, torch.tensor([[5.0]])), torch.tensor([[5.0, 0.0]]), "exact")
    # alpha=2: inhibitor x⁻w⁺ = -3 gets -β R = -5, activator 2 R = 10
    assert_close(linear_relevance(one, torch.tensor([[5.0]]), 2.0), torch.tensor([[10.0, -5.0]]), "fp32")


@pytest.mark.parametrize("method", METHODS)
def test_batched_equals_per_example(method: str) -> None:
    model = make_vit("dist")
    x = input_for(model, batch=3)
    ta = TransformerAttribution(model, method=method, start_layer=0)
    for target in ([4, 0, 2], None):
        batched = ta.attribute(x, target=target)
        single = [ta.attribute(x[i : i + 1], target=None if target is None else target[i]) for i in range(3)]
        assert_close(batched, torch.cat(single), "fp32_loose", f"{method} target={target}")
    assert batched.abs().sum() > 0


def test_model_left_untouched_and_frozen_model_works() -> None:
    model = make_vit("cls").train()
    for p in model.parameters():
        p.requires_grad_(False)
    fused = [b.attn.fused_attn for b in model.blocks]
    x = input_for(model, batch=2)
    out = TransformerAttribution(model).attribute(x, target=1)
    assert out.abs().sum() > 0
    with pytest.raises(AttributeError):  # timm reads the extra argument as attn_mask and fails mid-forward
        TransformerAttribution(model).attribute(x, target=1, additional_forward_args=({"bad": 1},))
    assert model.training and not any(p.requires_grad for p in model.parameters())
    assert [b.attn.fused_attn for b in model.blocks] == fused
    modules = list(model.modules())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in modules)


def test_rejects_bad_arguments_and_unsupported_models() -> None:
    model = make_vit("cls")
    with pytest.raises(ValueError, match="method"):
        TransformerAttribution(model, method="partial_lrp")
    with pytest.raises(ValueError, match="start_layer"):
        TransformerAttribution(model, start_layer=2)
    with pytest.raises(ValueError, match="alpha"):
        TransformerAttribution(model, alpha=0.5)
    with pytest.raises(ValueError, match="impl"):
        TransformerAttribution(model, impl="gpu")
    with pytest.raises(TypeError, match="nn.Linear"):
        TransformerAttribution(make_vit("cls", num_classes=0))
    with pytest.raises(TypeError, match="Mlp"):
        TransformerAttribution(make_vit("cls", mlp_layer=timm.layers.SwiGLU, act_layer=nn.SiLU))
    with pytest.raises(ValueError, match="pool"):
        TransformerAttribution(make_vit("avg", global_pool="map"))


def test_trace_recomputes_attention_bit_for_bit_and_autograd_holds_none() -> None:
    # The float32 maps are sensitive to the forward's rounding (LRP's divisions by sums near
    # zero amplify it), so the trace must see exactly timm's explicit attention: the same
    # probabilities bit for bit, and ∂y/∂A = (∂y/∂O) vᵀ equal to autograd's ∂y/∂A.
    model = make_vit("reg")
    x = input_for(model, batch=2)
    with record_attention(model) as rec:
        logits = model(x)
        probs = [a for a in rec.attentions if a is not None]
        want = torch.autograd.grad(logits[:, 1].sum(), probs)
    seen: list[Tensor] = []
    handles = [b.attn.attn_drop.register_forward_hook(lambda _m, _i, out: seen.append(out)) for b in model.blocks]
    try:
        with record_lrp_trace(model) as trace:
            logits = model(x)
            # autograd keeps a recomputed copy of each block's probabilities, not the forward's
            saved = [f._saved_result for f in _graph_nodes(logits.grad_fn) if type(f).__name__ == "SoftmaxBackward0"]
            assert len(saved) == len(model.blocks)
            assert {t.data_ptr() for t in saved}.isdisjoint(a.data_ptr() for a in seen)
            outs = [trace.attention_output(i) for i in range(len(model.blocks))]
            grads = torch.autograd.grad(logits[:, 1].sum(), outs)
    finally:
        for h in handles:
            h.remove()
    for i, (blk, g, p, w) in enumerate(zip(trace.blocks(), grads, probs, want)):
        assert torch.equal(blk.probabilities(), p.detach()), f"block {i} probabilities"
        assert_close(blk.split_heads(g) @ blk.v.transpose(-1, -2), w, "fp32", f"block {i} gradient")


def _graph_nodes(root) -> list:
    seen, stack = [], [root]
    while stack:
        node = stack.pop()
        if node is not None and node not in seen:
            seen.append(node)
            stack += [f for f, _ in node.next_functions]
    return seen
