"""Grad-CAM on the last block's attention (Chefer et al.'s ``attn_gradcam``, docs/methods.md §9)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from captum_vit.attr._registry import register_method
from captum_vit.attr._vit_common import AttentionAttribution


@register_method("attention_gradcam")
class AttentionGradCAM(AttentionAttribution):
    """Chefer et al.'s attention Grad-CAM: the last block's attention from the classifier's
    token(s) to the patches, one weight per head (the mean gradient of the target logit
    over that head's row), weighted mean over heads, clamped at zero.

    Examples
    --------
    >>> import timm, torch
    >>> m = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3,
    ...                       depth=2, img_size=32).eval()
    >>> AttentionGradCAM(m).attribute(torch.rand(1, 3, 32, 32), target=0).shape
    torch.Size([1, 3, 32, 32])
    """

    def _patch_map(self, x: Tensor, target: Tensor | None, forward_args: tuple[Any, ...]) -> Tensor:
        attn, grad = self._attentions(x, target, forward_args, gradients=True)
        assert grad is not None
        n = attn.shape[-1]
        w = self.vit.readout_weights(n, attn.device).to(attn.dtype)
        p = self.vit.num_prefix_tokens
        a_row = torch.einsum("n,bhnm->bhm", w, attn[-1])[..., p:]  # (B, heads, patches)
        g_row = torch.einsum("n,bhnm->bhm", w, grad[-1])[..., p:]
        cam = (a_row * g_row.mean(dim=-1, keepdim=True)).mean(dim=1).clamp(min=0)
        h, ww = self.vit.grid_size((x.shape[-2], x.shape[-1]))
        return cam.reshape(-1, h, ww)
