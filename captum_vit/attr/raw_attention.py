"""Raw attention (the "attention last layer" baseline of Chefer et al., docs/methods.md §9)."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from captum_vit.attr._base import OutputFn
from captum_vit.attr._registry import register_method
from captum_vit.attr._vit_common import AttentionAttribution
from captum_vit.kernels._common import check_head_fusion, fuse_heads


@register_method("raw_attention")
class RawAttention(AttentionAttribution):
    """One block's attention from the classifier's token(s) to the patches, fused over heads.

    Parameters
    ----------
    model : nn.Module
        A timm ViT with class-token, average or attention pooling (the rows are weighted by
        the pooling head's probe attention, fused over heads with ``head_fusion``).
    layer : int
        Block index (default ``-1``, the last block, as Chefer et al.).
    head_fusion : str
        ``"mean"`` (default), ``"max"``, ``"min"`` or ``"sum"``.

    Not class-specific: ``target`` is validated but does not change the map. Only block
    ``layer`` is recorded, fused over heads as it runs.

    Examples
    --------
    >>> import timm, torch
    >>> m = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3,
    ...                       depth=2, img_size=32).eval()
    >>> RawAttention(m).attribute(torch.rand(2, 3, 32, 32), target=1).shape
    torch.Size([2, 3, 32, 32])
    """

    def __init__(
        self,
        model: nn.Module,
        layer: int = -1,
        head_fusion: str = "mean",
        interpolate_mode: str | None = None,
        output_fn: OutputFn | None = None,
    ) -> None:
        super().__init__(model, interpolate_mode, output_fn)
        n = self.vit.num_blocks
        if not -n <= layer < n:
            raise ValueError(f"layer must be in [-{n}, {n}) for a {n}-block model, got {layer}")
        self.layer = layer % n
        self.head_fusion = check_head_fusion(head_fusion)

    def _patch_map(self, x: Tensor, target: Tensor | None, forward_args: tuple[Any, ...]) -> Tensor:
        # only the one block is kept, fused over heads in its hook
        (fused,), pool = self._fused_attentions(
            x, forward_args, lambda a: fuse_heads(a.clamp(min=0), self.head_fusion), [self.layer]
        )
        pool_row = None if pool is None else fuse_heads(pool[:, :, None], self.head_fusion)[:, 0]
        return self._read_rows(fused, (x.shape[-2], x.shape[-1]), pool_row)
