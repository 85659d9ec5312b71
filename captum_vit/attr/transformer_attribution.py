"""Transformer Attribution (Chefer, Gur & Wolf, CVPR 2021; docs/methods.md §9) on a stock timm ViT."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from captum_vit.attr._lrp import block_relevance, cast_trace, head_relevance, pixel_relevance
from captum_vit.attr._registry import register_method
from captum_vit.attr._vit_common import AttentionAttribution
from captum_vit.kernels._common import check_impl, fuse_heads
from captum_vit.kernels.rollout import attention_rollout
from captum_vit.models.lrp_trace import check_lrp_supported, record_lrp_trace

METHODS = ("transformer_attribution", "rollout", "last_layer", "full")


@register_method("transformer_attribution")
class TransformerAttribution(AttentionAttribution):
    """Transformer Attribution: LRP relevance of each block's attention combined with its
    gradient, rolled out over the blocks.

    Relevance starts as the one-hot target class at the logits and is propagated through
    the recorded forward pass of the unmodified model (rules in :mod:`captum_vit.attr._lrp`:
    αβ for linear layers, re-normalised proportional split at residual additions, explicit
    rules for ``q kᵀ`` and ``A v``, pass-through for softmax / LayerNorm / GELU). For each
    block ``l ≥ start_layer`` (eqs. 13-14 of the paper)::

        Ā_l = I + mean_heads((∇A_l ⊙ R(A_l))⁺),   C = Ā_{L-1} ··· Ā_{start_layer}

    and the map is the classifier's row of ``C`` (class token; mean of class and
    distillation rows for distilled DeiT) over the patches. Average pooling is an attention
    with weights ``1/n`` over the pooled tokens, weighed like every attention here:
    its row is ``(∇a ⊙ R(a))⁺`` (eq. 13; ``R(a)⁺`` for the LRP-only read-outs), ``R(a_j)`` the
    LRP relevance of token ``j`` at the pool, and it reads ``norm_rows(C − I) + I`` (GAE's
    eqs. 8-9, see :class:`~captum_vit.attr.GenericAttention`). The uniform mean of the patch
    rows used before made the maps constant. As in the paper and the official
    ``compute_rollout_attention`` (whose row normalisation is commented out), the factors are
    not row-normalised unless ``normalize_rows=True``.

    Half-precision models (float16, bfloat16) are explained on a float32 view: float32 copies
    of the weights for the duration of the call (the user's model is not touched). LRP's
    residual rule flips the sign of a whole branch's relevance when that branch's total
    crosses zero, so half-precision rounding of the recorded activations changed the maps
    (correlation 0.8 with the float32 map on the shipped synthetic ViT); the float32 view
    gives the float32 model's map.

    Cost: one forward pass, one backward pass (to each block's attention output ``O = A v``
    from ``start_layer`` up: ``∇A = (∂y/∂O) vᵀ``) and one relevance pass down to
    ``start_layer`` only. The relevance pass recomputes each block's attention probabilities
    from the recorded q and k, and fuses the heads of ``(∇A ⊙ R(A))⁺`` as soon as a block is
    done, so nothing ``(B, heads, N, N)`` is held for more than one block, by the trace or by
    autograd (:mod:`captum_vit.models.lrp_trace`): the peak memory is that of a plain forward
    and backward pass plus one block's attention-sized buffers
    (``benchmarks/speed/test_bench_tattr.py`` measures latency and memory).

    Parameters
    ----------
    model : nn.Module
        A timm ViT built from pre-norm ``Block``s with an ``Mlp`` and a linear head, with
        class-token, distillation or average pooling (register tokens are fine).
    method : str
        ``"transformer_attribution"`` (the paper), or the official code's other LRP read-outs:
        ``"rollout"`` (rollout of ``mean_heads(R(A_l)⁺)``), ``"last_layer"``
        (``mean_heads(R(A_{L-1})⁺)``, classifier row) or ``"full"`` (LRP down to the pixels
        through the patch-embedding convolution, summed over channels; the "patch map" is
        then at pixel resolution ``(B, H, W)``).
    start_layer : int
        First block of the rollout. Default 1: Chefer et al.'s evaluation scripts call
        ``generate_LRP(..., start_layer=1)`` (the function's own default is 0).
    alpha : float
        α of the αβ rule (β = α - 1); 1 as in the paper.
    normalize_rows : bool
        Row-normalise each rollout factor (Abnar & Zuidema) instead of the paper's plain
        ``I + Ā``.
    impl : str
        Rollout kernel (:func:`captum_vit.kernels.attention_rollout`): ``"auto"`` (Triton on
        CUDA tensors), ``"reference"`` or ``"triton"``.
    interpolate_mode : str, optional
        Upsampling of the patch map (default bilinear, as the paper).
    output_fn : None
        Refused (``ValueError``) when given: relevance starts from the head's logits.

    Raises
    ------
    TypeError
        For models LRP cannot traverse (other block types, gated attention, no linear head).
    ValueError
        For an unknown ``method``, a ``start_layer`` outside ``[0, num_blocks)``, ``alpha < 1``,
        or an unsupported pooling (attention pooling, whose head LRP has no rules for; max
        pooling).

    References
    ----------
    Chefer, Gur & Wolf, "Transformer Interpretability Beyond Attention Visualization",
    CVPR 2021, §3 and eqs. (13)-(14); official code ``hila-chefer/Transformer-Explainability``
    (``baselines/ViT/ViT_LRP.py``, ``modules/layers_ours.py``).
    Bach et al., "On Pixel-Wise Explanations for Non-Linear Classifier Decisions by
    Layer-Wise Relevance Propagation", PLOS ONE 2015 (the αβ rule).

    Examples
    --------
    >>> import timm, torch
    >>> m = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3,
    ...                       depth=2, img_size=32).eval()
    >>> ta = TransformerAttribution(m)
    >>> ta.attribute(torch.rand(2, 3, 32, 32), target=[0, 2]).shape
    torch.Size([2, 3, 32, 32])
    >>> TransformerAttribution(m, method="full").attribute(
    ...     torch.rand(1, 3, 32, 32), target=1, return_patch_map=True).shape
    torch.Size([1, 32, 32])
    """

    float32_view = True

    def __init__(
        self,
        model: nn.Module,
        method: str = "transformer_attribution",
        start_layer: int = 1,
        alpha: float = 1.0,
        normalize_rows: bool = False,
        impl: str = "auto",
        interpolate_mode: str | None = None,
        output_fn: Any = None,
    ) -> None:
        super().__init__(model, interpolate_mode)
        check_lrp_supported(self.vit)
        if output_fn is not None:  # accepted as every method's option, to refuse with the reason
            raise ValueError(
                "output_fn is not supported: relevance propagates from the classifier head's logit of the target, "
                "not from other scores"
            )
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        n = self.vit.num_blocks
        if not 0 <= start_layer < n:
            raise ValueError(f"start_layer must be in [0, {n}) for this {n}-block model, got {start_layer}")
        if not alpha >= 1.0:
            raise ValueError(f"alpha must be >= 1 (beta = alpha - 1 >= 0), got {alpha}")
        self.method, self.start_layer, self.alpha, self.normalize_rows = method, start_layer, alpha, normalize_rows
        self.impl = check_impl(impl)

    def _patch_map(self, x: Tensor, target: Tensor | None, forward_args: tuple[Any, ...]) -> Tensor:
        n = self.vit.num_blocks
        needs_grad = self.method == "transformer_attribution"
        average = self.vit.readout.rows is None
        # the lowest block whose relevance is read: LRP below it is never computed
        lowest = {"last_layer": n - 1, "full": 0}.get(self.method, self.start_layer)
        grads: list[Tensor] = []
        with torch.set_grad_enabled(needs_grad), record_lrp_trace(self.vit) as trace:
            # the input needs a gradient only so attention is in the graph for a frozen model
            logits = self._forward(x.requires_grad_(needs_grad), forward_args)
            score, idx = self._target_score(logits, target)
            if needs_grad:  # one backward for every block's ∂y/∂O (and the pooled tokens)
                wrt = [trace.attention_output(i) for i in range(lowest, n)]
                grads = list(torch.autograd.grad(score, wrt + ([trace.tokens_in_graph] if average else [])))
        del logits, score
        r = head_relevance(trace, idx, self.alpha)
        pool_row = self._pool_row(trace.tokens, r, grads.pop() if grads and average else None)
        cams: list[Tensor] = []  # (B, N, N) per block from the top, heads already fused
        for i in range(n - 1, lowest - 1, -1):
            blk = cast_trace(trace.block(i), r.dtype)
            r_in, r_attn, _ = block_relevance(blk, r, self.alpha, need_input=i > lowest or self.method == "full")
            if grads:  # eq. 13 before the head mean: (∇A ⊙ R(A))⁺, ∇A = (∂y/∂O) vᵀ per head
                grad_a = blk.split_heads(grads.pop().to(r.dtype)) @ blk.v.transpose(-1, -2)
                r_attn = grad_a.mul_(r_attn)
            if self.method != "full":
                cams.append(fuse_heads(r_attn.clamp_(min=0)))
            trace.release(i)
            r = r_in if r_in is not None else r
            del blk, r_attn
        if self.method == "full":
            return pixel_relevance(trace, r).sum(dim=1)[..., : x.shape[-2], : x.shape[-1]]
        size = (x.shape[-2], x.shape[-1])
        if self.method == "last_layer":
            return self._read_rows(cams[0], size, pool_row)
        # eq. 14: Ā_l = I + mean_heads(cam_l), multiplied from start_layer to the last block
        # (the heads are fused already: a single "head" goes through the rollout kernel)
        joint = attention_rollout(
            torch.stack(cams[::-1])[:, :, None], head_fusion="mean", impl=self.impl, row_normalize=self.normalize_rows
        )
        return self._read_rows(joint, size, pool_row, residual=not self.normalize_rows)

    def _pool_row(self, tokens: Tensor, relevance: Tensor, tokens_grad: Tensor | None) -> Tensor | None:
        """Average pooling is an attention with weights ``a_j = 1/n`` over the pooled tokens;
        its row is weighed like every attention here: ``(∇a ⊙ R(a))⁺`` (eq. 13), or ``R(a)⁺``
        for the LRP-only read-outs, with ``R(a_j)`` the LRP relevance of token ``j`` at the pool
        and ``∂y/∂a_j = <∂y/∂t_j, t_j> / a_j``. ``None`` for token readouts."""
        if self.vit.readout.rows is not None:
            return None
        weights = self.vit.readout_weights(tokens.shape[1], tokens.device).to(relevance.dtype)
        rel_a = relevance.sum(-1)  # (B, N): zero outside the pooled tokens
        if tokens_grad is None:
            return rel_a.clamp(min=0)
        grad_a = (tokens_grad.to(relevance.dtype) * tokens.to(relevance.dtype)).sum(-1) / weights.clamp_min(1e-30)
        return (grad_a * rel_a).clamp(min=0)
