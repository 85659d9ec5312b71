"""Grad-CAM on ViT token activations (pytorch-grad-cam's ViT recipe, docs/methods.md §9 (b))."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from captum_vit.attr._base import OutputFn, layer_path, warn_if_empty
from captum_vit.attr._registry import register_method
from captum_vit.attr._vit_common import AttentionAttribution
from captum_vit.models.hooks import record_activations


@register_method("vit_gradcam")
class ViTGradCAM(AttentionAttribution):
    """Grad-CAM (Selvaraju et al., ICCV 2017) on a block's patch-token activations:
    channel weights are the mean gradient over patch tokens, the map is
    ``ReLU(Σ_c w_c A_c)`` over the patch grid.

    Parameters
    ----------
    model : nn.Module
        A timm ViT.
    layer : nn.Module or str, optional
        Module whose ``(B, N, D)`` output is used. Default: ``blocks[-1].norm1``, the
        pytorch-grad-cam recommendation; its patch tokens get non-zero gradients through
        the last attention (the last block's *output* patch tokens get none under
        class-token pooling).
    interpolate_mode : str, optional
        Upsampling of the patch map (default bilinear).
    output_fn : callable, optional
        See :class:`~captum_vit.attr.MapAttribution`.

    An image whose weighted activations are negative everywhere gets an all-zero map (the
    ReLU of the definition); an :class:`~captum_vit.attr.EmptyMapWarning` names it.

    Examples
    --------
    >>> import timm, torch
    >>> m = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3,
    ...                       depth=2, img_size=32).eval()
    >>> ViTGradCAM(m).attribute(torch.rand(1, 3, 32, 32), target=2).shape
    torch.Size([1, 3, 32, 32])
    """

    warns_empty = True

    def __init__(
        self,
        model: nn.Module,
        layer: nn.Module | str | None = None,
        interpolate_mode: str | None = None,
        output_fn: OutputFn | None = None,
    ) -> None:
        super().__init__(model, interpolate_mode, output_fn)
        default: Any = self.vit.gradcam_layer
        self.layer_name = layer_path(self.vit.model, default if layer is None else layer)

    def _patch_map(self, x: Tensor, target: Tensor | None, forward_args: tuple[Any, ...]) -> Tensor:
        with record_activations([self.vit.model.get_submodule(self.layer_name)]) as store:
            logits = self._forward(x.requires_grad_(True), forward_args)
            act = store[0]
            if act is None or act.dim() != 3:
                raise ValueError("layer must output (batch, tokens, dim) token activations")
            score, _ = self._target_score(logits, target)
            (grad,) = torch.autograd.grad(score, act)
        p = self.vit.num_prefix_tokens
        act, grad = act.detach()[:, p:], grad[:, p:]
        weights = grad.mean(dim=1, keepdim=True)  # (B, 1, D)
        cam = (weights * act).sum(dim=-1).clamp(min=0)
        warn_if_empty(cam, "ViTGradCAM", "the gradient-weighted activations are negative at every patch")
        h, w = self.vit.grid_size((x.shape[-2], x.shape[-1]))
        return cam.reshape(-1, h, w)
