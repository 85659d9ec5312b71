"""Attention-graph pruning: head fusion, the ``min_cut`` threshold and degree centralities.

MUTEX (Marchetti et al., NCA 2025; docs/methods.md §4.1 steps 2–4) reads each layer's attention as
a weighted directed graph over the tokens: fuse the heads (min/max/sum), zero every edge below
``min_cut × (largest edge of that layer)``, then take each node's in-degree (column sum,
attention received) and out-degree (row sum). The unfused torch sequence materialises the fused
stack, a threshold mask and the pruned stack; the Triton path reads the attention stack once,
writes the fused stack (1/heads of its size) with per-block maxima, and reduces it once more.
"""

from __future__ import annotations

import torch
from torch import Tensor

from captum_vit.kernels._common import HEAD_FUSIONS, accumulation_dtype, check_head_fusion, fuse_heads
from captum_vit.kernels._dispatch import check_launchable, load_triton_module, use_triton


def _check(attentions: Tensor, head_fusion: str, min_cut: float) -> None:
    if not isinstance(attentions, Tensor) or attentions.dim() != 5 or attentions.shape[-1] != attentions.shape[-2]:
        raise ValueError(
            f"attentions must be (layers, batch, heads, N, N), got {getattr(attentions, 'shape', type(attentions))}"
        )
    if not attentions.is_floating_point():
        raise TypeError(f"attentions must be floating point, got {attentions.dtype}")
    check_head_fusion(head_fusion)
    if not 0.0 <= float(min_cut) <= 1.0:
        raise ValueError(f"min_cut must be in [0, 1], got {min_cut}")


def attention_graph_centralities_reference(
    attentions: Tensor, head_fusion: str = "sum", min_cut: float = 0.01
) -> tuple[Tensor, Tensor]:
    """Pure-torch :func:`attention_graph_centralities` (the spec)."""
    _check(attentions, head_fusion, min_cut)
    # Half inputs are fused and summed in float32 on both paths (the threshold test is then
    # decided on the same values).
    acc = accumulation_dtype(attentions.dtype)
    fused = fuse_heads(attentions.to(acc), head_fusion)  # (L, B, N, N)
    threshold = min_cut * fused.amax(dim=(-2, -1), keepdim=True)
    pruned = torch.where(fused >= threshold, fused, torch.zeros((), dtype=acc, device=fused.device))
    return pruned.sum(dim=-2).to(attentions.dtype), pruned.sum(dim=-1).to(attentions.dtype)


def attention_graph_centralities(
    attentions: Tensor, head_fusion: str = "sum", min_cut: float = 0.01, impl: str = "auto"
) -> tuple[Tensor, Tensor]:
    """In- and out-degree of every token in each layer's pruned, head-fused attention graph.

    Parameters
    ----------
    attentions : Tensor
        ``(L, B, heads, N, N)`` attention probabilities (prefix-token rows/columns already
        removed by the caller if they should not be nodes).
    head_fusion : str
        ``"sum"`` (default), ``"mean"``, ``"max"`` or ``"min"`` over heads (MUTEX builds one
        multiplex each for min, max and sum).
    min_cut : float
        Edges below ``min_cut × max(edge in that layer and example)`` are zeroed (MUTEX default
        0.01). Edges equal to the threshold are kept.
    impl : str
        ``"auto"`` (Triton for CUDA tensors when Triton imports), ``"reference"`` or ``"triton"``.
        The Triton path has no backward (MUTEX needs none): inputs needing a gradient use the
        reference under ``"auto"`` and raise under ``"triton"``.

    Returns
    -------
    tuple of Tensor
        ``(in_degree, out_degree)``, each ``(L, B, N)``: column sums (attention a token
        receives) and row sums (attention it gives) of the pruned matrix.

    Raises
    ------
    ValueError
        On a non-5-D or non-square stack, an unknown fusion/impl or ``min_cut`` outside [0, 1].
    TypeError
        When ``attentions`` is not floating point.

    References
    ----------
    Marchetti, Traini, Ursino & Virgili, "Multiplex Network-Based Representation of Vision
    Transformers for Visual Explainability", Neural Computing and Applications, 2025 (MUTEX).

    Examples
    --------
    >>> a = torch.tensor([[0.7, 0.3], [0.005, 0.995]]).expand(1, 1, 2, 2, 2)
    >>> in_deg, out_deg = attention_graph_centralities(a, "mean", min_cut=0.01)
    >>> in_deg
    tensor([[[0.7000, 1.2950]]])
    >>> out_deg
    tensor([[[1.0000, 0.9950]]])
    """
    _check(attentions, head_fusion, min_cut)
    if not use_triton(impl, attentions):
        return attention_graph_centralities_reference(attentions, head_fusion, min_cut)
    kern = load_triton_module("_triton_graph")
    check_launchable(kern.fuse_max_kernel, attentions)
    return kern.launch(attentions, HEAD_FUSIONS.index(head_fusion), float(min_cut))
