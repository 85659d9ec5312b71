"""torchvision's ``VisionTransformer`` (``vit_b_16``, ``vit_l_16``, ... and any instance).

torchvision builds each encoder block around ``nn.MultiheadAttention`` called with
``need_weights=False``, so the probabilities never leave PyTorch's fused kernel. Inside
:meth:`TorchvisionViTAdapter.explicit_attention` each block's attention runs
:func:`~captum_vit.models.families._mha.explicit_mha` instead (the same function from the
module's own weights, ``tests/models/test_family_torchvision.py`` checks the logits to 1e-5),
with the probabilities passed through a probe child of the attention module.

The class token is row 0 and the head reads its final normed state; position embeddings are
absolute and added before the first block, so MUTEX may remove patch tokens there.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import ClassVar

import torch
from torch import Tensor, nn

from captum_vit.models.families._mha import probed_mha
from captum_vit.models.vit import Readout, ViTAdapter, register_family, supported_vits

_TV_MODULE = "torchvision.models.vision_transformer"


@register_family
class TorchvisionViTAdapter(ViTAdapter):
    """Adapter of ``torchvision.models.VisionTransformer`` (and its subclasses).

    Examples
    --------
    >>> from torchvision.models import VisionTransformer
    >>> m = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2,
    ...                       hidden_dim=32, mlp_dim=64, num_classes=5).eval()
    >>> a = ViTAdapter(m)
    >>> type(a).__name__, a.num_blocks, a.grid_size((32, 32)), a.readout.rows
    ('TorchvisionViTAdapter', 2, (4, 4), (0,))
    >>> with a.explicit_attention():
    ...     probes = a.attention_probes
    ...     seen = []
    ...     _ = probes[-1].register_forward_hook(lambda mod, i, o: seen.append(o.shape))
    ...     _ = m(torch.rand(1, 3, 32, 32))
    >>> seen  # (B, heads, class + 16 patches, 17)
    [torch.Size([1, 2, 17, 17])]
    """

    family: ClassVar[str] = "torchvision VisionTransformer (vit_b_16, vit_l_16, ...; fixed image_size)"

    @classmethod
    def accepts(cls, module: nn.Module) -> bool:
        # by class name and module (no import): subclasses count too
        return any(c.__module__ == _TV_MODULE and c.__name__ == "VisionTransformer" for c in type(module).__mro__)

    def _setup(self, module: nn.Module) -> None:
        encoder = getattr(module, "encoder", None)
        layers = list(getattr(encoder, "layers", None) or [])
        if not layers or not all(isinstance(getattr(b, "self_attention", None), nn.MultiheadAttention) for b in layers):
            raise TypeError(
                f"torchvision model of type {type(module).__name__} has no encoder.layers of blocks with an "
                f"nn.MultiheadAttention self_attention; supported: {supported_vits()}"
            )
        self.blocks: list[nn.Module] = layers
        self.attentions: list[nn.MultiheadAttention] = [b.self_attention for b in layers]  # type: ignore[misc]
        self.patch_embed = module.conv_proj

    # ------------------------------------------------------------------ geometry
    @property
    def num_prefix_tokens(self) -> int:
        return 1

    @property
    def num_heads(self) -> int:
        return int(self.attentions[-1].num_heads)

    @property
    def num_classes(self) -> int:
        head = getattr(self.module.heads, "head", None)
        return int(head.out_features) if isinstance(head, nn.Linear) else 0

    @property
    def dtype(self) -> torch.dtype:
        return self.module.class_token.dtype  # type: ignore[no-any-return]

    @property
    def in_chans(self) -> int:
        # conv_proj is one Conv2d, or a convolutional stem (conv_stem_configs) whose first layer reads the image
        first = next(m for m in self.patch_embed.modules() if isinstance(m, nn.Conv2d))
        return int(first.in_channels)

    @property
    def patch_size(self) -> tuple[int, int]:
        p = int(self.module.patch_size)
        return (p, p)

    @property
    def dynamic_img_size(self) -> bool:
        return False

    @property
    def img_size(self) -> tuple[int, int]:
        s = int(self.module.image_size)
        return (s, s)

    @property
    def embed_dim(self) -> int:
        return int(self.module.hidden_dim)

    def grid_size(self, image_size: tuple[int, int]) -> tuple[int, int]:
        g = int(self.module.image_size) // int(self.module.patch_size)
        return (g, g)

    @property
    def readout(self) -> Readout:
        """The class token (row 0), which ``heads`` reads."""
        return Readout(rows=(0,))

    # ----------------------------------------------------------- instrumentation
    @property
    def attention_pool(self) -> None:
        return None

    @property
    def pool_input(self) -> nn.Module:
        """``encoder.ln``: the final norm, whose row 0 the heads read."""
        return self.module.encoder.ln  # type: ignore[no-any-return]

    @property
    def attention_probes(self) -> list[nn.Module]:
        """Per block, the probe child of ``self_attention`` (only inside :meth:`explicit_attention`)."""
        return self._probe_children()

    def pool_attention_probe(self) -> nn.Module | None:
        return None

    @contextmanager
    def explicit_attention(self) -> Iterator[None]:
        """Each block's ``nn.MultiheadAttention`` runs the explicit forward with a probe
        (:func:`~captum_vit.models.families._mha.probed_mha`); restored on exit. Call it on a
        private view only."""
        with probed_mha(self.attentions):
            yield

    @property
    def patch_embedding(self) -> nn.Module:
        """``conv_proj``, whose ``(B, D, h, w)`` output holds the patch tokens."""
        return self.patch_embed  # type: ignore[no-any-return]

    def patch_tokens(self, out: Tensor) -> Tensor:
        return out.flatten(2).transpose(1, 2)

    def restore_patch_tokens(self, tokens: Tensor, like: Tensor) -> Tensor:
        return tokens.transpose(1, 2).reshape(like.shape)

    @property
    def gradcam_layer(self) -> nn.Module:
        """The last block's ``ln_1`` (the counterpart of timm's ``norm1``)."""
        return self.blocks[-1].ln_1  # type: ignore[return-value]

    @property
    def lrp_unsupported(self) -> str | None:
        return (
            "its relevance-propagation rules cover timm VisionTransformer blocks, not torchvision's "
            "EncoderBlock (nn.MultiheadAttention)"
        )

    def final_tokens(self, x: Tensor) -> Tensor:
        m = self.module
        tokens = m._process_input(x)
        tokens = torch.cat([m.class_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        return m.encoder(tokens)  # type: ignore[no-any-return]

    def strip_head(self) -> None:
        self.module.heads = nn.Identity()

    @property
    def embedding_parts(self) -> list[nn.Module | nn.Parameter]:
        m = self.module
        return [m.conv_proj, m.class_token, m.encoder.pos_embedding]
