"""Shared steps of the attention-graph methods: record attention (and its gradient with
respect to the target score) and read a token-relevance matrix at the classifier's rows."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from captum_vit.attr._base import MapAttribution
from captum_vit.kernels._common import accumulation_dtype
from captum_vit.models.hooks import record_attention
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
        if not average:
            return Attentions(attn, grad, pooled[0].detach()[:, :, 0].to(dt), grads[n][:, :, 0].to(dt))
        weights = self._row_weights(attn[0, :, 0], None)  # (B, N): 1/n on the pooled tokens
        tokens, tokens_grad = pooled[0].detach().to(dt), grads[n].to(dt)
        # y depends on a_j through p = Σ a_j t_j: ∂y/∂a_j = <∂y/∂p, t_j> = <∂y/∂t_j, t_j> / a_j
        grad_a = torch.where(weights > 0, (tokens_grad * tokens).sum(-1) / weights.clamp_min(1e-30), 0.0)
        return Attentions(attn, grad, weights[:, None], grad_a[:, None])

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
