"""Grad-CAM for CNN and hierarchical-transformer explainees (Selvaraju et al., ICCV 2017), the
CNN baseline of IIA/EEA."""

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
        A feature backbone (:class:`~captum_vit.models.cnn.CNNAdapter`): a timm CNN (ResNet,
        ConvNeXt, EfficientNet, RegNet, ...), a torchvision ResNet, or a hierarchical
        transformer (Swin, PVT-v2).
    layer : nn.Module or str, optional
        The feature layer, a submodule of ``model`` or its dotted name, whose output is a 4-D
        feature map (Swin's stages and blocks give ``(B, h, w, C)``, read as ``(B, C, h, w)``;
        :meth:`~captum_vit.models.cnn.CNNAdapter.layout_of`).
        Default: the last feature stage the model declares (timm's ``feature_info``; the
        ResNets' ``layer4``, as pytorch-grad-cam's ResNet recipe).
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
    >>> GradCAM(m, layer="layer3").attribute(torch.rand(1, 3, 64, 64), return_patch_map=True).shape
    torch.Size([1, 4, 4])
    """

    warns_empty = True

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
        cnn = self.adapter
        assert isinstance(cnn, CNNAdapter)
        layer = cnn.model.get_submodule(self.layer_name)
        with record_activations([layer]) as store:
            logits = self._forward(x.requires_grad_(True), forward_args)
            out = store[0]
            if out is None or out.dim() != 4:
                got = "no output" if out is None else f"shape {tuple(out.shape)}"
                raise ValueError(f"layer {self.layer_name!r} must output 4-D feature maps, got {got}")
            score, _ = self._target_score(logits, target)
            (grad,) = torch.autograd.grad(score, out)
        layout = cnn.layout_of(layer)  # Swin's stages are (B, h, w, C)
        act, grad = cnn.to_nchw(out.detach(), layout), cnn.to_nchw(grad, layout)
        weights = grad.mean(dim=(2, 3), keepdim=True)
        cam = (weights * act).sum(dim=1).clamp(min=0)
        warn_if_empty(cam, "GradCAM", "the gradient-weighted feature maps are negative everywhere")
        return cam
