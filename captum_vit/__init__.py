"""captum_vit: explanations for Vision Transformers behind captum's Attribution API.

The public names below load on first use (PEP 562), so that importing a light module such as
``captum_vit.cli`` (``captum-vit --help``) does not import torch.

Examples
--------
>>> import captum_vit
>>> "gae" in captum_vit.list_methods("vit")
True
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from captum_vit import attr, models
    from captum_vit.attr import get_method, list_methods
    from captum_vit.models import Wrapped

__version__ = "0.1.0"

__all__ = ["Wrapped", "__version__", "attr", "get_method", "list_methods", "models"]

#: public name -> (module, attribute in it; None for the module itself)
_LAZY: dict[str, tuple[str, str | None]] = {
    "attr": ("captum_vit.attr", None),
    "models": ("captum_vit.models", None),
    "get_method": ("captum_vit.attr", "get_method"),
    "list_methods": ("captum_vit.attr", "list_methods"),
    "Wrapped": ("captum_vit.models", "Wrapped"),
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'captum_vit' has no attribute {name!r}")
    module, attribute = _LAZY[name]
    value = importlib.import_module(module)
    if attribute is not None:
        value = getattr(value, attribute)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
