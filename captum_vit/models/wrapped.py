"""Name the ViT (and its preprocessing) inside a larger module.

A deployed model is often a pipeline: ``nn.Sequential(Normalize(...), vit)``, or a module
whose ``forward`` resizes, normalises and then calls a backbone. Every method explains the
whole pipeline's output and reads the attention of the ViT inside it. When the pipeline holds
exactly one supported ViT it is found automatically; :class:`Wrapped` names it explicitly.
"""

from __future__ import annotations

from typing import Any

from torch import nn


class Wrapped(nn.Module):
    """A model to explain, with the path of the ViT inside it.

    ``Wrapped(model, vit="backbone")`` runs ``model`` unchanged (same parameters, same output)
    and tells every method to read the ViT at ``model.backbone``. Pass it wherever a model is
    expected: ``GenericAttention(Wrapped(pipeline, vit="1"))``.

    Parameters
    ----------
    model : nn.Module
        The pipeline; never modified.
    vit : str
        Dotted path of the ViT inside ``model`` (``model.get_submodule(vit)``).
    preprocess : str, optional
        Dotted path of the module that turns the pipeline's input into the ViT's input (a
        normalisation). LTX's explainer network, a copy of the ViT, runs it before its
        backbone; by default it reads the pipeline's input as the ViT would.

    Raises
    ------
    ValueError
        If ``vit`` or ``preprocess`` is not a submodule of ``model``.

    Examples
    --------
    >>> import timm, torch
    >>> vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3,
    ...                         depth=1, img_size=32, patch_size=8).eval()
    >>> pipeline = nn.Sequential(nn.Identity(), vit)
    >>> w = Wrapped(pipeline, vit="1", preprocess="0")
    >>> torch.equal(w(torch.ones(1, 3, 32, 32)), pipeline(torch.ones(1, 3, 32, 32)))
    True
    >>> from captum_vit.models import ViTAdapter
    >>> ViTAdapter(w).module is vit
    True
    """

    def __init__(self, model: nn.Module, vit: str, preprocess: str | None = None) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        for arg, path in (("vit", vit), ("preprocess", preprocess)):
            if path is None:
                continue
            if not isinstance(path, str):
                raise TypeError(f"{arg} must be a dotted submodule path (str), got {type(path).__name__}")
            try:
                model.get_submodule(path)
            except AttributeError:
                raise ValueError(f"{arg}={path!r} is not a submodule of the {type(model).__name__} model") from None
        self.model = model
        #: read by :class:`~captum_vit.models.vit.ViTAdapter` (paths from this module)
        self.captum_vit_inner = f"model.{vit}"
        self.captum_vit_preprocess = None if preprocess is None else f"model.{preprocess}"

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.model(*args, **kwargs)
