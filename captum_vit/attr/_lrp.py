"""Layer-wise relevance propagation through a recorded timm ViT forward pass.

The rules are those of Chefer, Gur & Wolf's LRP-instrumented ViT (docs/methods.md §9; their
``baselines/ViT/ViT_LRP.py`` and ``modules/layers_ours.py``), written as explicit tensor
expressions over a :class:`~captum_vit.models.lrp_trace.LRPTrace` instead of ``relprop``
methods on a copied model:

* ``nn.Linear``: the αβ rule (Bach et al. 2015) with α = 1, β = 0 by default (z⁺); bias ignored.
* residual additions: the z-rule split followed by Chefer's re-normalisation, which gives each
  summand a share of the total proportional to the absolute value of its own total;
* the two attention products ``q kᵀ`` and ``A v``: the z-rule to both operands, each half of
  the relevance (so the pair conserves);
* softmax, LayerNorm, GELU, dropout, layer scale, drop path: relevance passes unchanged;
* token pooling: the z-rule over the pooled rows; the patch-embedding convolution (``full``
  only): the zᴮ rule bounded by the image's minimum and maximum, as Chefer's first ``Conv2d``.

Unlike the original, every sum in the residual re-normalisation is taken per example (the
original sums over the whole batch, one reason it needs batch size 1), and the stabiliser
follows the sign of the denominator (the original adds +1e-9 whatever the sign).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.grad import conv2d_input

from captum_vit.models.lrp_trace import BlockTrace, EmbeddingTrace, LinearInput, LRPTrace

EPS = 1e-9
_T = TypeVar("_T")


def safe_divide(a: Tensor, b: Tensor, eps: float = EPS) -> Tensor:
    """``a / (b ± eps)`` with the sign of ``b``, and 0 where ``b == 0``.

    Examples
    --------
    >>> safe_divide(torch.tensor([1.0, 1.0, 1.0]), torch.tensor([2.0, 0.0, -4.0]))
    tensor([ 0.5000,  0.0000, -0.2500])
    """
    den = b.sign().mul_(eps).add_(b)  # 0 where b == 0: masked below
    in_place = a.shape == den.shape and torch.result_type(a, den) == den.dtype
    out = torch.div(a, den, out=den) if in_place else a / den
    return out.masked_fill_(b == 0, 0.0)


def linear_relevance(layer: LinearInput, r: Tensor, alpha: float = 1.0) -> Tensor:
    """The αβ rule through ``y = x Wᵀ``: relevance ``r`` of ``y`` → relevance of ``x``.

    Activating contributions (``x⁺W⁺ + x⁻W⁻``) get weight α, inhibiting ones β = α - 1.
    With α = 1 it conserves: ``r_in.sum(-1) == r.sum(-1)`` wherever the positive part is
    non-zero.

    Examples
    --------
    >>> from captum_vit.models.lrp_trace import LinearInput
    >>> lay = LinearInput(torch.tensor([[1.0, 2.0]]), torch.tensor([[1.0, -1.0], [1.0, 1.0]]))
    >>> linear_relevance(lay, torch.tensor([[0.0, 3.0]]))
    tensor([[1., 2.]])
    """
    x, w = layer.x, layer.weight
    rows = x.reshape(-1, x.shape[-1])
    px, nx, pw, nw = rows.clamp(min=0), rows.clamp(max=0), w.clamp(min=0), w.clamp(max=0)
    r2 = r.reshape(-1, r.shape[-1])
    out = _share(px, nx, pw, nw, r2, activating=True)
    if alpha != 1.0:
        out = alpha * out - (alpha - 1.0) * _share(px, nx, nw, pw, r2, activating=False)
    return out.reshape(*x.shape)


def _share(px: Tensor, nx: Tensor, w_pos: Tensor, w_neg: Tensor, r: Tensor, activating: bool) -> Tensor:
    """``px ⊙ (s W₊) + nx ⊙ (s W₋)`` with ``s = r / (px W₊ᵀ + nx W₋ᵀ)``, for 2-D rows."""
    z = (px @ w_pos.t()).addmm_(nx, w_neg.t())
    if activating:
        # Every term of z is >= 0, so z >= 0, and z == 0 only where every term x_i w_i is 0:
        # there s = r / eps meets only zero factors below, which is why no mask is needed.
        s = torch.div(r, z.add_(EPS), out=z)
    else:
        s = safe_divide(r, z)
    return (s @ w_pos).mul_(px).addcmul_(nx, s @ w_neg)


def residual_relevance(a: Tensor, b: Tensor, r: Tensor) -> tuple[Tensor, Tensor]:
    """Split the relevance ``r`` of ``a + b`` between the summands (Chefer's ``Add``).

    The z-rule gives ``a r/(a+b)`` and ``b r/(a+b)``; each is then rescaled so that, per
    example, the summands' totals are ``|Σa'| / (|Σa'| + |Σb'|) · Σr`` and likewise for b.
    """
    s = safe_divide(r, a + b)
    ra = a * s
    rb = s.mul_(b)
    dims = tuple(range(1, r.dim()))
    sa, sb, total = ra.sum(dims, keepdim=True), rb.sum(dims, keepdim=True), r.sum(dims, keepdim=True)
    den = sa.abs() + sb.abs()
    share_a, share_b = safe_divide(sa.abs(), den) * total, safe_divide(sb.abs(), den) * total
    return ra.mul_(safe_divide(share_a, sa)), rb.mul_(safe_divide(share_b, sb))


def product_relevance(x: Tensor, y: Tensor, r: Tensor, z: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """z-rule through the batched product ``z = x @ y`` (pass ``z`` if the forward pass
    computed it), halved per operand so their sum conserves (Chefer's ``einsum`` relprop
    followed by ``/= 2`` in ``Attention.relprop``)."""
    s = safe_divide(r, x @ y if z is None else z)
    return (s @ y.transpose(-1, -2)).mul_(x).div_(2), (x.transpose(-1, -2) @ s).mul_(y).div_(2)


@dataclass
class Relevances:
    """Relevance at each recorded point, per example, all float tensors.

    ``block_input[l]`` (B, N, D) enters block ``l``; ``attention[l]`` (B, heads, N, N) is
    R(A_l); ``attention_output[l]`` (B, N, D) is the attention branch's relevance. Lists are
    indexed by block; blocks below ``stop_at`` are ``None``. ``tokens`` (B, N, D) is at the
    final norm; ``pixels`` (B, C, H, W) only for ``to_pixels=True``.
    """

    tokens: Tensor
    block_input: list[Tensor | None]
    attention: list[Tensor | None]
    attention_output: list[Tensor | None]
    pixels: Tensor | None = None


def pooling_relevance(tokens: Tensor, weights: Tensor, r: Tensor) -> Tensor:
    """z-rule through ``pooled = Σ_t w_t tokens_t``: ``(B, D)`` → ``(B, N, D)``."""
    z = torch.einsum("n,bnd->bd", weights, tokens)
    return weights[None, :, None] * tokens * safe_divide(r, z)[:, None, :]


def block_relevance(
    blk: BlockTrace, r: Tensor, alpha: float = 1.0, need_input: bool = True
) -> tuple[Tensor | None, Tensor, Tensor]:
    """Relevance of a block's input from that of its output.

    Returns ``(r_input, r_attention, r_attention_output)``: ``(B, N, D)``,
    ``(B, heads, N, N)`` and ``(B, N, D)``. Mirrors Chefer's ``Block.relprop``. With
    ``need_input=False`` the pass stops at R(A) (``r_input`` is ``None``): the rule through
    ``q kᵀ`` and the q/k/v projection are skipped.
    """
    # Token-wise layers pass no relevance between tokens, and a token without relevance
    # gets none from them: the last block of a token readout works on the readout rows only.
    rows = _rows_with_relevance(r)
    tok = (lambda t: t) if rows is None else (lambda t: t.index_select(1, rows))  # noqa: E731
    r_mid, r_mlp = residual_relevance(tok(blk.mid), tok(blk.mlp_branch), tok(r))
    r_hidden = linear_relevance(LinearInput(tok(blk.fc2.x), blk.fc2.weight), r_mlp, alpha)  # layer scale, dropout pass
    r_mid += linear_relevance(LinearInput(tok(blk.fc1.x), blk.fc1.weight), r_hidden, alpha)  # GELU, norm2 pass
    r_x, r_branch = residual_relevance(tok(blk.x), tok(blk.attn_branch), r_mid)
    r_o = linear_relevance(LinearInput(tok(blk.proj.x), blk.proj.weight), r_branch, alpha)
    if rows is not None:
        r_x, r_branch, r_o = (
            r.new_zeros(*r.shape[:2], t.shape[-1]).index_copy_(1, rows, t) for t in (r_x, r_branch, r_o)
        )
    r_heads = blk.split_heads(r_o)
    r_attn, r_v = product_relevance(blk.probabilities(), blk.v, r_heads, blk.split_heads(blk.attention_output))
    if not need_input:
        return None, r_attn, r_branch
    # softmax and attention dropout pass relevance; q kᵀ gets R(A) (the 1/sqrt(d) scale
    # cancels in the z-rule).
    r_q, r_k = product_relevance(blk.q, blk.k.transpose(-1, -2), r_attn)
    r_norm1 = linear_relevance(blk.qkv, blk.merge_qkv(r_q, r_k.transpose(-1, -2), r_v), alpha)
    return r_x.add_(r_norm1), r_attn, r_branch


def _rows_with_relevance(r: Tensor) -> Tensor | None:
    """Indices of the token rows of ``r`` ``(B, N, D)`` non-zero in some example, or ``None``
    when every row is."""
    rows = r.ne(0).any(dim=-1).any(dim=0)
    return None if bool(rows.all()) else rows.nonzero().squeeze(1)


def embedding_relevance(emb: EmbeddingTrace, r_patches: Tensor) -> Tensor:
    """Patch-token relevance ``(B, h*w, D)`` → pixel relevance ``(B, C, H, W)``.

    The position embedding takes its residual share first; the convolution uses the zᴮ
    rule (Montavon et al. 2017) with bounds the per-example min and max of the image.
    """
    r_tokens, _ = residual_relevance(emb.tokens, emb.position, r_patches)
    r = emb.tokens_to_map(r_tokens)
    x, w = emb.image, emb.weight
    low = x.amin(dim=(1, 2, 3), keepdim=True).expand_as(x)
    high = x.amax(dim=(1, 2, 3), keepdim=True).expand_as(x)
    pw, nw = w.clamp(min=0), w.clamp(max=0)

    def conv(t: Tensor, k: Tensor) -> Tensor:
        return F.conv2d(t, k, stride=emb.stride, padding=emb.padding)

    def back(s: Tensor, k: Tensor) -> Tensor:
        return conv2d_input(x.shape, k, s, stride=emb.stride, padding=emb.padding)

    s = safe_divide(r, conv(x, w) - conv(low, pw) - conv(high, nw))
    return x * back(s, w) - low * back(s, pw) - high * back(s, nw)


def head_relevance(trace: LRPTrace, target: Tensor, alpha: float = 1.0) -> Tensor:
    """Relevance ``(B, N, D)`` at the final-norm tokens of the one-hot logit of class
    ``target`` ``(B,)``, through the head(s) and the token pooling (float32 or float64)."""
    heads = trace.heads()
    tokens = trace.tokens
    dtype = relevance_dtype(tokens.dtype)
    one_hot = F.one_hot(target.to(tokens.device), heads[0].logits.shape[-1]).to(dtype)
    if len(heads) == 2:
        rs = list(residual_relevance(heads[0].logits.to(dtype) / 2, heads[1].logits.to(dtype) / 2, one_hot))
    else:
        rs = [one_hot]
    r = torch.zeros_like(tokens, dtype=dtype)
    for head, r_logits in zip(heads, rs):  # fc_norm and head dropout pass relevance
        r_pooled = linear_relevance(cast_trace(head.linear, dtype), r_logits, alpha)
        r = r + pooling_relevance(tokens.to(dtype), head.pool_weights.to(dtype), r_pooled)
    return r


def relevance_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half precision (relevance accumulates in float32), else ``dtype``."""
    return torch.promote_types(dtype, torch.float32)


def propagate(
    trace: LRPTrace, target: Tensor, alpha: float = 1.0, stop_at: int = 0, to_pixels: bool = False
) -> Relevances:
    """Propagate the one-hot relevance of class ``target`` ``(B,)`` from the logits down to
    block ``stop_at`` (and, with ``to_pixels``, through the embedding to the image), keeping
    every block's relevances (Transformer Attribution itself streams over the blocks)."""
    r = head_relevance(trace, target, alpha)
    dtype = r.dtype
    n = len(trace.raw_blocks)
    out = Relevances(tokens=r, block_input=[None] * n, attention=[None] * n, attention_output=[None] * n)
    for i in range(n - 1, stop_at - 1, -1):  # final norm: pass-through
        r_in, r_attn, r_branch = block_relevance(cast_trace(trace.block(i), dtype), r, alpha)
        assert r_in is not None
        r = out.block_input[i] = r_in
        out.attention[i], out.attention_output[i] = r_attn, r_branch
    if to_pixels:
        if stop_at != 0:
            raise ValueError("to_pixels needs stop_at=0")
        out.pixels = pixel_relevance(trace, r)
    return out


def pixel_relevance(trace: LRPTrace, r_input: Tensor) -> Tensor:
    """Block 0's input relevance ``(B, N, D)`` → pixel relevance ``(B, C, H, W)``."""
    emb = trace.embedding()
    p = trace.adapter.num_prefix_tokens
    # norm_pre and patch dropout pass relevance; prefix tokens' relevance is dropped
    # (Chefer keeps cam[:, 1:]).
    return embedding_relevance(cast_trace(emb, r_input.dtype), r_input[:, p:])


def cast_trace(obj: _T, dtype: torch.dtype) -> _T:
    """A copy of a trace dataclass with every floating tensor (nested ones too) in ``dtype``
    (half-precision models are propagated in float32)."""
    changes: dict[str, object] = {}
    for f in fields(obj):  # type: ignore[arg-type]
        v = getattr(obj, f.name)
        if isinstance(v, Tensor) and v.is_floating_point():
            changes[f.name] = v.detach().to(dtype)
        elif isinstance(v, LinearInput):
            changes[f.name] = cast_trace(v, dtype)
    return replace(obj, **changes)  # type: ignore[type-var]
