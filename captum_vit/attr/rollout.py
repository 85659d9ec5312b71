"""Attention rollout (Abnar & Zuidema, ACL 2020; docs/methods.md §9)."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from captum_vit.attr._base import OutputFn
from captum_vit.attr._registry import register_method
from captum_vit.attr._vit_common import AttentionAttribution, check_product
from captum_vit.kernels._common import check_head_fusion, check_impl, fuse_heads
from captum_vit.kernels.rollout import attention_rollout, rollout_row_step


@register_method("rollout")
class AttentionRollout(AttentionAttribution):
    """Attention rollout: per block, fuse heads, add the identity, row-normalise, and
    multiply the blocks from ``start_layer`` to the last; read the classifier's row.

    Parameters
    ----------
    model : nn.Module
        A timm ViT with class-token, average or attention pooling (average pooling reads the
        mean of the patch rows; distilled DeiT the mean of the class and distillation rows;
        attention pooling the rows weighted by the pooling head's probe attention, fused over
        heads with ``head_fusion``).
    start_layer : int
        First block in the product (default 0, as Abnar & Zuidema; Chefer et al.'s
        evaluation used 1).
    head_fusion : str
        ``"mean"`` (default, the paper), ``"max"``, ``"min"`` or ``"sum"``.
    discard_ratio : float
        Fraction of the smallest fused-attention entries zeroed per example before adding
        the identity (jacobgil/vit-explain; default 0, the paper).
    impl : str
        Rollout kernel: ``"auto"`` (Triton on CUDA tensors), ``"reference"`` or ``"triton"``.
    product : str
        ``"row"`` (default): only the classifier's row(s) ``r`` of the product, as the chain
        ``r A'_{L-1} ... A'_{start}`` of vector-matrix products (``O(N^2)`` per block), each
        block's attention fused over heads as it is computed and then dropped (on timm's
        standard attention a slice of query rows at a time, in cache,
        :func:`~captum_vit.models.recomputed_attention.attention_reductions`); ``"full"``:
        the ``(B, N, N)`` product of every block's factor (``O(N^3)`` per block), then its
        rows. Both give the same map up to rounding (``tests/attr/test_row_form.py``).

    Not class-specific: ``target`` is validated but does not change the map.

    References
    ----------
    Abnar & Zuidema, "Quantifying Attention Flow in Transformers", ACL 2020.

    Examples
    --------
    >>> import timm, torch
    >>> m = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3,
    ...                       depth=2, img_size=32).eval()
    >>> AttentionRollout(m).attribute(torch.rand(1, 3, 32, 32), return_patch_map=True).shape
    torch.Size([1, 2, 2])
    """

    def __init__(
        self,
        model: nn.Module,
        start_layer: int = 0,
        head_fusion: str = "mean",
        discard_ratio: float = 0.0,
        impl: str = "auto",
        product: str = "row",
        interpolate_mode: str | None = None,
        output_fn: OutputFn | None = None,
    ) -> None:
        super().__init__(model, interpolate_mode, output_fn)
        n = self.vit.num_blocks
        if not 0 <= start_layer < n:
            raise ValueError(f"start_layer must be in [0, {n}), got {start_layer}")
        if not 0.0 <= discard_ratio < 1.0:
            raise ValueError(f"discard_ratio must be in [0, 1), got {discard_ratio}")
        self.start_layer, self.discard_ratio = start_layer, discard_ratio
        self.head_fusion = check_head_fusion(head_fusion)
        self.impl = check_impl(impl)
        self.product = check_product(product)

    def _patch_map(self, x: Tensor, target: Tensor | None, forward_args: tuple[Any, ...]) -> Tensor:
        size = (x.shape[-2], x.shape[-1])
        if self.product == "full":
            rec = self._attentions(x, target, forward_args, gradients=False)
            joint = attention_rollout(rec.attn, self.start_layer, self.head_fusion, self.discard_ratio, self.impl)
            pool_row = None if rec.pool is None else fuse_heads(rec.pool[:, :, None], self.head_fusion)[:, 0]
            return self._read_rows(joint, size, pool_row)
        blocks = range(self.start_layer, self.vit.num_blocks)
        fused, pool = self._fused_attentions(x, forward_args, lambda a: fuse_heads(a, self.head_fusion), blocks)
        pool_row = None if pool is None else fuse_heads(pool[:, :, None], self.head_fusion)[:, 0]
        rows = self._row_weights(fused[-1][:, 0], pool_row)
        while fused:  # last block first; each factor is freed once used
            rows = rollout_row_step(rows, fused.pop(), self.discard_ratio, self.impl)
        return self.vit.patch_columns(rows, size)
