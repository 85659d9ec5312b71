"""Adapter for timm CNN explainees (ResNet family), the counterpart of ``ViTAdapter``."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from captum_vit.models.view import unwrap_compiled
from captum_vit.models.vit import check_dtype, check_image_batch

SUPPORTED_CNNS = "timm ResNet-family CNNs (resnet*, resnet*d/t, seresnet*, resnext*)"


class CNNAdapter:
    """Read a timm ResNet's feature stages and validate inputs.

    Examples
    --------
    >>> import timm
    >>> m = timm.create_model("resnet10t", pretrained=False, num_classes=3)
    >>> a = CNNAdapter(m)
    >>> a.in_chans, len(a.stages), a.num_classes
    (3, 4, 3)
    """

    def __init__(self, model: nn.Module) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        model = unwrap_compiled(model)
        stages = [getattr(model, f"layer{i}", None) for i in range(1, 5)]
        if any(s is None for s in stages) or not hasattr(model, "forward_head") or not hasattr(model, "conv1"):
            raise TypeError(f"model of type {type(model).__name__} is not a supported CNN; supported: {SUPPORTED_CNNS}")
        self.model = model
        self.stages: list[nn.Module] = [s for s in stages if s is not None]

    def rebuild(self, model: nn.Module) -> CNNAdapter:
        """The adapter of ``model`` (a private view of :attr:`model`)."""
        return type(self)(model)

    @property
    def num_classes(self) -> int:
        return int(getattr(self.model, "num_classes", 0))

    @property
    def _first_conv(self) -> nn.Conv2d:
        conv1 = self.model.conv1
        return conv1 if isinstance(conv1, nn.Conv2d) else next(m for m in conv1.modules() if isinstance(m, nn.Conv2d))  # type: ignore[union-attr]

    @property
    def in_chans(self) -> int:
        return int(self._first_conv.in_channels)

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the stem convolution's weights, which the images must have."""
        return self._first_conv.weight.dtype

    @property
    def feature_layer(self) -> nn.Module:
        """The last stage: the features Grad-CAM and EEA read by default."""
        return self.stages[-1]

    def check_input(self, x: object, name: str = "inputs") -> Tensor:
        x = check_image_batch(x, self.in_chans, name)
        check_dtype(x, self.dtype, name)
        if x.shape[2] < 32 or x.shape[3] < 32:
            raise ValueError(f"{name} spatial size {tuple(x.shape[2:])} is below the CNN's minimum of 32x32")
        if not torch.isfinite(x).all():
            raise ValueError(f"{name} contains NaN or infinite values")
        return x


def is_cnn(model: nn.Module) -> bool:
    """True when :class:`CNNAdapter` accepts ``model``."""
    try:
        CNNAdapter(model)
    except TypeError:
        return False
    return True
