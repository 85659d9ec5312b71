"""Adapters of the ViT families beyond timm's ``VisionTransformer``.

Each module defines a :class:`~captum_vit.models.vit.ViTAdapter` subclass and registers it
with :func:`~captum_vit.models.vit.register_family`; importing this package registers them
all (``ViTAdapter`` imports it on first use).
"""
from captum_vit.models.families import (
    hf,  # noqa: F401
    timm_relative,  # noqa: F401
    torchvision_vit,  # noqa: F401
)
