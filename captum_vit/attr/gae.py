"""Generic Attention-model Explainability (Chefer, Gur & Wolf, ICCV 2021; methods.md §9)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from captum_vit.attr._registry import register_method
from captum_vit.attr._vit_common import AttentionAttribution


@register_method("gae")
class GenericAttention(AttentionAttribution):
    """GAE: per block ``Ā = mean_heads((∇A ⊙ A)^+)`` (rule 5) and ``R ← R + Ā R`` starting
    from ``R = I`` (rule 6); the map is the classifier's row of ``R`` over the patches.

    Parameters
    ----------
    model : nn.Module
        A timm ViT with class-token or average pooling.

    References
    ----------
    Chefer, Gur & Wolf, "Generic Attention-model Explainability for Interpreting Bi-Modal
    and Encoder-Decoder Transformers", ICCV 2021, eqs. (5)-(6).

    Examples
    --------
    >>> import timm, torch
    >>> m = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3,
    ...                       depth=2, img_size=32).eval()
    >>> GenericAttention(m).attribute(torch.rand(2, 3, 32, 32), target=[0, 2]).shape
    torch.Size([2, 3, 32, 32])
    """

    def _patch_map(self, x: Tensor, target: Tensor | None, forward_args: tuple[Any, ...]) -> Tensor:
        attn, grad = self._attentions(x, target, forward_args, gradients=True)
        assert grad is not None
        cams = (grad * attn).clamp(min=0).mean(dim=2)  # (L, B, N, N)
        n = cams.shape[-1]
        r = torch.eye(n, dtype=cams.dtype, device=cams.device).expand(cams.shape[1], n, n)
        for cam in cams:
            r = r + torch.bmm(cam, r)
        return self._read_rows(r, (x.shape[-2], x.shape[-1]))
