"""timm ViTs whose attention depends on token positions: BEiT, EVA and relative-position ViTs.

timm's ``Beit`` (BEiT v1/v2: relative position bias per block or shared), ``Eva`` (EVA-02,
DINOv3, Perception Encoder: rotary position embeddings) and ``VisionTransformerRelPos``
(``vit_relpos_*``: relative position bias or MLP) lay out their tokens as timm's
``VisionTransformer`` (prefix tokens first, then the patch grid in raster order) and compute
attention the same way: a ``fused_attn`` flag selects ``scaled_dot_product_attention``, and the
explicit path applies the position term to the logits, takes the softmax and passes the
probabilities through ``attn_drop`` (an identity in eval mode). So the timm ViT's
instrumentation carries over: :meth:`ViTAdapter.explicit_attention` switches ``fused_attn`` off
on the view, and ``attn_drop`` is the probe; the relative bias or RoPE is applied by the
model's own code (``tests/models/test_family_timm.py`` checks the probed forward against the
plain one).

What differs: tokens cannot be removed from the sequence (the position term is indexed by the
full grid), so MUTEX masks them out of every attention instead
(:func:`~captum_vit.models.hooks.mask_patch_tokens`); Transformer Attribution's relevance rules
cover timm ``Block`` internals only, so it refuses these models; blocks that normalise after
the attention (``ResPostRelPosBlock``, ``EvaBlockPostNorm``) take Grad-CAM's activations from
the previous block's output, the input the last attention reads.
"""

from __future__ import annotations

from typing import Any, ClassVar

from timm.layers.attention import AttentionRope
from timm.models.beit import Attention as BeitAttention
from timm.models.beit import Beit
from timm.models.eva import Eva, EvaAttention, EvaBlockPostNorm
from timm.models.vision_transformer_relpos import RelPosAttention, ResPostRelPosBlock, VisionTransformerRelPos
from torch import nn

from captum_vit.models.vit import ViTAdapter, register_family

#: Blocks computing ``x + norm1(attn(x))``: their ``norm1`` follows the attention.
_POST_NORM_BLOCKS = (EvaBlockPostNorm, ResPostRelPosBlock)


class _PositionalTimmViT(ViTAdapter):
    """What the three timm families share; each subclass names its model and attention classes."""

    supports_token_removal: ClassVar[bool] = False
    model_class: ClassVar[type[nn.Module]]
    attention_classes: ClassVar[tuple[type[nn.Module], ...]]
    #: Position terms shared by every block: embeddings, frozen in LTX's explainer with the
    #: timm ViT's (per-block relative position tables are attention weights and train).
    shared_position_parts: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def accepts(cls, module: nn.Module) -> bool:
        return isinstance(module, cls.model_class)

    def _setup(self, module: nn.Module) -> None:
        blocks = list(module.blocks)  # type: ignore[arg-type]
        if not blocks:
            raise TypeError(f"the {type(module).__name__} model has no blocks")
        attention_names = ", ".join(c.__name__ for c in self.attention_classes)
        for i, b in enumerate(blocks):
            attn = getattr(b, "attn", None)
            if not isinstance(attn, self.attention_classes):
                raise TypeError(
                    f"block {i} of the {type(module).__name__} model has attention {type(attn).__name__}, "
                    f"expected {attention_names}"
                )
            if not hasattr(attn, "fused_attn") or not isinstance(getattr(attn, "attn_drop", None), nn.Dropout):
                raise TypeError(
                    f"block {i}'s {type(attn).__name__} has no fused_attn flag or attn_drop dropout: this timm "
                    "version computes attention differently from the one captum_vit reads"
                )
        self.blocks: list[nn.Module] = blocks
        self.attentions: list[Any] = [b.attn for b in blocks]
        self.patch_embed: Any = module.patch_embed

    @property
    def gradcam_layer(self) -> nn.Module:
        """The last block's first norm, or, for blocks that normalise after the attention, the
        previous block (whose output is what the last attention reads).

        Raises
        ------
        ValueError
            For a one-block model of post-norm blocks (no module outputs the attention's input
            with its prefix tokens: pass ``layer=`` explicitly).
        """
        last = self.blocks[-1]
        if not isinstance(last, _POST_NORM_BLOCKS):
            return last.norm1  # type: ignore[return-value]
        if len(self.blocks) < 2:
            raise ValueError(
                f"a one-block {type(self.module).__name__} with {type(last).__name__} normalises after the "
                "attention: no default Grad-CAM layer; pass layer=..."
            )
        return self.blocks[-2]

    @property
    def embedding_parts(self) -> list[nn.Module | nn.Parameter]:
        parts = super().embedding_parts
        more = [getattr(self.module, n, None) for n in self.shared_position_parts]
        return parts + [p for p in more if isinstance(p, (nn.Module, nn.Parameter))]


@register_family
class BeitAdapter(_PositionalTimmViT):
    """timm ``Beit`` (BEiT, BEiT v2): relative position bias per block or shared by all.

    Pooling: ``global_pool='avg'`` (the default, patch-token mean, then ``fc_norm``) or
    ``'token'``.

    Examples
    --------
    >>> import timm
    >>> m = timm.create_model("beit_base_patch16_224", pretrained=False, img_size=32, patch_size=8,
    ...                       embed_dim=32, depth=2, num_heads=2, num_classes=3)
    >>> a = ViTAdapter(m)
    >>> type(a).__name__, a.readout, a.supports_token_removal
    ('BeitAdapter', Readout(rows=None, include_prefix=False, attention_pool=False), False)
    """

    family: ClassVar[str] = "timm Beit (BEiT, BEiT v2; relative position bias)"
    model_class = Beit
    attention_classes = (BeitAttention,)
    shared_position_parts = ("rel_pos_bias",)


@register_family
class EvaAdapter(_PositionalTimmViT):
    """timm ``Eva`` (EVA, EVA-02, DINOv3, Perception Encoder): rotary position embeddings
    applied to the patch tokens' queries and keys.

    Pooling: ``'avg'``, ``'token'`` or ``'map'`` (attention pooling); ``'max'`` and
    ``'avgmax'`` have no row readout and are refused by the attention-graph methods.

    Examples
    --------
    >>> import timm
    >>> m = timm.create_model("eva02_tiny_patch14_224", pretrained=False, img_size=28, patch_size=14,
    ...                       embed_dim=32, depth=2, num_heads=2, num_classes=3)
    >>> a = ViTAdapter(m)
    >>> type(a).__name__, a.grid_size((28, 28)), a.readout.rows
    ('EvaAdapter', (2, 2), None)
    """

    family: ClassVar[str] = "timm Eva (EVA, EVA-02, DINOv3, PE; rotary embeddings)"
    model_class = Eva
    attention_classes = (EvaAttention, AttentionRope)
    shared_position_parts = ("rope",)


@register_family
class RelPosViTAdapter(_PositionalTimmViT):
    """timm ``VisionTransformerRelPos`` (``vit_relpos_*``, ``vit_srelpos_*``): relative
    position bias or MLP per block or shared, with or without a class token.

    Examples
    --------
    >>> import timm
    >>> m = timm.create_model("vit_relpos_small_patch16_224", pretrained=False, img_size=32,
    ...                       patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=3)
    >>> a = ViTAdapter(m)
    >>> type(a).__name__, a.num_prefix_tokens, a.readout.rows
    ('RelPosViTAdapter', 0, None)
    """

    family: ClassVar[str] = "timm VisionTransformerRelPos (vit_relpos_*, vit_srelpos_*; relative position bias)"
    model_class = VisionTransformerRelPos
    attention_classes = (RelPosAttention,)
    shared_position_parts = ("shared_rel_pos",)
