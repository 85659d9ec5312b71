"""Tiny offline models for tests, doctests and benchmarks (timm, ``pretrained=False``).

Every builder seeds its own initialisation, so two calls with the same arguments return
models with identical weights. Nothing is downloaded.
"""

from __future__ import annotations

import copy
from typing import Any

import timm
import torch
from torch import Tensor, nn

#: Number of classes of every tiny model.
NUM_CLASSES = 5

#: The ViT kinds :func:`make_vit` builds, one per way a timm ViT lays out its tokens or
#: pools them (``dynamic`` is not a default fixture kind: it takes any size).
VIT_KINDS = ("cls", "dist", "reg", "avg", "rect")
ALL_VIT_KINDS = (*VIT_KINDS, "dynamic")


def make_vit(kind: str = "cls", seed: int = 0, **overrides: Any) -> nn.Module:
    """A 2-block, 32-wide timm ViT on 32x32 inputs (a 4x4 grid of 8x8 patches), in eval mode.

    Parameters
    ----------
    kind : str
        ``"cls"`` (one class token), ``"dist"`` (distilled DeiT: class and distillation
        tokens), ``"reg"`` (4 register tokens + class token), ``"avg"`` (no class token,
        average pooling), ``"rect"`` (48x64 inputs: a non-square 6x8 grid) or
        ``"dynamic"`` (``dynamic_img_size=True``: any size that holds one patch).
    seed : int
        Seed of the initialisation.
    **overrides
        Passed to ``timm.create_model`` over the defaults above (e.g. ``depth=1``).

    Returns
    -------
    nn.Module
        The model, with weights drawn from N(0, 0.3) so that gradients are informative
        (timm's initialisation leaves the head at zero).

    Raises
    ------
    ValueError
        For an unknown ``kind``.

    Examples
    --------
    >>> m = make_vit("dist")
    >>> m.num_prefix_tokens, m(input_for(m, batch=2)).shape
    (2, torch.Size([2, 5]))
    """
    if kind not in ALL_VIT_KINDS:
        raise ValueError(f"kind must be one of {ALL_VIT_KINDS}, got {kind!r}")
    torch.manual_seed(seed)
    options: dict[str, Any] = dict(
        pretrained=False, num_classes=NUM_CLASSES, img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2
    )
    name = "deit_tiny_distilled_patch16_224" if kind == "dist" else "vit_tiny_patch16_224"
    per_kind: dict[str, dict[str, Any]] = {
        "reg": dict(reg_tokens=4, no_embed_class=True),
        "avg": dict(global_pool="avg", class_token=False, fc_norm=False),
        "rect": dict(img_size=(48, 64)),
        "dynamic": dict(dynamic_img_size=True),
    }
    options.update(per_kind.get(kind, {}))
    options.update(overrides)
    model = timm.create_model(name, **options)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0, 0.3)
    return model.eval()


def make_cnn(seed: int = 0, **overrides: Any) -> nn.Module:
    """timm's ``resnet10t`` with :data:`NUM_CLASSES` outputs, in eval mode.

    ``overrides`` go to ``timm.create_model``, e.g. ``channels=(8, 16, 32, 64)`` for a
    narrower network (the default widths are 64 to 512).

    Examples
    --------
    >>> make_cnn()(torch.zeros(1, 3, 32, 32)).shape
    torch.Size([1, 5])
    >>> make_cnn(channels=(8, 16, 32, 64)).num_features
    64
    """
    torch.manual_seed(seed)
    return timm.create_model("resnet10t", pretrained=False, num_classes=NUM_CLASSES, **overrides).eval()


def input_for(model: nn.Module, batch: int = 3, seed: int = 1, size: tuple[int, int] | None = None) -> Tensor:
    """Standard-normal images of ``size``, by default the size ``model`` takes (32x32 for a CNN).

    Examples
    --------
    >>> input_for(make_vit("rect"), batch=2).shape
    torch.Size([2, 3, 48, 64])
    >>> input_for(make_cnn(), batch=1, size=(64, 64)).shape
    torch.Size([1, 3, 64, 64])
    """
    g = torch.Generator().manual_seed(seed)
    if size is None:
        pe = getattr(model, "patch_embed", None)
        size = (int(pe.img_size[0]), int(pe.img_size[1])) if pe is not None else (32, 32)
    return torch.randn(batch, 3, *size, generator=g)


_WITH_CLASS_WEIGHTS: dict[type, type] = {}


def with_class_weights(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose forward takes a second argument: ``forward(x, class_weights)``
    returns ``model(x) * class_weights`` with ``class_weights`` of shape ``(B, num_classes)``.

    It is the explainee of the ``additional_forward_args`` contract: a method must pass the
    argument to every forward it runs, split or repeated along the batch as it splits or
    repeats the images. The copy keeps the model's class (as a subclass), so the adapters
    and hooks see the same architecture; ``model`` itself is not modified.

    Examples
    --------
    >>> m = make_vit()
    >>> x = input_for(m, batch=2)
    >>> w = torch.tensor([[1.0, 2, 1, 1, 1], [0, 1, 1, 1, 1]])
    >>> torch.allclose(with_class_weights(m)(x, w), m(x) * w)
    True
    """
    base = type(model)
    cls = _WITH_CLASS_WEIGHTS.get(base)
    if cls is None:

        def forward(self: nn.Module, x: Tensor, class_weights: Tensor) -> Tensor:
            return base.forward(self, x) * class_weights

        cls = type(f"{base.__name__}WithClassWeights", (base,), {"forward": forward})
        _WITH_CLASS_WEIGHTS[base] = cls
    out = copy.deepcopy(model)
    out.__class__ = cls
    return out
