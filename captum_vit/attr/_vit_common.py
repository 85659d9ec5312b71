"""Shared steps of the attention-graph methods: record attention (and its gradient with
respect to the target logit) and read a token-relevance matrix at the classifier's rows."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from captum_vit.attr._base import MapAttribution
from captum_vit.models.hooks import record_attention
from captum_vit.models.vit import ViTAdapter


class AttentionAttribution(MapAttribution):
    """Base of methods reading a timm ViT's attention probabilities."""

    model_kinds: ClassVar[tuple[str, ...]] = ("vit",)

    @property
    def vit(self) -> ViTAdapter:
        assert isinstance(self.adapter, ViTAdapter)
        return self.adapter

    def _check_readout(self) -> None:
        _ = self.vit.readout  # raises ValueError for unsupported pooling

    def _attentions(
        self, x: Tensor, target: Tensor | None, forward_args: tuple[Any, ...], gradients: bool
    ) -> tuple[Tensor, Tensor | None]:
        """``(L, B, heads, N, N)`` attentions and, if ``gradients``, their gradients with
        respect to the target logits (``torch.autograd.grad``: nothing accumulates into the
        model's ``.grad``)."""
        self._check_readout()
        if not gradients:
            with torch.no_grad(), record_attention(self.vit, detach=True) as rec:
                self._forward(x, forward_args)
            return rec.stacked(), None
        with record_attention(self.vit) as rec:
            logits = self._forward(x.requires_grad_(True), forward_args)
            score, _ = self._target_score(logits, target)
            atts = [a for a in rec.attentions if a is not None]
            grads = torch.autograd.grad(score, atts, allow_unused=True)
        attn = torch.stack([a.detach() for a in atts])
        grad = torch.stack([g if g is not None else torch.zeros_like(a) for a, g in zip(attn, grads)])
        return attn, grad

    def _read_rows(self, matrix: Tensor, image_size: tuple[int, int]) -> Tensor:
        """``(B, N, N)`` token relevance → ``(B, h, w)``: the classifier's readout row(s)
        (class token, class+distillation mean, or patch-token mean), patch columns."""
        w = self.vit.readout_weights(matrix.shape[-1], matrix.device).to(matrix.dtype)
        rows = torch.einsum("n,bnm->bm", w, matrix)
        return self.vit.patch_columns(rows, image_size)
