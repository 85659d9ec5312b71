"""Name the ViT (and its preprocessing) inside a larger module.

A deployed model is often a pipeline: ``nn.Sequential(Normalize(...), vit)``, or a module
whose ``forward`` resizes, normalises and then calls a backbone. Every method explains the
whole pipeline's output and reads the attention of the ViT inside it. When the pipeline holds
exactly one supported ViT it is found automatically; :class:`Wrapped` names it explicitly.

The ViT's *preprocessing* (what turns the pipeline's input into the ViT's input) matters to
LTX, whose explainer network is a copy of the ViT and must see what the ViT sees
(:func:`preprocess_of`): it is the module ``Wrapped(..., preprocess=...)`` names, or, when the
ViT sits inside ``nn.Sequential`` containers, the children that run before it.
"""

from __future__ import annotations

from typing import Any

from torch import nn

#: Attribute names a :class:`Wrapped` stores its paths under (read by the adapter).
INNER_ATTR, PREPROCESS_ATTR = "captum_vit_inner", "captum_vit_preprocess"


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
        normalisation). LTX's explainer network, a copy of the ViT, runs a copy of it before
        its backbone. By default it is found as :func:`preprocess_of` finds it: the children
        before the ViT when ``vit`` is a path through ``nn.Sequential`` containers, else none
        (the explainer then reads the pipeline's input as the ViT's input).

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
    >>> ViTAdapter(w).preprocess is pipeline[0]
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
        setattr(self, INNER_ATTR, f"model.{vit}")
        setattr(self, PREPROCESS_ATTR, None if preprocess is None else f"model.{preprocess}")

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.model(*args, **kwargs)


def preprocess_of(model: nn.Module, inner: str) -> nn.Module | None:
    """What turns ``model``'s input into the input of its submodule at path ``inner``, when
    that is known, else ``None``.

    * A :class:`Wrapped` naming ``preprocess``: that module.
    * ``inner`` a path through ``nn.Sequential`` containers (``Wrapped`` passes its input on,
      so it counts as one): the children that run before the path, in order, as one
      ``nn.Sequential`` (``None`` when nothing runs before it). Children holding parameters
      are included: in a ``Sequential`` they are, by definition, what the ViT reads.
    * Anything else (a custom ``forward``, ``inner=""``): ``None``: the input is not known to
      be transformed; name the module with ``Wrapped(..., preprocess=...)`` when it is.

    The modules returned are ``model``'s own: copy them before changing anything.

    Examples
    --------
    >>> import torch
    >>> pipeline = nn.Sequential(nn.Identity(), nn.Sequential(nn.Tanh(), nn.Linear(2, 2)))
    >>> preprocess_of(pipeline, "1.1")
    Sequential(
      (0): Identity()
      (1): Tanh()
    )
    >>> preprocess_of(Wrapped(pipeline, vit="1.1", preprocess="1.0"), "model.1.1")
    Tanh()
    >>> preprocess_of(pipeline, "0") is None
    True
    """
    named = getattr(model, PREPROCESS_ATTR, None)
    if named is not None:
        return model.get_submodule(named)
    before: list[nn.Module] = []
    container = model
    for name in inner.split(".") if inner else ():
        if isinstance(container, nn.Sequential) and type(container).forward is nn.Sequential.forward:
            for child_name, child in container.named_children():
                if child_name == name:
                    break
                before.append(child)
        elif not (isinstance(container, Wrapped) and name == "model"):
            return None  # a custom forward: what reaches the ViT is not known
        container = container.get_submodule(name)
    return nn.Sequential(*before) if before else None
