"""Grad-CAM on the last block's attention (Chefer et al.'s ``attn_gradcam``, docs/methods.md §9)."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch
from torch import Tensor, nn

from captum_vit.attr._base import OutputFn, warn_if_empty
from captum_vit.attr._registry import register_method
from captum_vit.attr._vit_common import AttentionAttribution
from captum_vit.kernels._common import accumulation_dtype
from captum_vit.models.hooks import record_attention
from captum_vit.models.recomputed_attention import fused_attention, recomputes_attention


@register_method("attention_gradcam")
class AttentionGradCAM(AttentionAttribution):
    """Chefer et al.'s attention Grad-CAM: the last block's attention from the classifier's
    token(s) to the patches, one weight per head (the mean gradient of the target logit
    over that head's row), weighted mean over heads, clamped at zero.

    The clamp is the official definition (``generate_attn_gradcam`` in Chefer et al.'s
    ``ViT_explanation_generator.py``): when every patch's head-weighted attention is negative
    the map is all zero. That happens on real models (distilled DeiT, DINOv2), so it is never
    silent: an :class:`~captum_vit.attr.EmptyMapWarning` names the images whose map is empty.

    Only the last block's attention is recorded and differentiated: the blocks before it run
    without a graph, and the backward pass stops at the attention (it was taken through
    every block before, about 2.2x a forward and a forward+backward's memory). On timm's
    standard attention the blocks before the last run the fused kernel (ViT-S/16 at 448:
    1.16x a forward, against 1.39x with every block on the explicit path,
    ``benchmarks/results/token_scaling.md``).

    Parameters
    ----------
    model : nn.Module
        A timm ViT with class-token, average or attention pooling (the last block's rows are
        then weighted by the pooling head's probe attention, mean over heads).
    interpolate_mode : str, optional
        Upsampling of the patch map (default bilinear).
    output_fn : callable, optional
        See :class:`~captum_vit.attr.MapAttribution`.

    Examples
    --------
    >>> import timm, torch
    >>> m = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3,
    ...                       depth=2, img_size=32).eval()
    >>> AttentionGradCAM(m).attribute(torch.rand(1, 3, 32, 32), target=0).shape
    torch.Size([1, 3, 32, 32])
    """

    warns_empty = True

    def __init__(
        self, model: nn.Module, interpolate_mode: str | None = None, output_fn: OutputFn | None = None
    ) -> None:
        super().__init__(model, interpolate_mode, output_fn)

    def _patch_map(self, x: Tensor, target: Tensor | None, forward_args: tuple[Any, ...]) -> Tensor:
        self._check_readout()
        last = self.vit.num_blocks - 1

        def leaf(attn: Tensor) -> Tensor:
            # The blocks before ran without a graph: nothing before this attention is
            # differentiated. From here on the forward is recorded, with the attention as a
            # leaf (same value, same gradient), so the backward stops at it.
            torch.set_grad_enabled(True)
            return attn.detach().requires_grad_(True)

        # on timm's standard attention, the blocks before the last one run the fused kernel
        earlier = fused_attention(self.vit, range(last)) if recomputes_attention(self.vit) else nullcontext()
        with torch.no_grad(), record_attention(self.vit, override={last: leaf}, blocks=[last]) as rec, earlier:
            score, _ = self._target_score(self._forward(x, forward_args), target)
            attn = rec.attentions[last]
            assert attn is not None
            (grad,) = torch.autograd.grad(score, [attn], allow_unused=True)
        dt = accumulation_dtype(attn.dtype)
        attn, grad = attn.detach().to(dt), (torch.zeros_like(attn) if grad is None else grad).to(dt)
        pool_row = None if rec.pool is None else rec.pool.detach()[:, :, 0].to(dt).mean(dim=1)
        w = self._row_weights(attn[:, 0], pool_row)  # (B, N)
        p = self.vit.num_prefix_tokens
        a_row = torch.einsum("bn,bhnm->bhm", w, attn)[..., p:]  # (B, heads, patches)
        g_row = torch.einsum("bn,bhnm->bhm", w, grad)[..., p:]
        cam = (a_row * g_row.mean(dim=-1, keepdim=True)).mean(dim=1).clamp(min=0)
        warn_if_empty(cam, "AttentionGradCAM", "every patch's head-weighted attention is negative for the target")
        h, ww = self.vit.grid_size((x.shape[-2], x.shape[-1]))
        return cam.reshape(-1, h, ww)
