"""Saved-tensor hooks that keep autograd from holding a ViT's attention probabilities.

timm's explicit attention path saves each block's ``(B, heads, N, N)`` probabilities for the
backward (softmax saves its output, ``A v`` its operand): ``O(blocks · N²)`` memory that
its fused kernel avoids. :class:`ProbabilitiesSaver` lets autograd drop them and recomputes
them, bit for bit, when the backward reaches the block. Used by
:func:`captum_vit.models.lrp_trace.record_lrp_trace`, whose hooks tell it when a block's
attention starts, where its probabilities are and when it ends.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn


class _Saved:
    """A tensor autograd saved during a block's attention; ``tensor`` is dropped (``None``:
    recompute block ``block``'s probabilities, as a view of this size and stride) once it
    turns out to be those probabilities."""

    def __init__(self, tensor: Tensor | None, block: int, view: tuple[tuple[int, ...], tuple[int, ...]]) -> None:
        self.tensor, self.block, self.view = tensor, block, view


class ProbabilitiesSaver:
    """Saved-tensor hooks that keep autograd from holding any block's attention probabilities.

    ``recompute(i)`` gives block ``i``'s probabilities, computed as the forward pass did.
    Softmax saves its output before the probabilities are known (they are known at the
    attention-dropout hook, an identity in eval mode), so a tensor of their size saved inside
    the block is held until then, and dropped if it is them (``A v`` saves a reshaped view of
    them: same storage). The backward recomputes them once per block (both the softmax and
    the ``A v`` backward read them).

    Examples
    --------
    >>> import timm
    >>> from captum_vit.models.lrp_trace import record_lrp_trace  # installs one
    >>> m = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3,
    ...                       depth=2, img_size=32).eval()
    >>> x = torch.rand(2, 3, 32, 32, requires_grad=True)
    >>> (plain,) = torch.autograd.grad(m(x)[:, 0].sum(), x)
    >>> with record_lrp_trace(m):
    ...     (traced,) = torch.autograd.grad(m(x)[:, 0].sum(), x)
    >>> torch.allclose(plain, traced, atol=1e-6)
    True
    """

    def __init__(self, recompute: Callable[[int], Tensor]) -> None:
        self.recompute = recompute
        self.block: int | None = None
        self.numel = 0
        self.ptr: int | None = None
        self.pending: list[_Saved] = []
        self.cache: tuple[int, Tensor] | None = None

    def entering(self, i: int) -> Callable[..., None]:
        def hook(_m: nn.Module, _inp: tuple[Tensor, ...], k: Tensor) -> None:
            self.block, self.numel, self.ptr, self.pending = i, k[..., 0].numel() * k.shape[-2], None, []

        return hook

    def computed(self, m: nn.Module, _inp: tuple[Tensor, ...], probs: Tensor) -> None:
        if (m.training and getattr(m, "p", 0.0) > 0) or not probs.is_contiguous():
            return  # dropout changed them, or an unknown layout: keep what is saved
        self.ptr = probs.data_ptr()
        for saved in self.pending:
            if saved.tensor is not None and self._is_probs(saved.tensor):
                saved.tensor = None

    def leaving(self, *_args: object) -> None:
        self.block, self.pending = None, []

    def _is_probs(self, t: Tensor) -> bool:
        return t.data_ptr() == self.ptr and t.numel() == self.numel and t.is_contiguous()

    def pack(self, t: Tensor) -> Tensor | _Saved:
        if self.block is None or t.numel() != self.numel:
            return t
        saved = _Saved(t, self.block, (tuple(t.shape), tuple(t.stride())))
        if self.ptr is not None and self._is_probs(t):
            saved.tensor = None
        else:
            self.pending.append(saved)
        return saved

    def unpack(self, saved: Tensor | _Saved) -> Tensor:
        if isinstance(saved, Tensor):
            return saved
        if saved.tensor is not None:
            return saved.tensor
        if self.cache is None or self.cache[0] != saved.block:
            self.cache = None  # free the previous block's before computing the next
            self.cache = (saved.block, self.recompute(saved.block))
        return self.cache[1].as_strided(*saved.view)

    @contextmanager
    def hooks(self) -> Iterator[None]:
        try:
            with torch.autograd.graph.saved_tensors_hooks(self.pack, self.unpack):
                yield
        finally:
            self.cache, self.pending = None, []
