"""Attribution methods for Vision Transformers (and CNNs), as captum ``Attribution``s."""

from captum_vit.attr._base import (
    ConstantMapWarning,
    EmptyMapWarning,
    MapAttribution,
    patch_map_output,
    unpack_single_input,
)
from captum_vit.attr._registry import get_method, list_methods, method_info, register_method
from captum_vit.attr._targets import format_targets
from captum_vit.attr.attention_gradcam import AttentionGradCAM
from captum_vit.attr.diffmask import VisionDiffMask
from captum_vit.attr.gae import GenericAttention
from captum_vit.attr.gradcam import GradCAM
from captum_vit.attr.iia import IIA
from captum_vit.attr.ltx import EEA, LTX, PLTX
from captum_vit.attr.mutex import MUTEX
from captum_vit.attr.raw_attention import RawAttention
from captum_vit.attr.rollout import AttentionRollout
from captum_vit.attr.transformer_attribution import TransformerAttribution
from captum_vit.attr.vit_gradcam import ViTGradCAM

__all__ = [
    "AttentionGradCAM",
    "AttentionRollout",
    "GenericAttention",
    "GradCAM",
    "EEA",
    "ConstantMapWarning",
    "EmptyMapWarning",
    "IIA",
    "LTX",
    "MUTEX",
    "MapAttribution",
    "PLTX",
    "RawAttention",
    "TransformerAttribution",
    "ViTGradCAM",
    "VisionDiffMask",
    "format_targets",
    "get_method",
    "list_methods",
    "method_info",
    "patch_map_output",
    "register_method",
    "unpack_single_input",
]
