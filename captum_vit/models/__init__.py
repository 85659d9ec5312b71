"""Model adapters and hooks: the one place that knows model internals."""

from captum_vit.models.hooks import (
    AttentionRecord,
    HiddenStates,
    count_output_bytes,
    record_activations,
    record_attention,
    record_hidden_states,
    replace_patch_embeddings,
)
from captum_vit.models.pretrained import list_pretrained, load_pretrained
from captum_vit.models.token_selection import keep_patch_tokens, mask_patch_tokens
from captum_vit.models.view import private_view, unwrap_compiled
from captum_vit.models.vit import (
    SUPPORTED_VITS,
    Readout,
    ViTAdapter,
    is_vit,
    register_family,
    supported_vits,
    upsample_patch_map,
)
from captum_vit.models.wrapped import Wrapped

__all__ = [
    "SUPPORTED_VITS",
    "AttentionRecord",
    "HiddenStates",
    "Readout",
    "ViTAdapter",
    "Wrapped",
    "count_output_bytes",
    "is_vit",
    "keep_patch_tokens",
    "list_pretrained",
    "mask_patch_tokens",
    "load_pretrained",
    "private_view",
    "record_activations",
    "record_attention",
    "record_hidden_states",
    "register_family",
    "replace_patch_embeddings",
    "supported_vits",
    "unwrap_compiled",
    "upsample_patch_map",
]
