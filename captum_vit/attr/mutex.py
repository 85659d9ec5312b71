"""MUTEX: multiplex-graph explanations with attention-graph pruning (docs/methods.md §4).

The ViT's attention is read as a multiplex graph (nodes: patches; one directed weighted
layer per block and head-fusion operator). Weak edges are pruned, per-node in/out-degree
centralities are summarised across layers by nine statistics, each statistic gives a binary
token mask, each mask is scored by running the ViT on the kept tokens only, and the map is the
confidence-weighted vote of the masks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from captum_vit.attr._base import OutputFn, _usable
from captum_vit.attr._registry import register_method
from captum_vit.attr._targets import resolve_targets
from captum_vit.attr._vit_common import AttentionAttribution
from captum_vit.kernels import attention_graph_centralities
from captum_vit.kernels._common import HEAD_FUSIONS, check_head_fusion, check_impl
from captum_vit.models.hooks import record_attention
from captum_vit.models.token_selection import keep_patch_tokens, mask_patch_tokens

#: The nine cross-layer statistics of docs/methods.md §4.1 step 5, in this order.
STATISTICS = ("coherence", "max", "min", "sum", "std", "sum_std", "median", "skewness", "kurtosis")
#: The node centralities: in-degree (column sums, attention received) and out-degree (row sums).
CENTRALITIES = ("in", "out")
#: How the ``median`` statistic treats an even layer count (see :func:`node_statistics`).
MEDIANS = ("lower", "mean_of_middle")
#: Copies of one image's attention probabilities the graph stage is budgeted for (the record,
#: its stacked copy, kernel temporaries); ViT-S/16 measured 1.5 copies per image at the peak.
GRAPH_COPIES = 4


def node_statistics(centrality: Tensor, median: str = "lower") -> Tensor:
    """The nine cross-layer statistics of each node's centralities (docs/methods.md §4.1 step 5).

    Statistics are population moments (``ddof=0``, as numpy/scipy defaults). Edge cases are
    defined rather than left as NaN, so every node can be ranked:

    * ``coherence`` is the Shannon entropy (natural log) of the node's centralities
      normalised to sum to one over the layers, with ``0 log 0 = 0``; a node whose
      centrality is 0 in every layer has coherence 0.
    * A node is *constant* when its largest and smallest value are equal; then ``std``,
      ``skewness`` and (excess) ``kurtosis`` are exactly 0.
    * ``sum_std`` is ``sum / std``; where ``std`` is 0 it is ``+inf`` when the sum is
      positive (a perfectly steady, non-zero centrality ranks highest) and 0 otherwise.
    * ``median``: for an even number of layers, ``median="lower"`` (default) takes the lower
      of the two middle values, as the official MUTEX code does (its
      ``calculate_centrality_coherence`` calls ``torch.median``, which returns the lower
      middle value); ``median="mean_of_middle"`` averages the two (numpy's and scipy's
      median). An odd number of layers has one middle value and both agree.
    * The statistics are computed in float64, and the scale-free ones (coherence, sum/std,
      skewness, kurtosis) are rounded to 9 decimals, so values that are mathematically equal
      tie exactly instead of being ranked by rounding noise: with two layers, for example,
      every node's skewness is 0 and its kurtosis −2.

    Parameters
    ----------
    centrality : Tensor
        ``(L, ..., n)`` non-negative centralities, layers first.
    median : str
        ``"lower"`` (the official code) or ``"mean_of_middle"``, for an even layer count.

    Returns
    -------
    Tensor
        ``(9, ..., n)`` float64, the statistics in the order of :data:`STATISTICS`.

    Raises
    ------
    ValueError
        If ``centrality`` has fewer than 2 dimensions or no layer, or for an unknown ``median``.

    Examples
    --------
    >>> c = torch.tensor([[1.0, 2.0], [1.0, 2.0], [4.0, 2.0]])  # 3 layers, 2 nodes
    >>> dict(zip(STATISTICS, node_statistics(c)[:, 1].tolist()))["sum_std"]
    inf
    >>> node_statistics(c)[[1, 2, 3, 6], 0].tolist()  # max, min, sum, median of node 0
    [4.0, 1.0, 6.0, 1.0]
    >>> even = torch.tensor([[1.0], [2.0], [4.0], [8.0]])  # 4 layers, middle values 2 and 4
    >>> float(node_statistics(even)[6, 0]), float(node_statistics(even, median="mean_of_middle")[6, 0])
    (2.0, 3.0)
    """
    if median not in MEDIANS:
        raise ValueError(f"median must be one of {MEDIANS}, got {median!r}")
    if centrality.dim() < 2 or centrality.shape[0] == 0:
        raise ValueError(
            f"centrality must be (layers, ..., nodes) with at least one layer, got {tuple(centrality.shape)}"
        )
    c = centrality.double()
    n_layers = c.shape[0]
    total = c.sum(0)
    # Coherence: entropy of the node's centrality distribution over layers.
    q = torch.where(total > 0, c / torch.where(total > 0, total, torch.ones_like(total)), torch.zeros_like(c))
    coherence = -torch.special.xlogy(q, q).sum(0)
    hi, lo = c.amax(0), c.amin(0)
    constant = hi == lo
    d = c - total / n_layers
    m2, m3, m4 = (d**2).mean(0), (d**3).mean(0), (d**4).mean(0)
    safe_m2 = torch.where(constant, torch.ones_like(m2), m2)
    zero = torch.zeros_like(m2)
    std = torch.where(constant, zero, m2.sqrt())
    sum_std = torch.where(
        constant, torch.where(total > 0, torch.full_like(total, math.inf), zero), total / torch.where(constant, 1, std)
    )
    ordered = c.sort(0).values
    if n_layers % 2 == 0 and median == "mean_of_middle":
        middle = 0.5 * (ordered[n_layers // 2 - 1] + ordered[n_layers // 2])
    else:
        middle = ordered[(n_layers - 1) // 2]
    skewness = torch.where(constant, zero, m3 / safe_m2**1.5)
    kurtosis = torch.where(constant, zero, m4 / safe_m2**2 - 3.0)
    coherence, sum_std, skewness, kurtosis = (
        torch.round(t, decimals=9) for t in (coherence, sum_std, skewness, kurtosis)
    )
    return torch.stack([coherence, hi, lo, total, std, sum_std, middle, skewness, kurtosis])


def kept_count_index(num_tokens: int, token_ratio: float) -> int:
    """Index into the ascending sort whose value is the keep threshold: ``ceil(n·r) − 1``.

    ``n·r`` is rounded to 9 decimals first so that, e.g., ``10 × 0.7`` (``7.000000000000001``
    in floating point) gives index 6, the intended quantile, not 7.

    Examples
    --------
    >>> kept_count_index(196, 0.5), kept_count_index(10, 0.7), kept_count_index(16, 0.01)
    (97, 6, 0)
    """
    return max(math.ceil(round(num_tokens * token_ratio, 9)) - 1, 0)


def quantile_masks(scores: Tensor, token_ratio: float) -> Tensor:
    """Keep the tokens whose score is at or above the ``token_ratio`` quantile (§4.1 step 6).

    The threshold is the value at index ``ceil(n·token_ratio) − 1`` of the ascending sort, so
    ``token_ratio`` is the fraction of tokens dropped; ties with the threshold are all kept,
    so a mask may keep more than ``n − ceil(n·token_ratio) + 1`` tokens.

    Parameters
    ----------
    scores : Tensor
        ``(..., n)`` per-token scores (``+inf`` allowed, no NaN).
    token_ratio : float
        In ``(0, 1]``.

    Returns
    -------
    Tensor
        ``(..., n)`` boolean masks.

    Examples
    --------
    >>> quantile_masks(torch.tensor([3.0, 1.0, 2.0, 2.0]), 0.5)
    tensor([ True, False,  True,  True])
    """
    k = kept_count_index(scores.shape[-1], token_ratio)
    threshold = scores.sort(dim=-1).values[..., k : k + 1]
    return scores >= threshold


@dataclass
class MutexMasks:
    """The binary masks MUTEX scored and the target probability each obtained.

    ``masks`` is ``(B, M, h*w)`` boolean over the patch grid (raster order), ``probabilities``
    ``(B, M)``, ``names`` the ``M`` labels ``"<head fusion>/<centrality>/<statistic>"``, and
    ``targets`` the ``(B,)`` classes explained.
    """

    masks: Tensor
    probabilities: Tensor
    names: list[str]
    targets: Tensor

    def vote(self) -> Tensor:
        """The confidence-weighted vote ``Σ_k mask_k p_k / max(1, Σ_k mask_k)`` (§4.1 step 8),
        ``(B, h*w)``."""
        m = self.masks.to(self.probabilities.dtype)
        return torch.einsum("bmn,bm->bn", m, self.probabilities) / m.sum(1).clamp_min(1.0)


@register_method("mutex")
class MUTEX(AttentionAttribution):
    """MUTEX (MUltiplex Transformer EXplainer): gradient-free masks from attention-graph
    centralities, scored on the kept tokens only.

    One forward pass records every block's attention. For each head fusion (min, max, sum)
    the prefix-token rows/columns are dropped, edges below ``min_cut ×`` the layer's largest
    edge are pruned, and per-node in/out-degrees are taken over blocks ``starting_layer…L−1``
    (:func:`captum_vit.kernels.attention_graph_centralities`). Each of the nine cross-layer
    statistics (:func:`node_statistics`) of each centrality gives a mask keeping the tokens at
    or above the ``token_ratio`` quantile (:func:`quantile_masks`): 3 × 2 × 9 = 54 masks. Each
    mask is scored by the softmax probability of the target when the ViT runs on the prefix
    tokens plus the kept patch tokens only (tokens removed after the position embeddings, not
    filled with a baseline). The map is the confidence-weighted vote of the masks.

    Scoring is batched: because ties can make masks keep different numbers of tokens, the
    (image, mask) pairs of the whole batch are grouped by kept count (deterministically: by
    count, then image, then mask index) and each group runs in forwards of at most
    ``internal_batch_size`` sequences. Unlike the official notebook, class index 0 is honoured
    (it was tested by truthiness there, docs/methods.md §4.4).

    Parameters
    ----------
    model : nn.Module
        A timm ViT (any number of prefix tokens; any pooling: the graph is over patches).
    min_cut : float
        Pruning fraction in ``[0, 1]`` of each layer's largest edge (default 0.01, the
        paper's code).
    token_ratio : float
        Fraction of patch tokens dropped by each mask, in ``(0, 1]`` (default 0.5).
    starting_layer : int
        First block whose graph enters the statistics (default 0).
    internal_batch_size : int
        Most masked sequences per scoring forward (bounds the scoring's memory whatever the
        batch size; 1 = one mask at a time).
    head_fusions : sequence of str
        Head-fusion operators, each one multiplex (default ``("min", "max", "sum")``).
    interpolate_mode : str, optional
        Upsampling of the patch map; default ``"nearest"``, as MUTEX's insertion/deletion
        evaluation (docs/methods.md §7.3; the paper's plots also use bilinear).
    impl : str
        Implementation of the pruning/centrality kernel (``"auto"``, ``"reference"``,
        ``"triton"``).
    median : str
        The ``median`` statistic for an even number of layers: ``"lower"`` middle value
        (default; the official code's ``torch.median``) or ``"mean_of_middle"`` (the mean of
        the two middle values, this package's behaviour before it followed the official
        code); see :func:`node_statistics`.
    output_fn : callable, optional
        See :class:`~captum_vit.attr.MapAttribution`; the masks are scored by the softmax of
        its scores, so it should return several class scores.
    memory_budget : float
        Bytes of attention graphs held at once: graphs and masks are built for as many images
        at a time as fit, ``GRAPH_COPIES`` copies of an image's ``(L, heads, N, N)``
        probabilities each (ViT-S/16: 45 MB, 23 images with the default 1 GiB; at least one).
        The map does not depend on it.

    Raises
    ------
    ValueError
        For out-of-range options.

    References
    ----------
    Marchetti, Traini, Ursino, Virgili, "Multiplex Network-Based Representation of Vision
    Transformers for Visual Explainability", Neural Computing and Applications, 2025.

    Examples
    --------
    >>> import timm, torch
    >>> m = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3,
    ...                       depth=2, img_size=32).eval()
    >>> MUTEX(m).attribute(torch.rand(2, 3, 32, 32), target=0, return_patch_map=True).shape
    torch.Size([2, 2, 2])
    """

    default_interpolate_mode = "nearest"

    def __init__(
        self,
        model: nn.Module,
        min_cut: float = 0.01,
        token_ratio: float = 0.5,
        starting_layer: int = 0,
        internal_batch_size: int = 64,
        head_fusions: Sequence[str] = ("min", "max", "sum"),
        interpolate_mode: str | None = None,
        impl: str = "auto",
        median: str = "lower",
        output_fn: OutputFn | None = None,
        memory_budget: float = 2.0**30,
    ) -> None:
        super().__init__(model, interpolate_mode, output_fn)
        n = self.vit.num_blocks
        if not 0.0 <= min_cut <= 1.0:
            raise ValueError(f"min_cut must be in [0, 1], got {min_cut}")
        if not 0.0 < token_ratio <= 1.0:
            raise ValueError(f"token_ratio must be in (0, 1], got {token_ratio}")
        if isinstance(starting_layer, bool) or not isinstance(starting_layer, int) or not 0 <= starting_layer < n:
            raise ValueError(f"starting_layer must be an int in [0, {n}), got {starting_layer!r}")
        if isinstance(internal_batch_size, bool) or not isinstance(internal_batch_size, int) or internal_batch_size < 1:
            raise ValueError(f"internal_batch_size must be a positive int, got {internal_batch_size!r}")
        fusions = tuple(head_fusions)
        if not fusions:
            raise ValueError(f"head_fusions must be a non-empty sequence of {HEAD_FUSIONS}, got {head_fusions!r}")
        for f in fusions:
            check_head_fusion(f, "each head_fusions entry")
        self.min_cut, self.token_ratio, self.starting_layer = float(min_cut), float(token_ratio), starting_layer
        self.internal_batch_size, self.head_fusions, self.impl = internal_batch_size, fusions, check_impl(impl)
        if median not in MEDIANS:
            raise ValueError(f"median must be one of {MEDIANS}, got {median!r}")
        self.median = median
        if isinstance(memory_budget, bool) or not isinstance(memory_budget, (int, float)) or not memory_budget > 0:
            raise ValueError(f"memory_budget must be a positive number of bytes, got {memory_budget!r}")
        self.memory_budget = float(memory_budget)

    @property
    def mask_names(self) -> list[str]:
        """``"<head fusion>/<centrality>/<statistic>"`` for each mask, in scoring order."""
        return [f"{f}/{c}/{s}" for f in self.head_fusions for c in CENTRALITIES for s in STATISTICS]

    # ------------------------------------------------------------------ pipeline
    def _masks(self, attn: Tensor) -> Tensor:
        """``(L, B, heads, N, N)`` attention → ``(B, M, n)`` boolean masks over patch tokens."""
        p = self.vit.num_prefix_tokens
        graph = attn[self.starting_layer :, :, :, p:, p:]  # drop prefix-token nodes (§4.1 step 2)
        stats = []
        for fusion in self.head_fusions:
            in_deg, out_deg = attention_graph_centralities(graph, fusion, self.min_cut, self.impl)
            stats += [node_statistics(in_deg, self.median), node_statistics(out_deg, self.median)]  # (9, B, n) each
        scores = torch.cat(stats).transpose(0, 1)  # (B, M, n)
        return quantile_masks(scores, self.token_ratio)

    def _score_masks(self, x: Tensor, masks: Tensor, targets: Tensor, forward_args: tuple[Any, ...]) -> Tensor:
        """Target probabilities ``(B, M)`` of the ViT run on each mask's kept tokens only."""
        b, m, _ = masks.shape
        probs = torch.empty(b, m, dtype=torch.float32, device=x.device)
        counts = masks.sum(-1)  # (B, M)
        for count in counts.unique().tolist():  # ascending: deterministic grouping
            img, mask = torch.nonzero(counts == count, as_tuple=True)  # row-major: by image, then mask
            for s in range(0, img.numel(), self.internal_batch_size):
                bi, mi = img[s : s + self.internal_batch_size], mask[s : s + self.internal_batch_size]
                # nonzero returns ascending indices: the kept tokens in raster order.
                keep = torch.nonzero(masks[bi, mi], as_tuple=True)[1].reshape(bi.numel(), int(count))
                args = tuple(
                    a[bi] if isinstance(a, Tensor) and a.dim() and a.shape[0] == b else a for a in forward_args
                )
                # masking out of every attention computes the same where removal cannot be done
                drop = keep_patch_tokens if self.vit.supports_token_removal else mask_patch_tokens
                with drop(self.vit, keep):
                    logits = self._forward(x[bi], args)
                probs[bi, mi] = logits.float().softmax(-1).gather(1, targets[bi, None]).squeeze(1)
        return probs

    def explain_masks(
        self, inputs: Tensor, target: Tensor | None = None, additional_forward_args: tuple[Any, ...] = ()
    ) -> MutexMasks:
        """The masks, their scores and the explained classes for images ``inputs``.

        Parameters
        ----------
        inputs : Tensor
            ``(B, C, H, W)`` images as the model takes them.
        target : Tensor, optional
            ``(B,)`` class indices; ``None`` explains the predicted class.
        additional_forward_args : tuple
            Extra model arguments; tensors whose first dimension is ``B`` are indexed per example.

        Returns
        -------
        MutexMasks
            ``masks`` ``(B, M, h*w)``, ``probabilities`` ``(B, M)``, ``names``, ``targets``.
        """
        x = self.vit.check_input(inputs, "inputs")
        with self._explaining(), torch.no_grad():
            x = _usable(x)
            additional_forward_args = tuple(_usable(a) for a in additional_forward_args)
            parts = [self._graph_masks(x, target, additional_forward_args, rows) for rows in self._image_groups(x)]
            masks, targets = torch.cat([m for m, _ in parts]), torch.cat([t for _, t in parts])
            probs = self._score_masks(x, masks, targets, additional_forward_args)
        return MutexMasks(masks, probs, self.mask_names, targets)

    def _image_groups(self, x: Tensor) -> list[slice]:
        """Consecutive images whose attention graphs fit ``memory_budget`` together."""
        h, w = self.vit.grid_size((x.shape[-2], x.shape[-1]))
        n = self.vit.num_prefix_tokens + h * w
        per_image = GRAPH_COPIES * self.vit.num_blocks * self.vit.num_heads * n * n * x.element_size()
        size = max(1, int(self.memory_budget // per_image))
        return [slice(s, s + size) for s in range(0, x.shape[0], size)]

    def _graph_masks(
        self, x: Tensor, target: Tensor | None, forward_args: tuple[Any, ...], rows: slice
    ) -> tuple[Tensor, Tensor]:
        """The masks ``(b, M, n)`` and explained classes ``(b,)`` of the images ``x[rows]``."""
        b = x.shape[0]
        args = tuple(a[rows] if isinstance(a, Tensor) and a.dim() and a.shape[0] == b else a for a in forward_args)
        with record_attention(self.vit, detach=True) as rec:
            logits = self._forward(x[rows], args)
        return self._masks(rec.stacked()), resolve_targets(None if target is None else target[rows], logits)

    def _patch_map(self, x: Tensor, target: Tensor | None, forward_args: tuple[Any, ...]) -> Tensor:
        h, w = self.vit.grid_size((x.shape[-2], x.shape[-1]))
        return self.explain_masks(x, target, forward_args).vote().reshape(-1, h, w)
