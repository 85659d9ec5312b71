"""What a model expects at its input and gives at its output: normalisation and logits.

The one place that answers "how do I normalise pixels for this model" and "which tensor are
the logits". Every metric, trainer, exporter and the demo call these, so a model without a
``pretrained_cfg`` is treated the same way everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

Stats = Sequence[float] | Tensor | None


def model_normalization(model: nn.Module, mean: Stats = None, std: Stats = None) -> tuple[Tensor, Tensor]:
    """The per-channel ``(mean, std)`` the model expects, as ``(C,)`` float32 tensors.

    Explicit ``mean``/``std`` win; otherwise they come from ``model.pretrained_cfg`` (timm's
    convention, which every timm model has, random-init included). A model without one is
    taken to read raw ``[0, 1]`` pixels (mean 0, std 1): pass ``mean``/``std`` when it does not.

    Raises
    ------
    ValueError
        If ``std`` has a non-positive entry or ``mean`` and ``std`` differ in length.

    Examples
    --------
    >>> import timm
    >>> m = timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=1, img_size=32)
    >>> model_normalization(m)
    (tensor([0.5000, 0.5000, 0.5000]), tensor([0.5000, 0.5000, 0.5000]))
    >>> model_normalization(nn.Identity())
    (tensor([0., 0., 0.]), tensor([1., 1., 1.]))
    """
    cfg = getattr(model, "pretrained_cfg", None) or {}
    if mean is None:
        mean = cfg.get("mean", (0.0, 0.0, 0.0))
    if std is None:
        std = cfg.get("std", (1.0, 1.0, 1.0))
    m = torch.as_tensor(mean, dtype=torch.float32).flatten()
    s = torch.as_tensor(std, dtype=torch.float32).flatten()
    if m.shape != s.shape:
        raise ValueError(f"mean and std must have the same length, got {m.numel()} and {s.numel()}")
    if (s <= 0).any():
        raise ValueError(f"std must be positive, got {s.tolist()}")
    return m, s


def normalize(images: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """``(images - mean) / std`` per channel (channel axis -3), in ``images``' dtype and device.

    Examples
    --------
    >>> normalize(torch.ones(1, 3, 2, 2), torch.full((3,), 0.5), torch.full((3,), 0.5)).unique()
    tensor([1.])
    """
    shape = (-1, 1, 1)
    return (images - mean.to(images).view(shape)) / std.to(images).view(shape)


def normalize_for(model: nn.Module, images: Tensor) -> Tensor:
    """Normalise ``[0, 1]`` pixels the way ``model`` expects (:func:`model_normalization`).

    Examples
    --------
    >>> import timm
    >>> m = timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=1, img_size=32)
    >>> normalize_for(m, torch.ones(1, 3, 32, 32)).unique()
    tensor([1.])
    """
    return normalize(images, *model_normalization(model))


def num_classes_of(model: nn.Module) -> int:
    """The number of classes ``model`` scores: its ``num_classes`` (timm's ``pretrained_cfg``
    keeps the hub head's count when the model was built with another), else its
    ``pretrained_cfg``'s, else the width of its logits on one blank image of its
    ``pretrained_cfg["input_size"]``.

    Examples
    --------
    >>> import timm
    >>> num_classes_of(timm.create_model("vit_tiny_patch16_224", num_classes=7, depth=1, img_size=32))
    7
    """
    cfg = getattr(model, "pretrained_cfg", None) or {}
    classes = int(getattr(model, "num_classes", 0) or cfg.get("num_classes") or 0)
    if classes:
        return classes
    with torch.no_grad():
        return int(model_logits(model(torch.zeros(1, *cfg["input_size"]))).shape[-1])


def model_logits(output: Tensor | Sequence[Tensor]) -> Tensor:
    """The ``(B, num_classes)`` logits of a model output.

    A distilled timm model in distillation-training mode returns ``(class head, distillation
    head)``; at inference timm averages the two heads, and so does this.

    Raises
    ------
    TypeError
        If ``output`` is neither a tensor, an object with a ``logits`` tensor (a Hugging Face
        ``ModelOutput``) nor a non-empty tuple/list of tensors.

    Examples
    --------
    >>> model_logits((torch.tensor([[0.0, 2.0]]), torch.tensor([[2.0, 0.0]])))
    tensor([[1., 1.]])
    """
    if isinstance(output, Tensor):
        return output
    logits = getattr(output, "logits", None)  # a Hugging Face ModelOutput (the hf extra)
    if isinstance(logits, Tensor):
        return logits
    if isinstance(output, (tuple, list)) and output and all(isinstance(o, Tensor) for o in output):
        return torch.stack(list(output)).mean(0)
    raise TypeError(
        f"model output must be a Tensor, a tuple of Tensors or have a logits Tensor, got {type(output).__name__}"
    )
