"""captum_vit: explanations for Vision Transformers behind captum's Attribution API."""

from captum_vit import attr, models
from captum_vit.attr import get_method, list_methods

__version__ = "0.1.0"

__all__ = ["__version__", "attr", "get_method", "list_methods", "models"]
