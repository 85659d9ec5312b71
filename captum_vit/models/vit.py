"""Geometry, validation and instrumentation points of timm Vision Transformers.

This module is the one place that reads timm's ViT internals. Methods ask a
:class:`ViTAdapter` for the number of prefix tokens, the patch grid of an input,
the token rows the classifier reads, and where each block's attention probabilities are
produced (and how to make them explicit); they never hard-code ``[:, 1:]``, ``14 x 14`` or
``fused_attn``. A new model family plugs in by answering the same questions.
"""

from __future__ import annotations

import types
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers.attention import Attention
from torch import Tensor, nn

from captum_vit.models.view import unwrap_compiled

SUPPORTED_VITS = (
    "timm VisionTransformer and its subclasses (vit_*, deit_*, deit3_*, including distilled "
    "DeiT, register-token and attention-pooled models) built from timm.layers.Attention blocks"
)


def check_image_batch(x: object, in_chans: int, name: str = "inputs") -> Tensor:
    """The checks every explainee shares: a non-empty, floating-point ``(B, in_chans, H, W)``
    tensor (finiteness is checked by the callers, after their cheaper shape checks)."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if x.dim() != 4:
        raise ValueError(f"{name} must be 4-D (batch, channels, height, width), got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} must hold at least one image, got batch size 0")
    if x.shape[1] != in_chans:
        raise ValueError(f"{name} must have {in_chans} channels, got {x.shape[1]} (shape {tuple(x.shape)})")
    return x


def check_dtype(x: Tensor, model_dtype: torch.dtype, name: str = "inputs") -> None:
    """Raise ``TypeError`` naming both dtypes when images and model parameters differ (the
    model would otherwise fail deep inside a convolution)."""
    if x.dtype != model_dtype:
        raise TypeError(
            f"{name} have dtype {x.dtype} but the model's parameters are {model_dtype}; "
            f"convert the inputs with inputs.to({model_dtype}) (or the model to {x.dtype})"
        )


@dataclass(frozen=True)
class Readout:
    """Which token rows feed the classifier head, and with which weights.

    ``rows is None`` means "the mean over all patch tokens" (``global_pool='avg'``), or, with
    ``attention_pool``, the mean weighted by the pooling head's probe attention
    (``global_pool='map'``), which differs per image.
    """

    rows: tuple[int, ...] | None
    include_prefix: bool = False
    attention_pool: bool = False


class ViTAdapter:
    """Read a timm ViT's geometry and validate inputs against it.

    Parameters
    ----------
    model : nn.Module
        A timm ``VisionTransformer`` (or ``VisionTransformerDistilled``).

    A ``torch.compile`` wrapper is unwrapped: the adapter (and every hook) works on the module
    it compiled, which computes the same function with the same weights.

    Raises
    ------
    TypeError
        If ``model`` is not a supported timm ViT.

    Examples
    --------
    >>> import timm
    >>> m = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3,
    ...                       depth=2, img_size=64)
    >>> a = ViTAdapter(m)
    >>> a.num_prefix_tokens, a.grid_size((64, 64))
    (1, (4, 4))
    """

    def __init__(self, model: nn.Module) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        model = unwrap_compiled(model)
        needed = ("patch_embed", "blocks", "num_prefix_tokens", "forward_features")
        missing = [n for n in needed if not hasattr(model, n)]
        if missing:
            raise TypeError(
                f"model of type {type(model).__name__} is not a supported ViT (missing "
                f"{', '.join(missing)}); supported: {SUPPORTED_VITS}"
            )
        blocks = list(model.blocks)  # type: ignore[arg-type, union-attr]
        if not blocks or not all(isinstance(getattr(b, "attn", None), Attention) for b in blocks):
            raise TypeError(
                f"model of type {type(model).__name__} has blocks whose attention is not "
                f"timm.layers.Attention; supported: {SUPPORTED_VITS}"
            )
        self.model = model
        self.blocks: list[nn.Module] = blocks
        # timm modules are typed loosely (nn.Module.__getattr__); keep them as Any here.
        self.attentions: list[Any] = [b.attn for b in blocks]
        self.patch_embed: Any = model.patch_embed

    # ------------------------------------------------------------------ geometry
    @property
    def num_prefix_tokens(self) -> int:
        """Class, distillation and register tokens placed before the patch tokens."""
        return int(self.model.num_prefix_tokens)  # type: ignore[arg-type]

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def num_heads(self) -> int:
        return int(self.attentions[-1].num_heads)

    @property
    def num_classes(self) -> int:
        """Classifier outputs; 0 for a model without a classifier head (an embedding model)."""
        return int(getattr(self.model, "num_classes", 0))

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the patch embedding's weights, which the images must have."""
        return self.patch_embed.proj.weight.dtype  # type: ignore[no-any-return]

    @property
    def in_chans(self) -> int:
        return int(self.patch_embed.proj.in_channels)

    @property
    def patch_size(self) -> tuple[int, int]:
        p = self.patch_embed.patch_size
        return (int(p[0]), int(p[1]))

    @property
    def dynamic_img_size(self) -> bool:
        return bool(getattr(self.model, "dynamic_img_size", False))

    def grid_size(self, image_size: tuple[int, int]) -> tuple[int, int]:
        """Patch grid ``(h, w)`` for an input of spatial size ``image_size``."""
        pe = self.patch_embed
        if self.dynamic_img_size:
            h, w = pe.dynamic_feat_size(tuple(image_size))
            return int(h), int(w)
        gs = pe.grid_size
        return int(gs[0]), int(gs[1])

    @property
    def readout(self) -> Readout:
        """The token rows whose final states the classifier reads.

        * class-token pooling: row 0;
        * distilled DeiT: the mean of rows 0 (class) and 1 (distillation);
        * ``global_pool='avg'``: the mean over patch tokens (or all tokens when the model
          pools prefix tokens too);
        * ``global_pool='map'`` (SigLIP): the rows weighted by the pooling head's probe
          attention, recorded per image (:meth:`pool_attention_probe`).

        Raises
        ------
        ValueError
            For poolings no row readout describes (``'max'``, ``'avgmax'``, an attention pool
            with several probes).
        """
        m = self.model
        pool = self.attention_pool
        if pool is not None:
            if int(getattr(pool, "latent_len", 1)) != 1:
                raise ValueError(
                    f"model's attention pooling has {pool.latent_len} probes; attention-graph methods support one"
                )
            return Readout(rows=None, attention_pool=True)
        if hasattr(m, "head_dist") and getattr(m, "dist_token", None) is not None:
            return Readout(rows=(0, 1))
        pool = getattr(m, "global_pool", "token")
        if pool == "token":
            return Readout(rows=(0,))
        if pool == "avg":
            return Readout(rows=None, include_prefix=bool(getattr(m, "pool_include_prefix", False)))
        raise ValueError(
            f"model pooling global_pool={pool!r} is not supported by attention-graph methods; expected 'token' or 'avg'"
        )

    def readout_weights(self, num_tokens: int, device: torch.device) -> Tensor:
        """A ``(num_tokens,)`` weight vector whose product with a token-relevance matrix
        gives the relevance of the pooled representation (rows sum to one).

        Raises
        ------
        ValueError
            For attention pooling, whose weights are the probe attention of each image.
        """
        w = torch.zeros(num_tokens, device=device)
        ro = self.readout
        if ro.attention_pool:
            raise ValueError("attention pooling has no fixed readout weights: read the probe attention")
        if ro.rows is not None:
            w[list(ro.rows)] = 1.0 / len(ro.rows)
        else:
            start = 0 if ro.include_prefix else self.num_prefix_tokens
            w[start:] = 1.0 / (num_tokens - start)
        return w

    # ----------------------------------------------------------- instrumentation
    @property
    def attention_pool(self) -> Any:
        """The attention-pooling head (``global_pool='map'``), or ``None``."""
        return getattr(self.model, "attn_pool", None)

    @property
    def pool_input(self) -> nn.Module:
        """The module whose output ``(B, N, D)`` is the token states the pooling (and the class
        token's head) reads: timm's final norm."""
        return self.model.norm  # type: ignore[return-value]

    @property
    def attention_probes(self) -> list[nn.Module]:
        """Per block, the module whose output is the block's post-softmax attention
        probabilities ``(B, heads, N, N)`` inside :meth:`explicit_attention` (timm: the
        attention dropout, an identity in eval mode). Hooks read or replace that output."""
        return [a.attn_drop for a in self.attentions]

    def pool_attention_probe(self) -> nn.Module | None:
        """Inside :meth:`explicit_attention`, the module whose output is the attention pool's
        probe attention ``(B, heads, 1, N)``; ``None`` for models without attention pooling."""
        pool = self.attention_pool
        if pool is None:
            return None
        probe = pool._modules.get(_POOL_PROBE)
        if probe is None:
            raise RuntimeError("the pool's attention is explicit only inside ViTAdapter.explicit_attention()")
        return probe

    @contextmanager
    def explicit_attention(self) -> Iterator[None]:
        """Materialise every attention probability tensor for the duration, so hooks on
        :attr:`attention_probes` (and :meth:`pool_attention_probe`) see it: timm's fused
        ``scaled_dot_product_attention`` is switched off per block (timm's explicit path is the
        same computation), and an attention-pooling head runs an explicit forward whose
        probabilities pass through a probe module. Everything is restored on exit.

        This changes the model it is given for the duration: explanation methods call it on a
        private view (:func:`captum_vit.models.view.private_view`), never on the user's model.
        """
        saved = [a.fused_attn for a in self.attentions]
        pool = self.attention_pool
        try:
            for a in self.attentions:
                a.fused_attn = False
            if pool is not None:
                pool._modules[_POOL_PROBE] = nn.Identity()
                pool.forward = types.MethodType(_explicit_pool_forward, pool)
            yield
        finally:
            for a, flag in zip(self.attentions, saved):
                a.fused_attn = flag
            if pool is not None:
                pool._modules.pop(_POOL_PROBE, None)
                pool.__dict__.pop("forward", None)

    # ---------------------------------------------------------------- validation
    def check_input(self, x: object, name: str = "inputs") -> Tensor:
        """Validate an image batch; return it unchanged.

        Raises
        ------
        TypeError
            If ``x`` is not a floating-point tensor, or its dtype is not the model's.
        ValueError
            Wrong rank, channel count, spatial size, or non-finite values.
        """
        x = check_image_batch(x, self.in_chans, name)
        check_dtype(x, self.dtype, name)
        h, w = int(x.shape[2]), int(x.shape[3])
        if self.dynamic_img_size:
            ph, pw = self.patch_size
            if h < ph or w < pw:
                raise ValueError(f"{name} spatial size {(h, w)} is smaller than the patch size {(ph, pw)}")
        else:
            expected = tuple(int(s) for s in self.patch_embed.img_size)
            strict = bool(getattr(self.patch_embed, "strict_img_size", True))
            if strict and (h, w) != expected:
                raise ValueError(
                    f"{name} spatial size {(h, w)} does not match the model's img_size {expected}; "
                    "create the model with img_size=... or dynamic_img_size=True"
                )
        if not torch.isfinite(x).all():
            raise ValueError(f"{name} contains NaN or infinite values")
        return x

    # ------------------------------------------------------------- token maps
    def patch_columns(self, row_relevance: Tensor, image_size: tuple[int, int]) -> Tensor:
        """Turn ``(B, N)`` token relevance into a ``(B, h, w)`` patch map (drops prefix tokens)."""
        h, w = self.grid_size(image_size)
        patches = row_relevance[:, self.num_prefix_tokens :]
        if patches.shape[1] != h * w:
            raise RuntimeError(f"expected {h * w} patch tokens for a {h}x{w} grid, got {patches.shape[1]}")
        return patches.reshape(-1, h, w)


_POOL_PROBE = "captum_vit_probe"


def _explicit_pool_forward(self: Any, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
    """timm's ``AttentionPoolLatent.forward`` with the unfused attention, its probabilities
    passed through the probe module (``tests/models`` checks it against timm's own forward)."""
    b, n, c = x.shape
    if self.pos_embed is not None:
        x = x + self.pos_embed.unsqueeze(0).to(x.dtype)
    q = self.q(self.latent.expand(b, -1, -1)).reshape(b, self.latent_len, self.num_heads, self.head_dim).transpose(1, 2)
    k, v = self.kv(x).reshape(b, n, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    q, k = self.q_norm(q), self.k_norm(k)
    logits = (q * self.scale) @ k.transpose(-2, -1)
    if attn_mask is not None:
        logits = logits + attn_mask
    attn = self._modules[_POOL_PROBE](logits.softmax(dim=-1))
    x = (attn @ v).transpose(1, 2).reshape(b, self.latent_len, c)
    x = self.proj_drop(self.proj(x))
    if self.mlp is not None:
        x = x + self.mlp(self.norm(x))
    if self.pool == "token":
        return x[:, 0]  # type: ignore[no-any-return]
    if self.pool == "avg":
        return x.mean(1)  # type: ignore[no-any-return]
    return x


def upsample_patch_map(patch_map: Tensor, image_shape: torch.Size | tuple[int, ...], mode: str = "bilinear") -> Tensor:
    """Upsample a ``(B, h, w)`` patch map to the input's ``(B, C, H, W)`` shape.

    The map is interpolated to ``(H, W)`` (bilinear with ``align_corners=False`` as in
    Chefer et al. and LTX, or ``"nearest"`` as in Vision DiffMask and MUTEX's metrics) and
    broadcast over channels, so captum's metrics that demand ``attr.shape == input.shape``
    accept it.

    Examples
    --------
    >>> m = torch.arange(4.0).reshape(1, 2, 2)
    >>> upsample_patch_map(m, (1, 3, 4, 4), mode="nearest")[0, 0]
    tensor([[0., 0., 1., 1.],
            [0., 0., 1., 1.],
            [2., 2., 3., 3.],
            [2., 2., 3., 3.]])
    """
    if mode not in ("bilinear", "nearest", "bicubic"):
        raise ValueError(f"interpolate_mode must be 'bilinear', 'nearest' or 'bicubic', got {mode!r}")
    b, c, hh, ww = (int(s) for s in image_shape)
    kwargs = {} if mode == "nearest" else {"align_corners": False}
    up = F.interpolate(patch_map.unsqueeze(1).float(), size=(hh, ww), mode=mode, **kwargs)
    return up.expand(b, c, hh, ww).contiguous()


def is_vit(model: nn.Module) -> bool:
    """True when :class:`ViTAdapter` accepts ``model``."""
    try:
        ViTAdapter(model)
    except TypeError:
        return False
    return True
