"""The trace of one timm ViT forward pass that layer-wise relevance propagation reads.

Used only by Transformer Attribution (:mod:`captum_vit.attr._lrp` holds the rules). A
context manager records, per block, the inputs of every linear layer, q, k, v, the attention
output (kept in the autograd graph) and both residual summands, then the head and the patch
embedding; like every hook in :mod:`captum_vit.models.hooks` it removes its hooks and
restores ``fused_attn`` on exit, also when the wrapped code raises (and like them it is given
a private view of the user's model by the method).

Nothing ``(B, heads, N, N)`` is kept, by the trace or by autograd: the relevance pass
recomputes one block's attention probabilities at a time from q and k
(:meth:`BlockTrace.probabilities`); their gradient is ``∂y/∂A = (∂y/∂O) vᵀ`` from the gradient
of the attention output ``O = A v``; and saved-tensor hooks let autograd drop the
probabilities of timm's explicit attention path, recomputing them bit for bit in the backward.
A trace's memory is then that of a plain forward and backward pass, not ``O(blocks · N²)``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from timm.layers import Mlp
from timm.models.vision_transformer import Block
from torch import Tensor, nn

from captum_vit.models.hooks import flatten_tokens, removing_hooks
from captum_vit.models.saved_attention import ProbabilitiesSaver
from captum_vit.models.vit import ViTAdapter, probabilities


@dataclass(frozen=True)
class LinearInput:
    """What an LRP rule needs from an ``nn.Linear``: its input ``(..., in)`` and its weight
    ``(out, in)`` (the rules of Chefer et al. ignore the bias)."""

    x: Tensor
    weight: Tensor


@dataclass(frozen=True)
class BlockTrace:
    """One pre-norm timm ``Block`` as LRP sees it (detached).

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
    scale: float  # the attention's 1/sqrt(head_dim)
    attention_output: Tensor  # A v, heads merged (B, N, heads*head_dim), before the attention's norm
    proj: LinearInput  # head outputs merged (B, N, heads*head_dim) -> proj
    attn_branch: Tensor  # the summand added to x (after layer scale and drop path)
    mid: Tensor  # x + attn_branch (B, N, D)
    fc1: LinearInput
    fc2: LinearInput
    mlp_branch: Tensor  # the summand added to mid

    def probabilities(self) -> Tensor:
        """The attention probabilities ``(B, heads, N, N)``, computed as timm's explicit
        path does (in eval mode, where attention dropout is the identity)."""
        return probabilities(self.q, self.k, self.scale)

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
        return [self.block(i) for i in range(len(self.raw_blocks))]

    def block(self, i: int) -> BlockTrace:
        """Block ``i``'s trace (raises once :meth:`release` dropped it)."""
        s = self.raw_blocks[i]
        g = lambda k: self._get(s, k)  # noqa: E731
        blk: Any = self.adapter.blocks[i]  # a checked timm Block
        return BlockTrace(
            x=g("x"),
            qkv=LinearInput(g("qkv_in"), blk.attn.qkv.weight.detach()),
            q=g("q"),
            k=g("k"),
            v=g("v"),
            scale=float(blk.attn.scale),
            attention_output=g("attn_out").detach(),
            proj=LinearInput(g("proj_in"), blk.attn.proj.weight.detach()),
            attn_branch=g("attn_branch"),
            mid=g("mid"),
            fc1=LinearInput(g("fc1_in"), blk.mlp.fc1.weight.detach()),
            fc2=LinearInput(g("fc2_in"), blk.mlp.fc2.weight.detach()),
            mlp_branch=g("mlp_branch"),
        )

    def attention_output(self, i: int) -> Tensor:
        """Block ``i``'s attention output ``O = A v`` with heads merged, ``(B, N, heads*head_dim)``,
        in the autograd graph: ``∂y/∂A = (∂y/∂O) vᵀ`` per head."""
        return self._get(self.raw_blocks[i], "attn_out")

    def release(self, i: int) -> None:
        """Drop block ``i``'s recorded tensors (a relevance pass that has passed the block
        no longer needs them)."""
        self.raw_blocks[i].clear()

    @property
    def tokens(self) -> Tensor:
        """The final-norm output ``(B, N, D)`` the classifier pools from (detached)."""
        return self._get(self.raw, "tokens").detach()

    @property
    def tokens_in_graph(self) -> Tensor:
        """:attr:`tokens` in the autograd graph (for the gradient with respect to them)."""
        return self._get(self.raw, "tokens")

    def heads(self) -> list[HeadTrace]:
        """One head, or two for distilled DeiT (class row → ``head``, distillation row →
        ``head_dist``; the logits are their mean)."""
        m: Any = self.adapter.module
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
        model: Any = self.adapter.module
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
        Pooling other than class token / distillation / average (see ``ViTAdapter.readout``);
        attention pooling (``global_pool='map'``), whose head has no relevance rules here.
    """
    adapter = model if isinstance(model, ViTAdapter) else ViTAdapter(model)
    if adapter.lrp_unsupported is not None:
        raise TypeError(f"Transformer Attribution does not support {type(adapter.module).__name__}: {adapter.lrp_unsupported}")
    for i, blk in enumerate(adapter.blocks):
        if type(blk) is not Block or not isinstance(blk.mlp, Mlp):
            raise TypeError(
                f"model block {i} is a {type(blk).__name__} with {type(getattr(blk, 'mlp', None)).__name__}; "
                "LRP supports timm's pre-norm Block with an Mlp"
            )
        if getattr(blk.attn, "gate", None) is not None:
            raise TypeError(f"model block {i} uses gated attention, which LRP does not support")
    m = adapter.module
    heads = [getattr(m, "head", None)] + ([m.head_dist] if _is_distilled(m) else [])
    if not all(isinstance(h, nn.Linear) for h in heads):
        raise TypeError("model head must be an nn.Linear classifier (create the model with num_classes > 0)")
    if adapter.readout.attention_pool:
        raise ValueError(
            "model uses attention pooling (global_pool='map'): LRP has no rules for the pooling "
            "head's probe attention and MLP; use GAE or rollout, which read the probe's attention row"
        )
    return adapter


@contextmanager
def record_lrp_trace(model: nn.Module | ViTAdapter) -> Iterator[LRPTrace]:
    """Record what layer-wise relevance propagation needs from one forward pass.

    Per block the input, the q/k/v projection's input and split output, the attention
    output (kept in the autograd graph, so the attention's gradient can be taken), the
    projection's input, both residual summands and the MLP's two linear inputs; then the
    final-norm tokens, each head's input and output, and the patch embedding's input and
    output (docs/methods.md §9; the tensors Chefer's ``layers_ours.py`` modules keep for ``relprop``).

    Attention runs on timm's explicit path (the same computation as the fused kernel, and
    the one every recording hook uses), but autograd keeps no attention probabilities: a
    backward pass taken inside the context recomputes them block by block.

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
    >>> tuple(b.q.shape), tuple(b.probabilities().shape), tuple(tr.heads()[0].linear.x.shape)
    ((2, 3, 5, 64), (2, 3, 5, 5), (2, 192))
    >>> torch.allclose(b.mid + b.mlp_branch, tr.blocks()[1].x)
    True
    """
    adapter = check_lrp_supported(model)
    m: Any = adapter.module
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
        trace.raw["embed"] = flatten_tokens(out.detach())

    saver = ProbabilitiesSaver(lambda i: trace.block(i).probabilities())
    with adapter.explicit_attention(), removing_hooks() as hs, saver.hooks():
        blocks: list[Any] = adapter.blocks  # checked timm Blocks
        for i, (s, blk) in enumerate(zip(trace.raw_blocks, blocks)):
            a, mlp = blk.attn, blk.mlp
            hs += [
                a.k_norm.register_forward_hook(saver.entering(i)),
                a.attn_drop.register_forward_hook(saver.computed),
                a.register_forward_hook(saver.leaving),
                blk.register_forward_pre_hook(put(s, "x")),
                a.k_norm.register_forward_hook(put(s, "k")),
                a.qkv.register_forward_pre_hook(put(s, "qkv_in")),
                a.qkv.register_forward_hook(put_qkv(s, blk)),
                a.q_norm.register_forward_hook(put(s, "q")),
                a.norm.register_forward_pre_hook(put(s, "attn_out", keep_graph=True)),
                a.proj.register_forward_pre_hook(put(s, "proj_in")),
                blk.drop_path1.register_forward_hook(put(s, "attn_branch")),
                blk.norm2.register_forward_pre_hook(put(s, "mid")),
                mlp.fc1.register_forward_pre_hook(put(s, "fc1_in")),
                mlp.fc2.register_forward_pre_hook(put(s, "fc2_in")),
                blk.drop_path2.register_forward_hook(put(s, "mlp_branch")),
            ]
        r = trace.raw
        hs += [
            m.norm.register_forward_hook(put(r, "tokens", keep_graph=True)),
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
