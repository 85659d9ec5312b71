"""Attention probabilities and their gradients without timm's explicit attention path.

Hooks that read a ViT's attention probabilities need them materialised: timm's explicit path
(:meth:`ViTAdapter.explicit_attention`) computes ``softmax(q kᵀ · scale)`` as a
``(B, heads, N, N)`` tensor per block, and autograd keeps every block's for the backward pass:
``O(blocks · N²)`` memory and, at large token counts, a slower forward and backward than the
fused ``scaled_dot_product_attention`` kernel.

A method that needs, per block, only a reduction of the probabilities ``A`` and of their
gradient ``∂y/∂A`` (GAE's ``mean_h((∇A ⊙ A)^+)``, docs/methods.md §9) can run the fused
kernel instead and recompute both when the block's backward step arrives: ``A`` from the
block's ``q`` and ``k`` (as timm's explicit path computes it), and ``∂y/∂A = (∂y/∂O) vᵀ`` from
the gradient of the attention output ``O = A v``. One block's probabilities exist at a time,
and autograd keeps what the fused kernel keeps (:func:`attention_gradients`). A method that
needs a reduction of the probabilities only in a forward pass (rollout's head fusion, raw
attention) computes them on the explicit path a slice of query rows at a time, reducing each
slice while it is in cache (:func:`attention_reductions`); a method that reads one block runs
the others fused (:func:`fused_attention`).

This applies to blocks whose attention is timm's standard ``Attention`` (ViT, DeiT, DINOv2,
CLIP, SigLIP, FlexiViT, ... ; :func:`recomputes_attention`); other families keep the explicit
path. Like every hook in :mod:`captum_vit.models.hooks`, the context instruments the model it
is given (a method's private view), and restores the fused-attention flags on exit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from typing import Any

import torch
from timm.layers.attention import Attention
from torch import Tensor, nn

from captum_vit.models.hooks import removing_hooks
from captum_vit.models.vit import ViTAdapter


def recomputes_attention(adapter: ViTAdapter) -> bool:
    """Whether every block's attention is timm's standard ``Attention``, whose probabilities
    :func:`attention_gradients` can recompute from ``q`` and ``k`` (in eval mode, or with no
    attention dropout).

    Examples
    --------
    >>> import timm
    >>> m = timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=2, img_size=32)
    >>> recomputes_attention(ViTAdapter(m.eval()))
    True
    """
    attentions = [getattr(b, "attn", None) for b in adapter.blocks]
    return all(
        type(a) is Attention and (not a.training or a.attn_drop.p == 0) and getattr(a, "gate", None) is None
        for a in attentions
    )


def _additive_mask(n: int, like: Tensor, attn_mask: Tensor | None, is_causal: bool) -> Tensor | None:
    """The additive bias ``scaled_dot_product_attention`` applies for ``attn_mask`` /
    ``is_causal`` (``-inf`` where a boolean mask is ``False``)."""
    if is_causal:
        return like.new_full((n, n), float("-inf")).triu_(1)
    if attn_mask is None:
        return None
    if attn_mask.dtype == torch.bool:
        return torch.zeros_like(attn_mask, dtype=like.dtype).masked_fill_(~attn_mask, float("-inf"))
    return attn_mask


#: floats per slice of probabilities computed at a time on a CPU (~1 MB: in cache)
SLICE_FLOATS = 2**18
#: the same on a GPU (256 MB: whole blocks for most models and batches)
CUDA_SLICE_FLOATS = 2**26


def _slice_floats(device: torch.device) -> int:
    """Floats per slice: :data:`SLICE_FLOATS` on a CPU (cache-sized), :data:`CUDA_SLICE_FLOATS`
    on a GPU (where few large kernels beat many cache-sized ones)."""
    return CUDA_SLICE_FLOATS if device.type == "cuda" else SLICE_FLOATS


def _row_slices(q: Tensor, k: Tensor, scale: float, mask: Tensor | None) -> Iterator[tuple[slice, slice, Tensor]]:
    """``(images, rows, probabilities)`` for slices of about :func:`_slice_floats` floats,
    ``(images, heads, rows, N)``: whole images while one fits, else a slice of one image's
    query rows; as :func:`~captum_vit.models.vit.probabilities` computes them (``q · scale`` and a contiguous ``kᵀ``
    made once per group of images)."""
    b, h, n, _ = q.shape
    budget = _slice_floats(q.device)
    per_image = h * n * n
    images = max(1, budget // per_image) if per_image <= budget else 1
    rows = n if per_image <= budget else max(1, budget // (h * n))
    masks = None if mask is None else mask.expand(b, h, n, n)
    for j in range(0, b, images):
        js = slice(j, min(b, j + images))
        qs, kt = q[js] * scale, k[js].transpose(-2, -1).contiguous()
        for s in range(0, n, rows):
            sl = slice(s, min(n, s + rows))
            scores = qs[:, :, sl] @ kt
            if masks is not None:
                scores = scores + masks[js, :, sl]
            yield js, sl, scores.softmax(dim=-1)


def _assembled(
    q: Tensor, k: Tensor, scale: float, mask: Tensor | None, per_slice: Callable[[slice, slice, Tensor], Tensor]
) -> Tensor:
    """``per_slice(images, rows, probabilities)`` ``(images, rows, N)`` for every slice of
    :func:`_row_slices`, assembled into ``(B, N, N)`` (returned as it is when one slice covers
    the whole block)."""
    b, _, n, _ = q.shape
    out: Tensor | None = None
    for js, rows, p in _row_slices(q, k, scale, mask):
        r = per_slice(js, rows, p)
        if r.shape[:2] == (b, n):  # the only slice
            return r
        if out is None:
            out = r.new_empty((b, n, n))
        out[js, rows] = r
    assert out is not None
    return out


def _sliced(
    q: Tensor, k: Tensor, v: Tensor, grad_out: Tensor, scale: float, mask: Tensor | None, reduce: Reduce
) -> Tensor:
    """``reduce(A, (∂y/∂O) vᵀ)`` for every query row, ``(B, N, N)``, computed a slice of
    images and rows at a time (:func:`_assembled`)."""
    group: dict[str, Tensor] = {}

    def per_slice(js: slice, rows: slice, p: Tensor) -> Tensor:
        if rows.start == 0:  # a new group of images: its operands made contiguous once
            group.update(vt=v[js].transpose(-2, -1).contiguous(), go=grad_out[js].contiguous())
        return reduce(p, group["go"][:, :, rows] @ group["vt"])

    return _assembled(q, k, scale, mask, per_slice)


@contextmanager
def fused_attention(adapter: ViTAdapter, blocks: Sequence[int] | None = None) -> Iterator[None]:
    """Run ``blocks``' attention (default: every block's) through the fused kernel for the
    duration, also inside :meth:`ViTAdapter.explicit_attention` (restored on exit); the model
    is a method's private view. timm's standard attention only (:func:`recomputes_attention`).

    Examples
    --------
    >>> import timm
    >>> m = timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=3, img_size=32).eval()
    >>> adapter = ViTAdapter(m)
    >>> with adapter.explicit_attention(), fused_attention(adapter, blocks=range(2)):
    ...     [a.fused_attn for a in adapter.attentions]
    [True, True, False]
    """
    saved = [a.fused_attn for a in adapter.attentions]
    chosen = range(adapter.num_blocks) if blocks is None else blocks
    try:
        for i in chosen:
            adapter.attentions[i].fused_attn = True
        yield
    finally:
        for a, flag in zip(adapter.attentions, saved):
            a.fused_attn = flag


#: ``reduce(probabilities, grad) -> (B, rows, N)``: what a method keeps of a slice of query
#: rows of a block's ``(B, heads, rows, N)`` probabilities and gradient (both may be overwritten).
Reduce = Callable[[Tensor, Tensor], Tensor]


@contextmanager
def attention_gradients(
    adapter: ViTAdapter, reduce: Reduce, on_grad: Callable[[int, Tensor], None]
) -> Iterator[list[Tensor | None]]:
    """Hand ``reduce`` of each block's attention probabilities and their gradient,
    ``(B, N, N)``, to ``on_grad(block, reduced)`` during a backward pass, last block first,
    while the forward and backward run the fused attention kernel.

    Both are recomputed a slice of images or query rows at a time (about
    :data:`SLICE_FLOATS` floats on a CPU, so that a slice stays in the processor's cache
    through ``reduce``; :data:`CUDA_SLICE_FLOATS` on a GPU), and ``reduce`` applies to each
    slice: it must work row by row (a reduction over heads does).

    Yields a list with one entry per block: the block's attention output ``O = A v`` (heads
    merged, ``(B, N, heads · head_dim)``, in the autograd graph) once a forward pass reached
    it. Take the gradient of a score with respect to block 0's entry to run every block's
    hook (``torch.autograd.grad``; nothing accumulates into ``.grad``). The probabilities are
    recomputed from ``q`` and ``k`` as timm's explicit path computes them; the gradient is
    ``(∂y/∂O) vᵀ`` per head, which equals autograd's gradient on the explicit path up to the
    rounding of the fused backward.

    Raises
    ------
    TypeError
        If a block's attention is not timm's ``Attention`` (see :func:`recomputes_attention`).

    Examples
    --------
    >>> import timm
    >>> m = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3,
    ...                       depth=2, img_size=32).eval()
    >>> x = torch.rand(2, 3, 32, 32)
    >>> seen = []
    >>> def head_mean(a, g):
    ...     return (a * g).mean(dim=1)
    >>> with attention_gradients(ViTAdapter(m), head_mean, lambda i, r: seen.append((i, r.shape))) as outs:
    ...     _ = torch.autograd.grad(m(x)[:, 0].sum(), outs[0])
    >>> seen
    [(1, torch.Size([2, 5, 5])), (0, torch.Size([2, 5, 5]))]
    """
    if not recomputes_attention(adapter):
        raise TypeError("attention_gradients needs timm's standard Attention in every block, in eval mode")
    n = adapter.num_blocks
    outputs: list[Tensor | None] = [None] * n
    inputs: list[dict[str, Any]] = [{} for _ in range(n)]

    def on_call(i: int) -> Callable[..., None]:
        def hook(_m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            mask, causal = kwargs.get("attn_mask"), bool(kwargs.get("is_causal", False))
            if mask is None and len(args) > 1:
                mask = args[1]
            inputs[i].clear()
            inputs[i].update(mask=mask, causal=causal)

        return hook

    def keep(i: int, key: str) -> Callable[..., None]:
        def hook(_m: nn.Module, _inp: tuple[Tensor, ...], out: Tensor) -> None:
            inputs[i][key] = out.detach()

        return hook

    def keep_v(i: int, a: Any) -> Callable[..., None]:
        def hook(_m: nn.Module, _inp: tuple[Tensor, ...], out: Tensor) -> None:
            b, t, _ = out.shape
            inputs[i]["v"] = out.detach().reshape(b, t, 3, a.num_heads, a.head_dim)[:, :, 2].transpose(1, 2)

        return hook

    def on_output(i: int, a: Any) -> Callable[..., None]:
        def hook(_m: nn.Module, inp: tuple[Tensor, ...]) -> None:
            out = inp[0]
            outputs[i] = out
            if not out.requires_grad:
                return
            # a one-shot holder: the graph must not keep q, k, v alive after the hook ran
            held = [inputs[i].copy()]

            def on_backward(g: Tensor) -> None:
                if not held:
                    return
                saved = held.pop()
                q, k, v = saved["q"], saved["k"], saved["v"]
                b, t, _ = g.shape
                grad_out = g.reshape(b, t, a.num_heads, a.head_dim).transpose(1, 2)
                mask = _additive_mask(t, q, saved["mask"], saved["causal"])
                on_grad(i, _sliced(q, k, v, grad_out, a.scale, mask, reduce))

            out.register_hook(on_backward)

        return hook

    with fused_attention(adapter), removing_hooks() as handles:
        for i, a in enumerate(adapter.attentions):
            handles += [
                a.register_forward_pre_hook(on_call(i), with_kwargs=True),
                a.qkv.register_forward_hook(keep_v(i, a)),
                a.q_norm.register_forward_hook(keep(i, "q")),
                a.k_norm.register_forward_hook(keep(i, "k")),
                a.norm.register_forward_pre_hook(on_output(i, a)),
            ]
        yield outputs


def _reducing_forward(
    self: Any,
    keep: Callable[[Tensor], None],
    reduce: Callable[[Tensor], Tensor],
    x: Tensor,
    attn_mask: Tensor | None = None,
    is_causal: bool = False,
) -> Tensor:
    """timm ``Attention.forward`` on its explicit path, a slice of images or query rows at a
    time (the slice's probabilities stay in cache for ``A v`` and ``reduce``); hands the
    ``(B, N, N)`` result of ``reduce`` to ``keep``. Eval mode without attention gates
    (:func:`recomputes_attention`)."""
    b, n, _ = x.shape
    qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    q, k = self.q_norm(q), self.k_norm(k)
    mask = _additive_mask(n, q, attn_mask, is_causal)
    out = v.new_empty(b, self.num_heads, n, self.head_dim)
    group: dict[str, Tensor] = {}

    def per_slice(js: slice, rows: slice, p: Tensor) -> Tensor:
        if rows.start == 0:  # a new group of images: its values made contiguous once
            group["v"] = v[js].contiguous()
        out[js, :, rows] = p @ group["v"]
        return reduce(p)

    keep(_assembled(q, k, self.scale, mask, per_slice))
    y = self.norm(out.transpose(1, 2).reshape(b, n, -1))
    return self.proj_drop(self.proj(y))  # type: ignore[no-any-return]


@contextmanager
def attention_reductions(
    adapter: ViTAdapter, reduce: Callable[[Tensor], Tensor], blocks: tuple[int, ...]
) -> Iterator[list[Tensor | None]]:
    """A forward pass without gradients in which each of ``blocks``' attention hands
    ``reduce`` of its probabilities, ``(B, N, N)``, to the yielded list (one entry per block,
    ``None`` for the others), a slice of images or query rows at a time (about
    :data:`SLICE_FLOATS` floats on a CPU, :data:`CUDA_SLICE_FLOATS` on a GPU): on a CPU no
    block's ``(B, heads, N, N)`` probabilities exist at once, and they are read while in cache.
    ``reduce`` must work row by row (a reduction over heads does). The other blocks run the
    fused kernel.

    The blocks' forward is replaced on the model it is given (a method's private view) for the
    duration, by timm's explicit path computed in slices (the same operations; the outputs
    match the unsliced path up to rounding).

    Raises
    ------
    TypeError
        If a block's attention is not timm's ``Attention`` (see :func:`recomputes_attention`).
    RuntimeError
        If called with gradients enabled (the sliced forward is not meant to be differentiated).

    Examples
    --------
    >>> import timm
    >>> m = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3,
    ...                       depth=2, img_size=32).eval()
    >>> with torch.no_grad(), attention_reductions(ViTAdapter(m), lambda a: a.mean(1), (1,)) as kept:
    ...     _ = m(torch.rand(2, 3, 32, 32))
    >>> kept[0] is None, tuple(kept[1].shape)
    (True, (2, 5, 5))
    """
    if not recomputes_attention(adapter):
        raise TypeError("attention_reductions needs timm's standard Attention in every block, in eval mode")
    if torch.is_grad_enabled():
        raise RuntimeError("attention_reductions runs without gradients (use torch.no_grad())")
    kept: list[Tensor | None] = [None] * adapter.num_blocks
    patched = [adapter.attentions[i] for i in blocks]
    try:
        for i, a in zip(blocks, patched):
            a.forward = partial(_reducing_forward, a, partial(kept.__setitem__, i), reduce)
        with fused_attention(adapter):
            yield kept
    finally:
        for a in patched:
            a.__dict__.pop("forward", None)
