"""Hooks that record and change a timm ViT's (or CNN's) internals for the duration of a call.

Every context manager here removes its hooks and restores every flag it touched in
``finally``, also when the wrapped code raises. None of them changes the model's
training mode, parameters or ``requires_grad`` flags.

They instrument the model they are given, for the duration of the ``with`` block: two threads
running one model inside these contexts would see each other's hooks. Explanation methods
(:class:`captum_vit.attr.MapAttribution`) therefore always give them a private per-call view of
the user's model (:func:`captum_vit.models.view.private_view`), never the model itself.

timm computes attention with ``F.scaled_dot_product_attention`` by default, which never
materialises the attention matrix; the adapter says where the probabilities are produced and
how to make them explicit (:meth:`ViTAdapter.explicit_attention`).

The trace that layer-wise relevance propagation reads (Transformer Attribution only) lives in
:mod:`captum_vit.models.lrp_trace`, built from the same helpers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from captum_vit.models.vit import ViTAdapter

AttentionOverride = Callable[[Tensor], Tensor]


@dataclass
class AttentionRecord:
    """Per-block post-softmax attention probabilities ``(B, heads, N, N)`` (``None`` until a
    forward pass reaches the block), for an attention-pooled model (``global_pool='map'``) the
    pooling head's probe attention ``pool`` ``(B, heads, 1, N)``, and with ``tokens=True`` the
    final token states the pooling reads, ``tokens`` ``(B, N, D)``. Gradients are taken by the
    caller with ``torch.autograd.grad`` on these tensors, so nothing accumulates into ``.grad``.

    ``blocks``: the indices of the recorded blocks (``None``: all); the other entries of
    ``attentions`` stay ``None``. With ``reduce``, an entry is what ``reduce`` kept of the
    block's probabilities instead of the probabilities."""

    attentions: list[Tensor | None] = field(default_factory=list)
    pool: Tensor | None = None
    tokens: Tensor | None = None
    blocks: tuple[int, ...] | None = None

    def stacked(self) -> Tensor:
        """The recorded blocks' entries as one tensor, ``(L, B, heads, N, N)`` for the
        probabilities of ``L`` recorded blocks."""
        wanted = self.attentions if self.blocks is None else [self.attentions[i] for i in self.blocks]
        if not wanted or any(a is None for a in wanted):
            raise RuntimeError("no attention was recorded; run a forward pass inside the context")
        return torch.stack([a for a in wanted if a is not None])


@contextmanager
def removing_hooks() -> Iterator[list[RemovableHandle]]:
    """Yield a list to append hook handles to; every handle is removed on exit, also when
    the body raises."""
    handles: list[RemovableHandle] = []
    try:
        yield handles
    finally:
        for h in handles:
            h.remove()


@contextmanager
def record_attention(
    model: nn.Module | ViTAdapter,
    override: dict[int, AttentionOverride] | None = None,
    detach: bool = False,
    tokens: bool = False,
    blocks: Sequence[int] | None = None,
    reduce: Callable[[int, Tensor], Tensor] | None = None,
    on_grad: Callable[[int, Tensor, Tensor], None] | None = None,
) -> Iterator[AttentionRecord]:
    """Record every block's attention probabilities (and an attention pool's probe attention).

    Parameters
    ----------
    model : nn.Module or ViTAdapter
        A supported timm ViT.
    override : dict[int, callable], optional
        ``{block_index: fn}``: replace that block's attention probabilities with
        ``fn(probabilities)`` (negative indices count from the end). The recorded tensor is
        the replacement, so its gradient is the gradient with respect to the replacement
        (IIA, docs/methods.md §5.2).
    detach : bool
        Store detached attentions (saves memory when no gradient is needed).
    tokens : bool
        Also record the final token states the pooling reads (:attr:`ViTAdapter.pool_input`).
    blocks : sequence of int, optional
        Record only these blocks (negative indices count from the end); default all.
    reduce : callable, optional
        ``reduce(block, probabilities) -> Tensor``, applied in the forward hook: the record
        keeps its result instead of the ``(B, heads, N, N)`` probabilities, which are then
        freed as soon as the block no longer needs them (e.g. a head fusion).
    on_grad : callable, optional
        ``on_grad(block, probabilities, grad)``, called during a backward pass as soon as the
        gradient with respect to a recorded block's probabilities is complete (last block
        first), with both detached: a method can reduce them block by block instead of
        keeping every block's gradient. Only for probabilities that require a gradient.

    Yields
    ------
    AttentionRecord
        Filled in as forward passes run; one entry per recorded block, last forward wins.

    Examples
    --------
    >>> import timm
    >>> m = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3,
    ...                       depth=2, img_size=32).eval()
    >>> with record_attention(m) as rec:
    ...     _ = m(torch.rand(2, 3, 32, 32))
    >>> rec.stacked().shape
    torch.Size([2, 2, 3, 5, 5])
    >>> all(b.attn.fused_attn for b in m.blocks)  # flags restored
    True
    >>> with record_attention(m, blocks=[-1], reduce=lambda i, a: a.mean(dim=1)) as rec:
    ...     _ = m(torch.rand(2, 3, 32, 32))
    >>> rec.attentions[0] is None, rec.stacked().shape  # the last block's head mean only
    (True, torch.Size([1, 2, 5, 5]))
    """
    adapter = model if isinstance(model, ViTAdapter) else ViTAdapter(model)
    n = adapter.num_blocks
    for what, indices in (("override", override or {}), ("blocks", blocks or ())):
        for k in indices:
            if not -n <= k < n:
                raise ValueError(f"{what} block index {k} out of range for a {n}-block model")
    overrides = {(k % n): v for k, v in (override or {}).items()}
    recorded = tuple(range(n)) if blocks is None else tuple(sorted({k % n for k in blocks}))
    record = AttentionRecord([None] * n, blocks=None if blocks is None else recorded)

    def make_hook(i: int) -> Callable[[nn.Module, tuple[Tensor, ...], Tensor], Tensor | None]:
        def hook(_m: nn.Module, _inp: tuple[Tensor, ...], out: Tensor) -> Tensor | None:
            new = overrides[i](out) if i in overrides else out
            if i in recorded:
                kept = new.detach() if detach else new
                record.attentions[i] = reduce(i, kept) if reduce is not None else kept
                if on_grad is not None and new.requires_grad:
                    # a one-shot holder, not the tensor: the graph must not keep the
                    # probabilities alive after the backward pass has used them
                    held = [new.detach()]
                    new.register_hook(lambda g: on_grad(i, held.pop(), g) if held else None)
            return new if i in overrides else None

        return hook

    def on_pool(_m: nn.Module, _inp: tuple[Tensor, ...], out: Tensor) -> None:
        record.pool = out.detach() if detach else out

    def on_tokens(_m: nn.Module, _inp: tuple[Tensor, ...], out: Tensor) -> None:
        record.tokens = out.detach() if detach else out

    with adapter.explicit_attention(), removing_hooks() as handles:
        for i, probe in enumerate(adapter.attention_probes):
            if i in recorded or i in overrides:
                handles.append(probe.register_forward_hook(make_hook(i)))
        pool_probe = adapter.pool_attention_probe()
        if pool_probe is not None:
            handles.append(pool_probe.register_forward_hook(on_pool))
        if tokens:
            handles.append(adapter.pool_input.register_forward_hook(on_tokens))
        yield record


@dataclass
class HiddenStates:
    """``states[0]``: the patch-embedding output ``(B, h*w, D)`` (before prefix tokens and
    position embeddings); ``states[1..L]``: the input of each block ``(B, N, D)``;
    ``states[L+1]``: the last block's output (before the final norm)."""

    states: list[Tensor | None] = field(default_factory=list)


def flatten_tokens(t: Tensor) -> Tensor:
    """A patch-embedding output as ``(B, h*w, D)`` (timm models with ``flatten=False`` give
    ``(B, h, w, D)``)."""
    return t.flatten(1, 2) if t.dim() == 4 else t


@contextmanager
def record_hidden_states(model: nn.Module | ViTAdapter) -> Iterator[HiddenStates]:
    """Record the hidden states Vision DiffMask's gates read (docs/methods.md §6.2).

    Examples
    --------
    >>> import timm
    >>> m = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3,
    ...                       depth=2, img_size=32).eval()
    >>> with record_hidden_states(m) as hs:
    ...     _ = m(torch.rand(1, 3, 32, 32))
    >>> [tuple(s.shape) for s in hs.states]
    [(1, 4, 192), (1, 5, 192), (1, 5, 192), (1, 5, 192)]
    """
    adapter = model if isinstance(model, ViTAdapter) else ViTAdapter(model)
    n = adapter.num_blocks
    hs = HiddenStates([None] * (n + 2))

    def on_embed(_m: nn.Module, _inp: tuple[Tensor, ...], out: Tensor) -> None:
        hs.states[0] = adapter.patch_tokens(out)

    def make_pre(i: int) -> Callable[[nn.Module, tuple[Tensor, ...]], None]:
        def pre(_m: nn.Module, inp: tuple[Tensor, ...]) -> None:
            hs.states[i + 1] = inp[0]

        return pre

    def on_last(_m: nn.Module, _inp: tuple[Tensor, ...], out: Tensor) -> None:
        hs.states[n + 1] = out

    with removing_hooks() as handles:
        handles.append(adapter.patch_embedding.register_forward_hook(on_embed))
        for i, blk in enumerate(adapter.blocks):
            handles.append(blk.register_forward_pre_hook(make_pre(i)))
        handles.append(adapter.blocks[-1].register_forward_hook(on_last))
        yield hs


@contextmanager
def replace_patch_embeddings(model: nn.Module | ViTAdapter, fn: Callable[[Tensor], Tensor]) -> Iterator[None]:
    """Replace the patch-embedding output by ``fn(tokens)`` before the prefix tokens and
    position embeddings are added (DiffMask's placeholder, docs/methods.md §6.1).

    ``fn`` receives and returns ``(B, h*w, D)``; the original layout is restored.
    """
    adapter = model if isinstance(model, ViTAdapter) else ViTAdapter(model)

    def hook(_m: nn.Module, _inp: tuple[Tensor, ...], out: Tensor) -> Tensor:
        tokens = adapter.patch_tokens(out)
        new = fn(tokens)
        if new.shape != tokens.shape:
            raise ValueError(f"replacement has shape {tuple(new.shape)}, expected {tuple(tokens.shape)}")
        return adapter.restore_patch_tokens(new, out)

    with removing_hooks() as handles:
        handles.append(adapter.patch_embedding.register_forward_hook(hook))
        yield


@contextmanager
def record_activations(modules: Sequence[nn.Module]) -> Iterator[list[Tensor | None]]:
    """Record the outputs of arbitrary modules (Grad-CAM's feature maps).

    Yields a list with one entry per module: ``None`` until a forward pass reaches it, then
    its latest output, in the autograd graph (take gradients with ``torch.autograd.grad``).

    Raises
    ------
    TypeError
        If a module returns something other than a tensor.

    Examples
    --------
    >>> import timm
    >>> m = timm.create_model("resnet10t", pretrained=False, num_classes=3).eval()
    >>> with record_activations([m.layer4]) as acts:
    ...     _ = m(torch.rand(1, 3, 64, 64))
    >>> tuple(acts[0].shape), len(m.layer4._forward_hooks)
    ((1, 512, 2, 2), 0)
    """
    store: list[Tensor | None] = [None for _ in modules]

    def make_hook(i: int) -> Callable[[nn.Module, tuple[Tensor, ...], Tensor], None]:
        def hook(_m: nn.Module, _inp: tuple[Tensor, ...], out: Tensor) -> None:
            if not isinstance(out, Tensor):
                raise TypeError(f"module {type(_m).__name__} returns {type(out).__name__}, expected a Tensor")
            store[i] = out

        return hook

    with removing_hooks() as handles:
        for i, mod in enumerate(modules):
            handles.append(mod.register_forward_hook(make_hook(i)))
        yield store


@contextmanager
def override_output(module: nn.Module, fn: Callable[[Tensor], Tensor]) -> Iterator[list[Tensor]]:
    """Replace ``module``'s output by ``fn(output)`` for the duration of the call.

    Used by IIA on CNNs (docs/methods.md §5.1) to substitute a feature stage's activations with
    a point on the path from a reference to them. The yielded list holds the replacement
    of the latest forward pass (so a caller can take gradients with respect to it).

    Parameters
    ----------
    module : nn.Module
        Any module returning a single tensor.
    fn : callable
        Maps the module's output to its replacement. The replacement may have another
        batch size when every later layer works per example (e.g. a CNN in eval mode).

    Yields
    ------
    list[Tensor]
        Empty until a forward pass runs; then ``[replacement]``.

    Raises
    ------
    TypeError
        If the module does not return a tensor.

    Examples
    --------
    >>> import timm
    >>> m = timm.create_model("resnet10t", pretrained=False, num_classes=3).eval()
    >>> with override_output(m.layer4, lambda a: torch.zeros_like(a)) as out:
    ...     logits = m(torch.rand(2, 3, 32, 32))
    >>> float(out[0].abs().sum()), torch.allclose(logits, m.fc.bias.expand(2, 3))
    (0.0, True)
    >>> len(m.layer4._forward_hooks)  # removed on exit
    0
    """
    replaced: list[Tensor] = []

    def hook(_m: nn.Module, _inp: tuple[Tensor, ...], out: Tensor) -> Tensor:
        if not isinstance(out, Tensor):
            raise TypeError(f"module {type(_m).__name__} returns {type(out).__name__}, expected a Tensor")
        new = fn(out)
        replaced[:] = [new]
        return new

    with removing_hooks() as handles:
        handles.append(module.register_forward_hook(hook))
        yield replaced


@contextmanager
def count_output_bytes(model: nn.Module) -> Iterator[list[int]]:
    """Add up the bytes of every leaf module's tensor output while the block runs.

    One forward pass of one image gives an estimate of the activations a backward pass keeps
    per image (IIA sizes its passes with it); it works for any architecture.

    Yields
    ------
    list[int]
        One entry, the running total.

    Examples
    --------
    >>> m = nn.Sequential(nn.Linear(4, 8), nn.ReLU())
    >>> with count_output_bytes(m) as counted:
    ...     _ = m(torch.zeros(2, 4))
    >>> counted[0]  # two (2, 8) float32 outputs
    128
    """
    counted = [0]

    def hook(_m: nn.Module, _inp: tuple[Tensor, ...], out: object) -> None:
        if isinstance(out, Tensor):
            counted[0] += out.numel() * out.element_size()

    with removing_hooks() as handles:
        for m in model.modules():
            if not m._modules:
                handles.append(m.register_forward_hook(hook))
        yield counted
