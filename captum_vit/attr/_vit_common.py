"""Shared steps of the attention-graph methods: record attention (and its gradient with
respect to the target score) and read a token-relevance matrix at the classifier's rows.

Two ways to record. :meth:`AttentionAttribution._attentions` keeps every block's
``(B, heads, N, N)`` attention (and gradient), for methods that need them all at once.
:meth:`AttentionAttribution._fused_attentions` and :meth:`AttentionAttribution._gradient_cams`
keep only what a method reads: each block's head-reduced ``(B, N, N)`` matrix, reduced in the
hook as the block runs (forward) or as its gradient arrives (backward), or only the readout
row of a product of them, accumulated block by block."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from typing import Any, ClassVar

import torch
from torch import Tensor

from captum_vit.attr._base import MapAttribution
from captum_vit.kernels._common import accumulation_dtype
from captum_vit.models.hooks import AttentionRecord, record_attention
from captum_vit.models.recomputed_attention import attention_gradients, attention_reductions, recomputes_attention
from captum_vit.models.vit import ViTAdapter


@dataclass(frozen=True)
class Attentions:
    """What one forward (and backward) pass recorded, detached.

    ``attn`` ``(L, B, heads, N, N)``: every block's attention; ``grad``: its gradient with
    respect to the target score (gradient methods only). ``pool`` ``(B, heads, N)``: the
    weights with which the classifier pools the final tokens, and ``pool_grad`` the target
    score's gradient with respect to them: an attention-pooled model's probe attention
    (``global_pool='map'``), or, for average pooling with gradients, the uniform weights
    (one "head"; ``∂y/∂a_j = n ⟨∂y/∂t_j, t_j⟩`` for the ``n`` pooled tokens ``t_j``);
    ``None`` for token readouts.
    """

    attn: Tensor
    grad: Tensor | None = None
    pool: Tensor | None = None
    pool_grad: Tensor | None = None


#: ``product=`` values of the rollout-style methods: the readout rows only, or the whole matrix.
PRODUCTS = ("row", "full")


def check_product(product: str) -> str:
    """Validate a ``product=`` argument; return it.

    Examples
    --------
    >>> check_product("row")
    'row'
    """
    if product not in PRODUCTS:
        raise ValueError(f"product must be one of {PRODUCTS}, got {product!r}")
    return product


def residual_normalized(relevance: Tensor) -> Tensor:
    """GAE's eqs. (8)-(9) (Chefer, Gur & Wolf, ICCV 2021): ``R̄ = norm_rows(R − I) + I``.

    ``R = I + (relevance gained through attention)`` gives every token the same unit of
    self-relevance (its residual path), which carries nothing about the class. Where several
    token rows are read together (average or attention pooling) that identity would dominate
    the map; the official code applies this normalisation where a query reads a
    self-attention relevance (its rule 10). Rows whose attention part is zero stay as ``I``.

    Examples
    --------
    >>> r = torch.tensor([[[1.0, 0.2], [0.0, 1.5]]])
    >>> residual_normalized(r)
    tensor([[[1., 1.],
             [0., 2.]]])
    """
    eye = torch.eye(relevance.shape[-1], dtype=relevance.dtype, device=relevance.device)
    gained = relevance - eye
    total = gained.sum(dim=-1, keepdim=True)
    return torch.where(total == 0, gained, gained / torch.where(total == 0, 1, total)) + eye


def residual_normalized_rows(weights: Tensor, cams: Sequence[Tensor]) -> Tensor:
    """``weights @ residual_normalized(R)`` for GAE's ``R = (I + C_{L-1}) ... (I + C_0)``
    (``cams`` ``C_l`` ``(B, N, N)``, non-negative, in block order; ``weights`` ``(B, N)``),
    in ``O(L N^2)`` without forming ``R``.

    The row sums of the gained part, ``t = (R - I) 1``, accumulate in block order
    (``t <- t + C_l (1 + t)``); with ``u = w / t`` (``t = 0`` rows stay unscaled, as in
    :func:`residual_normalized`) the gained rows ``u (R - I)`` accumulate from the last block
    down (``g <- g + (u + g) C_l``), and the result is ``g + w``. Every step adds non-negative
    terms, so, unlike ``R - I`` in floating point, nothing cancels.

    Examples
    --------
    >>> c = [torch.rand(1, 4, 4), torch.rand(1, 4, 4)]
    >>> r = (torch.eye(4) + c[1]) @ (torch.eye(4) + c[0])
    >>> w = torch.full((1, 4), 0.25)
    >>> torch.allclose(residual_normalized_rows(w, c), w @ residual_normalized(r), atol=1e-6)
    True
    """
    t = torch.zeros_like(weights)
    for cam in cams:
        t = t + torch.bmm(cam, (1 + t)[..., None])[..., 0]
    u = weights / torch.where(t == 0, 1, t)
    g = torch.zeros_like(weights)
    for cam in reversed(cams):
        g = g + torch.bmm((u + g)[:, None], cam)[:, 0]
    return g + weights


class AttentionAttribution(MapAttribution):
    """Base of methods reading a timm ViT's attention probabilities."""

    model_kinds: ClassVar[tuple[str, ...]] = ("vit",)

    @property
    def vit(self) -> ViTAdapter:
        """The ViT adapter (of this call's private view inside ``attribute``)."""
        assert isinstance(self.adapter, ViTAdapter)
        return self.adapter

    def _check_readout(self) -> None:
        _ = self.vit.readout  # raises ValueError for unsupported pooling

    def _attentions(
        self, x: Tensor, target: Tensor | None, forward_args: tuple[Any, ...], gradients: bool
    ) -> Attentions:
        """Every block's attention (and the pool's probe attention) and, if ``gradients``,
        their gradients with respect to the target scores (``torch.autograd.grad``: nothing
        accumulates into the model's ``.grad``)."""
        self._check_readout()
        if not gradients:
            with torch.no_grad(), record_attention(self.vit, detach=True) as rec:
                self._forward(x, forward_args)
            attn = rec.stacked()
            dt = accumulation_dtype(attn.dtype)
            pool = rec.pool[:, :, 0].to(dt) if rec.pool is not None else None
            return Attentions(attn.to(dt), pool=pool)
        ro = self.vit.readout
        average = ro.rows is None and not ro.attention_pool
        with record_attention(self.vit, tokens=average) as rec:
            logits = self._forward(x.requires_grad_(True), forward_args)
            score, _ = self._target_score(logits, target)
            atts = [a for a in rec.attentions if a is not None]
            pooled: list[Tensor] = []  # what the pooling weights multiply: probe attention or tokens
            if rec.pool is not None:
                pooled = [rec.pool]  # (B, heads, 1, N): sliced after the gradient is taken
            elif average and rec.tokens is not None:
                pooled = [rec.tokens]
            grads = torch.autograd.grad(score, atts + pooled, allow_unused=True)
        grads = tuple(g if g is not None else torch.zeros_like(a) for a, g in zip(atts + pooled, grads))
        # Relevance and rollout products accumulate in float32 whatever the model's dtype.
        dt = accumulation_dtype(atts[0].dtype)
        n = self.vit.num_blocks
        attn, grad = torch.stack([a.detach() for a in atts]).to(dt), torch.stack(grads[:n]).to(dt)
        if not pooled:
            return Attentions(attn, grad)
        pool, pool_grad = self._pool_with_grad(rec, pooled[0], grads[n], dt)
        return Attentions(attn, grad, pool, pool_grad)

    def _pool_with_grad(
        self, rec: AttentionRecord, pooled: Tensor, grad: Tensor, dt: torch.dtype
    ) -> tuple[Tensor, Tensor]:
        """``(B, heads, N)`` pooling weights and the target score's gradient with respect to
        them (see :class:`Attentions`), from what the pooling multiplies (``pooled``: the probe
        attention, or the token states for average pooling) and its gradient."""
        if rec.pool is not None:
            return pooled.detach()[:, :, 0].to(dt), grad[:, :, 0].to(dt)
        tokens, tokens_grad = pooled.detach().to(dt), grad.to(dt)
        weights = self._row_weights(tokens[..., 0], None)  # (B, N): 1/n on the pooled tokens
        # y depends on a_j through p = Σ a_j t_j: ∂y/∂a_j = <∂y/∂p, t_j> = <∂y/∂t_j, t_j> / a_j
        grad_a = torch.where(weights > 0, (tokens_grad * tokens).sum(-1) / weights.clamp_min(1e-30), 0.0)
        return weights[:, None], grad_a[:, None]

    def _fused_attentions(
        self, x: Tensor, forward_args: tuple[Any, ...], fuse: Callable[[Tensor], Tensor], blocks: Sequence[int]
    ) -> tuple[list[Tensor], Tensor | None]:
        """One forward pass without gradients: ``fuse`` of each of ``blocks``' attention
        (``(B, heads, N, N)`` in the accumulation dtype → ``(B, N, N)``), applied in the hook so
        the per-head attention is freed as the block ends, in the order of ``blocks``; and
        the pool's probe attention ``(B, heads, N)`` (``None`` without attention pooling)."""
        self._check_readout()

        def reduce(_i: int, attn: Tensor) -> Tensor:
            return fuse(attn.to(accumulation_dtype(attn.dtype)))

        n = self.vit.num_blocks
        # On timm's standard attention the probabilities are computed a slice of rows at a time
        # and fused as they are (recording no block then only makes an attention pool's probe
        # explicit); elsewhere the explicit path's hooks fuse each block's probabilities.
        recomputed = recomputes_attention(self.vit)
        wanted = tuple(sorted({i % n for i in blocks}))
        with (
            torch.no_grad(),
            record_attention(
                self.vit, detach=True, blocks=() if recomputed else blocks, reduce=None if recomputed else reduce
            ) as rec,
            attention_reductions(self.vit, partial(reduce, 0), wanted)
            if recomputed
            else nullcontext(rec.attentions) as kept,
        ):
            self._forward(x, forward_args)
        fused = [kept[i % n] for i in blocks]
        assert all(f is not None for f in fused)
        pool = None if rec.pool is None else rec.pool[:, :, 0].to(accumulation_dtype(rec.pool.dtype))
        return [f for f in fused if f is not None], pool

    def _gradient_cams(
        self, x: Tensor, target: Tensor | None, forward_args: tuple[Any, ...], on_cam: Callable[[int, Tensor], None]
    ) -> tuple[Tensor | None, Tensor | None]:
        """One forward and one backward pass that hand each block's GAE rule 5,
        ``mean_h((∇A ⊙ A)^+)`` ``(B, N, N)``, to ``on_cam(block, cam)`` as the block's gradient
        arrives (last block first): no block's per-head gradient outlives its backward step.
        Returns the pooling weights and their gradient ``(B, heads, N)`` as
        :meth:`_attentions` does (``(None, None)`` for token readouts)."""
        self._check_readout()
        ro = self.vit.readout
        average = ro.rows is None and not ro.attention_pool

        def rule5(attn: Tensor, grad: Tensor, out: Tensor | None = None) -> Tensor:
            # (∇A ⊙ A)^+ = (∇A)^+ ⊙ A since A >= 0: one pass fewer over (B, heads, N, N). In
            # place in ``grad`` (a fresh tensor), or in ``out`` (accumulation dtype)
            dt = accumulation_dtype(attn.dtype)
            if out is None:
                cam = grad.to(dt).clamp_(min=0)
            else:
                cam = torch.clamp(grad, min=0, out=out) if grad.dtype == dt else out.copy_(grad).clamp_(min=0)
            return cam.mul_(attn).mean(dim=-3)

        buffer: list[Tensor] = []  # one (B, heads, N, N) buffer for every block: no fresh pages each time

        def on_grad(i: int, attn: Tensor, grad: Tensor) -> None:
            # autograd still reads ``grad``: rule 5 goes to the buffer
            if not buffer or buffer[0].shape != grad.shape:
                buffer[:] = [torch.empty(grad.shape, dtype=accumulation_dtype(attn.dtype), device=grad.device)]
            on_cam(i, rule5(attn, grad, out=buffer[0]))

        # On timm's standard attention the forward and backward run the fused kernel and each
        # block's rule 5 is recomputed, a slice of rows at a time, as its gradient arrives
        # (recording no block then only records the pool's probe attention and the tokens);
        # elsewhere hooks on the explicit path's probabilities receive their gradients.
        recomputed = recomputes_attention(self.vit)
        with (
            record_attention(
                self.vit, tokens=average, blocks=() if recomputed else None, on_grad=None if recomputed else on_grad
            ) as rec,
            attention_gradients(self.vit, rule5, on_cam) if recomputed else nullcontext(rec.attentions) as first,
        ):
            logits = self._forward(x.requires_grad_(True), forward_args)
            score, _ = self._target_score(logits, target)
            pooled = [t for t in (rec.pool, rec.tokens) if t is not None]
            # block 0's attention (or its output) needs every later block's gradient: the
            # backward runs through every hook
            assert first[0] is not None
            grads = torch.autograd.grad(score, [first[0], *pooled], allow_unused=True)
        if not pooled:
            return None, None
        grad = grads[1] if grads[1] is not None else torch.zeros_like(pooled[0])
        return self._pool_with_grad(rec, pooled[0], grad, accumulation_dtype(pooled[0].dtype))

    def _read_rows(
        self, matrix: Tensor, image_size: tuple[int, int], pool_row: Tensor | None = None, residual: bool = False
    ) -> Tensor:
        """``(B, N, N)`` token relevance → ``(B, h, w)``: the classifier's readout row(s)
        (class token, class+distillation mean, patch-token mean, or the method's ``pool_row``
        ``(B, N)`` for a pooled model), patch columns, in float32 (or float64).

        ``residual``: ``matrix`` is an unnormalised ``I + ...`` relevance (GAE, Transformer
        Attribution); average and attention pooling, which read patch rows, then read
        :func:`residual_normalized` of it (token-row readouts read ``matrix``, as the official
        code: the identity only reaches the prefix columns there).
        """
        matrix = matrix.to(accumulation_dtype(matrix.dtype))
        weights = self._row_weights(matrix, pool_row)
        if residual and self.vit.readout.rows is None:  # the rows read include patch tokens
            matrix = residual_normalized(matrix)
        rows = torch.einsum("bn,bnm->bm", weights, matrix)
        return self.vit.patch_columns(rows, image_size)

    def _row_weights(self, like: Tensor, pool_row: Tensor | None) -> Tensor:
        """``(B, N)`` weights of the token rows the classifier reads, for a ``(B, ..., N)``
        tensor ``like``: ``pool_row`` when the method weighs the pooling itself (required for
        an attention-pooled model), else the readout's fixed weights."""
        if pool_row is not None:
            return pool_row.to(like.dtype)
        if self.vit.readout.attention_pool:
            raise ValueError("an attention-pooled model's map needs the pool's probe attention row")
        w = self.vit.readout_weights(like.shape[-1], like.device).to(like.dtype)
        return w.expand(like.shape[0], -1)
