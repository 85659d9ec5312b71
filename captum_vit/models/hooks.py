"""Hooks that record and change a timm ViT's internals for the duration of a call.

Every context manager here removes its hooks and restores every flag it touched in
``finally``, also when the wrapped code raises. None of them changes the model's
training mode, parameters or ``requires_grad`` flags.

timm computes attention with ``F.scaled_dot_product_attention`` by default, which never
materialises the attention matrix. The attention hooks turn ``fused_attn`` off per module
for the duration of the call (timm's explicit path is numerically the same computation)
and restore it afterwards.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from timm.layers import Mlp
from timm.models.vision_transformer import Block
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from captum_vit.models.vit import ViTAdapter

AttentionOverride = Callable[[Tensor], Tensor]


@dataclass
class AttentionRecord:
    """Per-block post-softmax attention probabilities ``(B, heads, N, N)`` and, after a
    backward pass, their gradients (``None`` for blocks that received none)."""

    attentions: list[Tensor | None] = field(default_factory=list)
    gradients: list[Tensor | None] = field(default_factory=list)

    def stacked(self) -> Tensor:
        """Attentions as one ``(L, B, heads, N, N)`` tensor."""
        if any(a is None for a in self.attentions):
            raise RuntimeError("no attention was recorded; run a forward pass inside the context")
        return torch.stack([a for a in self.attentions if a is not None])

    def stacked_gradients(self) -> Tensor:
        """Gradients as one ``(L, B, heads, N, N)`` tensor (zeros where none flowed)."""
        atts = self.stacked()
        return torch.stack([g if g is not None else torch.zeros_like(a) for a, g in zip(atts, self.gradients)])


@contextmanager
def _fused_attention_off(adapter: ViTAdapter) -> Iterator[None]:
    saved = [a.fused_attn for a in adapter.attentions]
    try:
        for a in adapter.attentions:
            a.fused_attn = False
        yield
    finally:
        for a, flag in zip(adapter.attentions, saved):
            a.fused_attn = flag


@contextmanager
def _handles() -> Iterator[list[RemovableHandle]]:
    handles: list[RemovableHandle] = []
    try:
        yield handles
    finally:
        for h in handles:
            h.remove()


@contextmanager
def record_attention(
    model: nn.Module | ViTAdapter,
    gradients: bool = False,
    override: dict[int, AttentionOverride] | None = None,
    detach: bool = False,
) -> Iterator[AttentionRecord]:
    """Record every block's attention probabilities (and optionally their gradients).

    Parameters
    ----------
    model : nn.Module or ViTAdapter
        A supported timm ViT.
    gradients : bool
        Also record ``d output / d attention`` when a backward pass runs inside the context.
    override : dict[int, callable], optional
        ``{block_index: fn}``: replace that block's attention probabilities with
        ``fn(probabilities)`` (negative indices count from the end). The recorded tensor is
        the replacement, so its gradient is the gradient with respect to the replacement
        (IIA, methods.md §5.2).
    detach : bool
        Store detached attentions (saves memory when no gradient is needed).

    Yields
    ------
    AttentionRecord
        Filled in as forward (and backward) passes run; one entry per block, last forward wins.

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
    """
    adapter = model if isinstance(model, ViTAdapter) else ViTAdapter(model)
    n = adapter.num_blocks
    overrides = {(k % n): v for k, v in (override or {}).items()}
    for k in override or {}:
        if not -n <= k < n:
            raise ValueError(f"override block index {k} out of range for a {n}-block model")
    record = AttentionRecord([None] * n, [None] * n)

    def make_hook(i: int) -> Callable[[nn.Module, tuple[Tensor, ...], Tensor], Tensor | None]:
        def hook(_m: nn.Module, _inp: tuple[Tensor, ...], out: Tensor) -> Tensor | None:
            new = overrides[i](out) if i in overrides else out
            record.attentions[i] = new.detach() if detach else new
            record.gradients[i] = None
            if gradients and new.requires_grad:

                def save(g: Tensor) -> None:
                    record.gradients[i] = g

                new.register_hook(save)
            return new if i in overrides else None

        return hook

    with _fused_attention_off(adapter), _handles() as handles:
        for i, attn in enumerate(adapter.attentions):
            handles.append(attn.attn_drop.register_forward_hook(make_hook(i)))
        yield record


@contextmanager
def keep_patch_tokens(model: nn.Module | ViTAdapter, indices: Tensor) -> Iterator[None]:
    """Run the ViT on a subset of patch tokens only (MUTEX, methods.md §4.1 step 7).

    After the position embeddings are added, the sequence is cut to the prefix tokens plus
    the patch tokens ``indices`` (``(B, K)`` long tensor, indices into the patch grid in
    raster order); the other tokens are removed, not replaced by a baseline.

    Examples
    --------
    >>> import timm
    >>> m = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3,
    ...                       depth=1, img_size=32).eval()
    >>> with keep_patch_tokens(m, torch.tensor([[0, 3]])), record_attention(m) as rec:
    ...     _ = m(torch.rand(1, 3, 32, 32))
    >>> rec.attentions[0].shape[-1]  # class token + 2 kept patches
    3
    """
    adapter = model if isinstance(model, ViTAdapter) else ViTAdapter(model)
    if indices.dim() != 2 or indices.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"indices must be a (batch, kept) integer tensor, got {tuple(indices.shape)} {indices.dtype}")
    p = adapter.num_prefix_tokens

    def hook(_m: nn.Module, _inp: tuple[Tensor, ...], out: Tensor) -> Tensor:
        if out.shape[0] != indices.shape[0]:
            raise ValueError(f"indices batch {indices.shape[0]} does not match input batch {out.shape[0]}")
        idx = indices.to(out.device).long() + p
        idx = idx.unsqueeze(-1).expand(-1, -1, out.shape[-1])
        return torch.cat([out[:, :p], out.gather(1, idx)], dim=1)

    with _handles() as handles:
        handles.append(adapter.model.norm_pre.register_forward_hook(hook))  # type: ignore[union-attr]
        yield


@dataclass
class HiddenStates:
    """``states[0]``: the patch-embedding output ``(B, h*w, D)`` (before prefix tokens and
    position embeddings); ``states[1..L]``: the input of each block ``(B, N, D)``;
    ``states[L+1]``: the last block's output (before the final norm)."""

    states: list[Tensor | None] = field(default_factory=list)


def _flatten_tokens(t: Tensor) -> Tensor:
    return t.flatten(1, 2) if t.dim() == 4 else t


@contextmanager
def record_hidden_states(model: nn.Module | ViTAdapter) -> Iterator[HiddenStates]:
    """Record the hidden states Vision DiffMask's gates read (methods.md §6.2).

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
        hs.states[0] = _flatten_tokens(out)

    def make_pre(i: int) -> Callable[[nn.Module, tuple[Tensor, ...]], None]:
        def pre(_m: nn.Module, inp: tuple[Tensor, ...]) -> None:
            hs.states[i + 1] = inp[0]

        return pre

    def on_last(_m: nn.Module, _inp: tuple[Tensor, ...], out: Tensor) -> None:
        hs.states[n + 1] = out

    with _handles() as handles:
        handles.append(adapter.model.patch_embed.register_forward_hook(on_embed))  # type: ignore[union-attr]
        for i, blk in enumerate(adapter.blocks):
            handles.append(blk.register_forward_pre_hook(make_pre(i)))
        handles.append(adapter.blocks[-1].register_forward_hook(on_last))
        yield hs


@contextmanager
def replace_patch_embeddings(model: nn.Module | ViTAdapter, fn: Callable[[Tensor], Tensor]) -> Iterator[None]:
    """Replace the patch-embedding output by ``fn(tokens)`` before the prefix tokens and
    position embeddings are added (DiffMask's placeholder, methods.md §6.1).

    ``fn`` receives and returns ``(B, h*w, D)``; the original layout is restored.
    """
    adapter = model if isinstance(model, ViTAdapter) else ViTAdapter(model)

    def hook(_m: nn.Module, _inp: tuple[Tensor, ...], out: Tensor) -> Tensor:
        new = fn(_flatten_tokens(out))
        if new.shape != _flatten_tokens(out).shape:
            raise ValueError(f"replacement has shape {tuple(new.shape)}, expected {tuple(_flatten_tokens(out).shape)}")
        return new.reshape(out.shape)

    with _handles() as handles:
        handles.append(adapter.model.patch_embed.register_forward_hook(hook))  # type: ignore[union-attr]
        yield


@contextmanager
def record_activations(modules: Sequence[nn.Module], gradients: bool = False) -> Iterator[list[dict[str, Tensor]]]:
    """Record the outputs (and optionally their gradients) of arbitrary modules.

    Yields a list with one dict per module holding ``"activation"`` and, after backward,
    ``"gradient"``.
    """
    store: list[dict[str, Tensor]] = [{} for _ in modules]

    def make_hook(i: int) -> Callable[[nn.Module, tuple[Tensor, ...], Tensor], None]:
        def hook(_m: nn.Module, _inp: tuple[Tensor, ...], out: Tensor) -> None:
            if not isinstance(out, Tensor):
                raise TypeError(f"module {type(_m).__name__} returns {type(out).__name__}, expected a Tensor")
            store[i]["activation"] = out
            store[i].pop("gradient", None)
            if gradients and out.requires_grad:

                def save(g: Tensor) -> None:
                    store[i]["gradient"] = g

                out.register_hook(save)

        return hook

    with _handles() as handles:
        for i, mod in enumerate(modules):
            handles.append(mod.register_forward_hook(make_hook(i)))
        yield store


@contextmanager
def override_output(module: nn.Module, fn: Callable[[Tensor], Tensor]) -> Iterator[list[Tensor]]:
    """Replace ``module``'s output by ``fn(output)`` for the duration of the call.

    Used by IIA on CNNs (methods.md §5.1) to substitute a feature stage's activations with
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

    with _handles() as handles:
        handles.append(module.register_forward_hook(hook))
        yield replaced


# ----------------------------------------------------------------------------- LRP trace
@dataclass(frozen=True)
class LinearInput:
    """What an LRP rule needs from an ``nn.Linear``: its input ``(..., in)`` and its weight
    ``(out, in)`` (the rules of Chefer et al. ignore the bias)."""

    x: Tensor
    weight: Tensor


@dataclass(frozen=True)
class BlockTrace:
    """One pre-norm timm ``Block`` as LRP sees it (detached except ``attention``).

    The block computes ``mid = x + attn_branch`` with ``attn_branch = proj(A v)`` and
    ``A = softmax(q kᵀ · scale)``, then ``out = mid + mlp_branch`` with
    ``mlp_branch = fc2(act(fc1(norm2(mid))))``; layer scale, drop path, dropout and the
    norms sit between these and pass relevance through unchanged.
    """

    x: Tensor  # block input (B, N, D)
    qkv: LinearInput  # norm1 output -> fused q/k/v projection
    q: Tensor  # (B, heads, N, head_dim) after q_norm, before the 1/sqrt(d) scale
    k: Tensor  # (B, heads, N, head_dim) after k_norm
    v: Tensor  # (B, heads, N, head_dim)
    attention: Tensor  # (B, heads, N, N) post-softmax (and attention dropout), in the graph
    proj: LinearInput  # head outputs merged (B, N, heads*head_dim) -> proj
    attn_branch: Tensor  # the summand added to x (after layer scale and drop path)
    mid: Tensor  # x + attn_branch (B, N, D)
    fc1: LinearInput
    fc2: LinearInput
    mlp_branch: Tensor  # the summand added to mid

    def merge_qkv(self, rq: Tensor, rk: Tensor, rv: Tensor) -> Tensor:
        """Per-head q/k/v relevances ``(B, heads, N, head_dim)`` in the layout of the fused
        ``qkv`` output ``(B, N, 3 * heads * head_dim)`` (inverse of timm's split)."""
        b, _, n, _ = rq.shape
        return torch.stack([rq, rk, rv]).permute(1, 3, 0, 2, 4).reshape(b, n, -1)

    def split_heads(self, r: Tensor) -> Tensor:
        """``(B, N, heads*head_dim)`` (the input of ``proj``) → ``(B, heads, N, head_dim)``."""
        b, h, n, d = self.v.shape
        return r.reshape(b, n, h, d).transpose(1, 2)


@dataclass(frozen=True)
class HeadTrace:
    """One classifier head: the token rows pooled into its input, and the linear layer."""

    pool_weights: Tensor  # (N,) weights of the final-norm token rows forming the pooled vector
    linear: LinearInput  # head input (B, D) (after fc_norm and head dropout)
    logits: Tensor  # head output (B, classes)


@dataclass(frozen=True)
class EmbeddingTrace:
    """The patch embedding: ``tokens = conv(image)`` then ``tokens + position``."""

    image: Tensor  # conv input (B, C, H, W) (after any dynamic padding)
    weight: Tensor  # conv weight (D, C, ph, pw)
    stride: tuple[int, int]
    padding: tuple[int, int]
    tokens: Tensor  # (B, h*w, D) patch embedding output, raster order
    position: Tensor  # (B, h*w, D) what the position embedding added to the patch tokens
    grid: tuple[int, int]

    def tokens_to_map(self, r: Tensor) -> Tensor:
        """``(B, h*w, D)`` → the conv output layout ``(B, D, h, w)``."""
        return r.transpose(1, 2).reshape(r.shape[0], r.shape[2], *self.grid)


@dataclass
class LRPTrace:
    """Everything LRP reads from one forward pass of a timm ViT (see :func:`record_lrp_trace`)."""

    adapter: ViTAdapter
    raw_blocks: list[dict[str, Tensor]] = field(default_factory=list)
    raw: dict[str, Tensor] = field(default_factory=dict)

    def _get(self, store: dict[str, Tensor], key: str) -> Tensor:
        if key not in store:
            raise RuntimeError(f"nothing recorded for {key!r}; run a forward pass inside record_lrp_trace")
        return store[key]

    def blocks(self) -> list[BlockTrace]:
        out = []
        for i, s in enumerate(self.raw_blocks):
            g = lambda k, s=s: self._get(s, k)  # noqa: E731
            blk: Any = self.adapter.blocks[i]  # a checked timm Block
            out.append(
                BlockTrace(
                    x=g("x"),
                    qkv=LinearInput(g("qkv_in"), blk.attn.qkv.weight.detach()),
                    q=g("q"),
                    k=g("k"),
                    v=g("v"),
                    attention=g("attention"),
                    proj=LinearInput(g("proj_in"), blk.attn.proj.weight.detach()),
                    attn_branch=g("attn_branch"),
                    mid=g("mid"),
                    fc1=LinearInput(g("fc1_in"), blk.mlp.fc1.weight.detach()),
                    fc2=LinearInput(g("fc2_in"), blk.mlp.fc2.weight.detach()),
                    mlp_branch=g("mlp_branch"),
                )
            )
        return out

    @property
    def tokens(self) -> Tensor:
        """The final-norm output ``(B, N, D)`` the classifier pools from."""
        return self._get(self.raw, "tokens")

    def heads(self) -> list[HeadTrace]:
        """One head, or two for distilled DeiT (class row → ``head``, distillation row →
        ``head_dist``; the logits are their mean)."""
        m: Any = self.adapter.model
        n = self.tokens.shape[1]
        dev = self.tokens.device
        if _is_distilled(m):
            e = torch.eye(n, device=dev)
            pairs = [(e[0], m.head, "head"), (e[1], m.head_dist, "head_dist")]
        else:
            pairs = [(self.adapter.readout_weights(n, dev), m.head, "head")]
        return [
            HeadTrace(w, LinearInput(self._get(self.raw, f"{k}_in"), lin.weight.detach()), self._get(self.raw, k))
            for w, lin, k in pairs
        ]

    def embedding(self) -> EmbeddingTrace:
        model: Any = self.adapter.model
        conv = model.patch_embed.proj
        if not isinstance(conv, nn.Conv2d) or conv.groups != 1 or conv.dilation != (1, 1):
            raise TypeError(f"full LRP needs a plain Conv2d patch embedding, got {type(conv).__name__}")
        tokens = self._get(self.raw, "embed")
        p = self.adapter.num_prefix_tokens
        conv_out = self._get(self.raw, "conv_out")
        return EmbeddingTrace(
            image=self._get(self.raw, "image"),
            weight=conv.weight.detach(),
            stride=(int(conv.stride[0]), int(conv.stride[1])),
            padding=(int(conv.padding[0]), int(conv.padding[1])),
            tokens=tokens,
            position=self._get(self.raw, "pre_norm")[:, p:] - tokens,
            grid=(int(conv_out.shape[-2]), int(conv_out.shape[-1])),
        )


def _is_distilled(m: nn.Module) -> bool:
    return getattr(m, "dist_token", None) is not None and hasattr(m, "head_dist")


def check_lrp_supported(model: nn.Module | ViTAdapter) -> ViTAdapter:
    """Raise unless relevance can be propagated through ``model`` by :func:`record_lrp_trace`.

    Raises
    ------
    TypeError
        Blocks other than timm's pre-norm ``Block`` with an ``Mlp``, gated attention, or a
        head that is not an ``nn.Linear`` (``num_classes=0``).
    ValueError
        Pooling other than class token / distillation / average (see ``ViTAdapter.readout``).
    """
    adapter = model if isinstance(model, ViTAdapter) else ViTAdapter(model)
    for i, blk in enumerate(adapter.blocks):
        if type(blk) is not Block or not isinstance(blk.mlp, Mlp):
            raise TypeError(
                f"model block {i} is a {type(blk).__name__} with {type(getattr(blk, 'mlp', None)).__name__}; "
                "LRP supports timm's pre-norm Block with an Mlp"
            )
        if getattr(blk.attn, "gate", None) is not None:
            raise TypeError(f"model block {i} uses gated attention, which LRP does not support")
    m = adapter.model
    heads = [getattr(m, "head", None)] + ([m.head_dist] if _is_distilled(m) else [])
    if not all(isinstance(h, nn.Linear) for h in heads):
        raise TypeError("model head must be an nn.Linear classifier (create the model with num_classes > 0)")
    _ = adapter.readout
    return adapter


@contextmanager
def record_lrp_trace(model: nn.Module | ViTAdapter) -> Iterator[LRPTrace]:
    """Record what layer-wise relevance propagation needs from one forward pass.

    Per block the input, the q/k/v projection's input and split output, the attention
    probabilities (kept in the autograd graph, so their gradient can be taken), the
    projection's input, both residual summands and the MLP's two linear inputs; then the
    final-norm tokens, each head's input and output, and the patch embedding's input and
    output (methods.md §9; ecosystem.md §4.1 lists what Chefer's re-implementation stores).

    Raises
    ------
    TypeError, ValueError
        As :func:`check_lrp_supported`.

    Examples
    --------
    >>> import timm
    >>> m = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3,
    ...                       depth=2, img_size=32).eval()
    >>> with record_lrp_trace(m) as tr:
    ...     _ = m(torch.rand(2, 3, 32, 32))
    >>> b = tr.blocks()[0]
    >>> tuple(b.q.shape), tuple(b.attention.shape), tuple(tr.heads()[0].linear.x.shape)
    ((2, 3, 5, 64), (2, 3, 5, 5), (2, 192))
    >>> torch.allclose(b.mid + b.mlp_branch, tr.blocks()[1].x)
    True
    """
    adapter = check_lrp_supported(model)
    m: Any = adapter.model
    trace = LRPTrace(adapter, [{} for _ in adapter.blocks])

    def put(store: dict[str, Tensor], key: str, keep_graph: bool = False) -> Callable[..., None]:
        def hook(_m: nn.Module, inp: tuple[Tensor, ...], out: Tensor | None = None) -> None:
            t = inp[0] if out is None else out
            store[key] = t if keep_graph else t.detach()

        return hook

    def put_qkv(store: dict[str, Tensor], blk: Any) -> Callable[..., None]:
        def hook(_m: nn.Module, _inp: tuple[Tensor, ...], out: Tensor) -> None:
            b, n, _ = out.shape
            qkv = out.detach().reshape(b, n, 3, blk.attn.num_heads, blk.attn.head_dim).permute(2, 0, 3, 1, 4)
            store["v"] = qkv[2]

        return hook

    def put_embed(_m: nn.Module, _inp: tuple[Tensor, ...], out: Tensor) -> None:
        trace.raw["embed"] = _flatten_tokens(out.detach())

    with _fused_attention_off(adapter), _handles() as hs:
        blocks: list[Any] = adapter.blocks  # checked timm Blocks
        for s, blk in zip(trace.raw_blocks, blocks):
            a, mlp = blk.attn, blk.mlp
            hs += [
                blk.register_forward_pre_hook(put(s, "x")),
                a.qkv.register_forward_pre_hook(put(s, "qkv_in")),
                a.qkv.register_forward_hook(put_qkv(s, blk)),
                a.q_norm.register_forward_hook(put(s, "q")),
                a.k_norm.register_forward_hook(put(s, "k")),
                a.attn_drop.register_forward_hook(put(s, "attention", keep_graph=True)),
                a.proj.register_forward_pre_hook(put(s, "proj_in")),
                blk.drop_path1.register_forward_hook(put(s, "attn_branch")),
                blk.norm2.register_forward_pre_hook(put(s, "mid")),
                mlp.fc1.register_forward_pre_hook(put(s, "fc1_in")),
                mlp.fc2.register_forward_pre_hook(put(s, "fc2_in")),
                blk.drop_path2.register_forward_hook(put(s, "mlp_branch")),
            ]
        r = trace.raw
        hs += [
            m.norm.register_forward_hook(put(r, "tokens")),
            m.head.register_forward_pre_hook(put(r, "head_in")),
            m.head.register_forward_hook(put(r, "head")),
            m.patch_embed.proj.register_forward_pre_hook(put(r, "image")),
            m.patch_embed.proj.register_forward_hook(put(r, "conv_out")),
            m.patch_embed.register_forward_hook(put_embed),
            m.norm_pre.register_forward_pre_hook(put(r, "pre_norm")),
        ]
        if _is_distilled(m):
            hs += [
                m.head_dist.register_forward_pre_hook(put(r, "head_dist_in")),
                m.head_dist.register_forward_hook(put(r, "head_dist")),
            ]
        yield trace
