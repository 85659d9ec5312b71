"""Grad-CAM for CNN explainees (Selvaraju et al., ICCV 2017), the CNN baseline of IIA/EEA."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from captum_vit.attr._base import MapAttribution, OutputFn, layer_path, warn_if_empty
from captum_vit.attr._registry import register_method
from captum_vit.models.cnn import CNNAdapter
from captum_vit.models.hooks import record_activations


@register_method("gradcam", model_kinds=("cnn",))
class GradCAM(MapAttribution):
    """Grad-CAM: ``ReLU(Σ_c w_c A_c)`` with ``w_c`` the spatial mean of the target logit's
    gradient with respect to feature map ``A_c`` of ``layer``, upsampled bilinearly.

    Parameters
    ----------
    model : nn.Module
        A timm ResNet-family CNN.
    layer : nn.Module or str, optional
        The feature layer (default: the last stage, as pytorch-grad-cam's ResNet recipe).
    interpolate_mode : str, optional
        Upsampling of the feature map (default bilinear).
    output_fn : callable, optional
        See :class:`~captum_vit.attr.MapAttribution`.

    An image whose weighted feature maps are negative everywhere gets an all-zero map (the
    ReLU of the definition); an :class:`~captum_vit.attr.EmptyMapWarning` names it.

    References
    ----------
    Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via Gradient-based
    Localization", ICCV 2017, eqs. (1)-(2).

    Examples
    --------
    >>> import timm, torch
    >>> m = timm.create_model("resnet10t", pretrained=False, num_classes=3).eval()
    >>> GradCAM(m).attribute(torch.rand(2, 3, 64, 64), target=[0, 2], return_patch_map=True).shape
    torch.Size([2, 2, 2])
    """

    model_kinds: ClassVar[tuple[str, ...]] = ("cnn",)

    def __init__(
        self,
        model: nn.Module,
        layer: nn.Module | str | None = None,
        interpolate_mode: str | None = None,
        output_fn: OutputFn | None = None,
    ) -> None:
        super().__init__(model, interpolate_mode, output_fn)
        assert isinstance(self.adapter, CNNAdapter)
        if layer is None:
            layer = self.adapter.feature_layer
        self.layer_name = layer_path(self.adapter.model, layer)

    def _patch_map(self, x: Tensor, target: Tensor | None, forward_args: tuple[Any, ...]) -> Tensor:
        with record_activations([self.adapter.model.get_submodule(self.layer_name)]) as store:
            logits = self._forward(x.requires_grad_(True), forward_args)
            act = store[0]
            if act is None or act.dim() != 4:
                raise ValueError("layer must output (batch, channels, height, width) feature maps")
            score, _ = self._target_score(logits, target)
            (grad,) = torch.autograd.grad(score, act)
        weights = grad.mean(dim=(2, 3), keepdim=True)
        cam = (weights * act.detach()).sum(dim=1).clamp(min=0)
        warn_if_empty(cam, "GradCAM", "the gradient-weighted feature maps are negative everywhere")
        return cam
