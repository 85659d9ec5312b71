"""Rollout step (Abnar & Zuidema 2020): head fusion, optional discard, add identity,
row-normalise; and the layer product used by rollout, GAE-style rollouts and IIA.

Two forms of the product. :func:`attention_rollout` multiplies the ``(B, N, N)`` factors
(``O(N^3)`` per block), for methods that need the whole joint matrix. A method that reads
only some rows ``r`` of it (the classifier's readout) needs ``r A'_{L-1} ... A'_{start}``:
:func:`attention_rollout_rows` takes it as a chain of vector-matrix products from the last
block down (``O(N^2)`` per block), one :func:`rollout_row_step` per block.

``rollout_step`` and ``rollout_row_step`` each have a pure-torch reference (the spec) and a
Triton path behind ``impl="auto" | "reference" | "triton"``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from captum_vit.kernels._common import accumulation_dtype, fuse_heads
from captum_vit.kernels._dispatch import check_launchable, load_triton_module, use_triton


def _discard_smallest(fused: Tensor, discard_ratio: float) -> Tensor:
    """Zero the ``discard_ratio`` fraction of smallest entries of each example's matrix,
    never the class-token self-entry [0, 0] (jacobgil/vit-explain, but per example)."""
    b, n, _ = fused.shape
    flat = fused.reshape(b, -1)
    k = int(flat.shape[1] * discard_ratio)
    if k == 0:
        return fused
    # Exactly k entries go (by index, so ties cannot drop more), sparing [0, 0].
    scores = flat.clone()
    scores[:, 0] = float("inf")
    drop = scores.topk(k, dim=1, largest=False).indices
    return flat.scatter(1, drop, 0.0).reshape(b, n, n)


def rollout_step_reference(fused: Tensor, discard_ratio: float = 0.0, row_normalize: bool = True) -> Tensor:
    """Pure-torch :func:`rollout_step` (the spec)."""
    a = _discard_smallest(fused, discard_ratio) if discard_ratio > 0 else fused
    n = a.shape[-1]
    a = a + torch.eye(n, device=a.device, dtype=a.dtype)
    return a / a.sum(dim=-1, keepdim=True) if row_normalize else a


def rollout_step(fused: Tensor, discard_ratio: float = 0.0, impl: str = "auto", row_normalize: bool = True) -> Tensor:
    """One rollout factor from a head-fused attention ``(B, N, N)``.

    ``discard_ratio`` zeroes that fraction of the smallest entries of each example's matrix
    (as jacobgil/vit-explain, but per example rather than for example 0 only, and never the
    class-token self-entry [0, 0]); then ``A + I`` is row-normalised (Abnar & Zuidema 2020, §3),
    or left unnormalised with ``row_normalize=False`` (GAE's ``R <- R + A R = (I + A) R``,
    Chefer et al. ICCV 2021, rule 6).

    ``impl``: ``"auto"`` (Triton for CUDA tensors when Triton imports), ``"reference"`` or
    ``"triton"``. The Triton kernel fuses the identity and the row normalisation; the discard
    selection (a top-k) stays a torch op on both paths. The Triton path has no backward: inputs
    needing a gradient use the reference under ``"auto"`` and raise under ``"triton"``.

    Examples
    --------
    >>> a = torch.full((1, 2, 2), 0.5)
    >>> rollout_step(a)
    tensor([[[0.7500, 0.2500],
             [0.2500, 0.7500]]])
    """
    if not 0.0 <= discard_ratio < 1.0:
        raise ValueError(f"discard_ratio must be in [0, 1), got {discard_ratio}")
    if not isinstance(fused, Tensor) or fused.dim() != 3 or fused.shape[1] != fused.shape[2]:
        raise ValueError(f"fused must be a (B, N, N) tensor, got {getattr(fused, 'shape', type(fused))}")
    if not use_triton(impl, fused):
        return rollout_step_reference(fused, discard_ratio, row_normalize)
    kern = load_triton_module("_triton_rollout")
    a = (_discard_smallest(fused, discard_ratio) if discard_ratio > 0 else fused).contiguous()
    check_launchable(kern.rollout_step_kernel, a)
    return kern.launch(a, row_normalize)


def attention_rollout(
    attentions: Tensor,
    start_layer: int = 0,
    head_fusion: str = "mean",
    discard_ratio: float = 0.0,
    impl: str = "auto",
    row_normalize: bool = True,
) -> Tensor:
    """Rollout of a ``(L, B, heads, N, N)`` attention stack: ``A'_{L-1} ... A'_{start}``.

    Each factor ``A'`` is :func:`rollout_step` of the head-fused layer (``impl`` is passed on).
    Returns the ``(B, N, N)`` joint attention, in float32 for half-precision attentions: the
    product of ``L`` factors near the identity loses the small off-diagonal part in float16.

    Examples
    --------
    >>> a = torch.full((2, 1, 1, 2, 2), 0.5, dtype=torch.float16)
    >>> attention_rollout(a)
    tensor([[[0.6250, 0.3750],
             [0.3750, 0.6250]]])
    """
    if attentions.dim() != 5:
        raise ValueError(f"attentions must be (layers, batch, heads, N, N), got {tuple(attentions.shape)}")
    attentions = attentions.to(accumulation_dtype(attentions.dtype))
    n_layers = attentions.shape[0]
    if not 0 <= start_layer < n_layers:
        raise ValueError(f"start_layer must be in [0, {n_layers}), got {start_layer}")
    joint: Tensor | None = None
    for layer in range(start_layer, n_layers):
        factor = rollout_step(fuse_heads(attentions[layer], head_fusion), discard_ratio, impl, row_normalize)
        joint = factor if joint is None else torch.bmm(factor, joint)
    assert joint is not None
    return joint


def _check_rows(rows: Tensor, fused: Tensor) -> None:
    if not isinstance(fused, Tensor) or fused.dim() != 3 or fused.shape[1] != fused.shape[2]:
        raise ValueError(f"fused must be a (B, N, N) tensor, got {getattr(fused, 'shape', type(fused))}")
    if not isinstance(rows, Tensor) or tuple(rows.shape) != tuple(fused.shape[:2]):
        want = tuple(fused.shape[:2])
        raise ValueError(f"rows must be a {want} tensor (batch, tokens), got {getattr(rows, 'shape', type(rows))}")


def rollout_row_step_reference(
    rows: Tensor, fused: Tensor, discard_ratio: float = 0.0, row_normalize: bool = True
) -> Tensor:
    """Pure-torch :func:`rollout_row_step` (the spec): ``r (A + I) / s`` without forming the
    factor, as ``u A + u`` with ``u = r / s`` (``s`` the row sums of ``A + I``, or 1)."""
    a = _discard_smallest(fused, discard_ratio) if discard_ratio > 0 else fused
    u = rows.to(a.dtype)
    if row_normalize:
        u = u / (a.sum(dim=-1) + 1)
    return torch.bmm(u[:, None], a)[:, 0] + u


def rollout_row_step(
    rows: Tensor, fused: Tensor, discard_ratio: float = 0.0, impl: str = "auto", row_normalize: bool = True
) -> Tensor:
    """``rows @ rollout_step(fused, discard_ratio, row_normalize=...)``: one block of the
    row form of the rollout, ``O(N^2)`` instead of the ``O(N^3)`` matrix product.

    Parameters
    ----------
    rows : Tensor
        ``(B, N)`` row vector(s) of the product so far (the readout weights, first).
    fused : Tensor
        ``(B, N, N)`` head-fused attention of one block.
    discard_ratio, row_normalize
        As :func:`rollout_step`.
    impl : str
        ``"auto"`` (Triton for CUDA tensors), ``"reference"`` or ``"triton"``. The Triton
        kernel fuses the row sums, the identity and the vector-matrix product; it has no
        backward (``"auto"`` uses the reference for inputs needing a gradient).

    Returns
    -------
    Tensor
        ``(B, N)``, in float32 for half-precision ``fused``.

    Examples
    --------
    >>> a = torch.full((1, 2, 2), 0.5)
    >>> rollout_row_step(torch.tensor([[1.0, 0.0]]), a)  # row 0 of rollout_step(a)
    tensor([[0.7500, 0.2500]])
    """
    if not 0.0 <= discard_ratio < 1.0:
        raise ValueError(f"discard_ratio must be in [0, 1), got {discard_ratio}")
    _check_rows(rows, fused)
    fused = fused.to(accumulation_dtype(fused.dtype))
    if not use_triton(impl, rows, fused):
        return rollout_row_step_reference(rows, fused, discard_ratio, row_normalize)
    kern = load_triton_module("_triton_rollout")
    a = (_discard_smallest(fused, discard_ratio) if discard_ratio > 0 else fused).contiguous()
    r = rows.to(a.dtype).contiguous()
    check_launchable(kern.rollout_row_kernel, a, r)
    return kern.launch_rows(a, r, row_normalize)


def attention_rollout_rows(
    attentions: Tensor,
    rows: Tensor,
    start_layer: int = 0,
    head_fusion: str = "mean",
    discard_ratio: float = 0.0,
    impl: str = "auto",
    row_normalize: bool = True,
) -> Tensor:
    """``rows @ attention_rollout(attentions, ...)`` for ``(B, N)`` ``rows``, without the
    ``(B, N, N)`` joint matrix: the vector-matrix chain ``((r A'_{L-1}) A'_{L-2}) ... A'_{start}``.

    Same arguments as :func:`attention_rollout`; the same result up to rounding. Returns
    ``(B, N)``, in float32 for half-precision attentions.

    Examples
    --------
    >>> a = torch.rand(3, 2, 4, 6, 6).softmax(dim=-1)
    >>> r = torch.zeros(2, 6); r[:, 0] = 1.0  # the class-token row
    >>> torch.allclose(attention_rollout_rows(a, r), attention_rollout(a)[:, 0], atol=1e-6)
    True
    """
    if attentions.dim() != 5:
        raise ValueError(f"attentions must be (layers, batch, heads, N, N), got {tuple(attentions.shape)}")
    n_layers = attentions.shape[0]
    if not 0 <= start_layer < n_layers:
        raise ValueError(f"start_layer must be in [0, {n_layers}), got {start_layer}")
    attentions = attentions.to(accumulation_dtype(attentions.dtype))
    for layer in reversed(range(start_layer, n_layers)):
        rows = rollout_row_step(rows, fuse_heads(attentions[layer], head_fusion), discard_ratio, impl, row_normalize)
    return rows
