"""Geometry, validation and instrumentation points of timm Vision Transformers.

This module is the one place that reads timm's ViT internals. Methods ask a
:class:`ViTAdapter` for the number of prefix tokens, the patch grid of an input,
the token rows the classifier reads, and where each block's attention probabilities are
produced (and how to make them explicit); they never hard-code ``[:, 1:]``, ``14 x 14`` or
``fused_attn``. A new model family plugs in by answering the same questions.
"""

from __future__ import annotations

import functools
import types
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import torch
import torch.nn.functional as F
from timm.layers.attention import Attention
from torch import Tensor, nn

from captum_vit.models.view import unwrap_compiled
from captum_vit.models.wrapped import preprocess_of

A = TypeVar("A", bound="ViTAdapter")

#: Name of the probe child every family installs on a module inside ``explicit_attention()``
#: (its output is the attention probabilities that hooks read or replace).
PROBE_NAME = "captum_vit_probe"

SUPPORTED_VITS = (
    "timm VisionTransformer and its subclasses (vit_*, deit_*, deit3_*, DINOv2, CLIP, SigLIP, FlexiViT, including "
    "distilled DeiT, register-token and attention-pooled models) built from timm.layers.Attention blocks"
)

#: Adapter classes of the other model families, tried in order before the timm ViT default
#: (:func:`register_family`); :func:`supported_vits` lists them all.
_FAMILIES: list[type[ViTAdapter]] = []


def register_family(cls: type[A]) -> type[A]:
    """Class decorator: make :class:`ViTAdapter` dispatch models its ``accepts`` recognises to
    ``cls`` (a subclass overriding the family-specific parts)."""
    if cls not in _FAMILIES:
        _FAMILIES.append(cls)
    return cls


def _load_families() -> None:
    # The family modules register themselves on import; imported on first use only (one of
    # them reads Hugging Face models and must not import transformers at package import).
    import captum_vit.models.families  # noqa: F401


def supported_vits() -> str:
    """Every model family the attention-graph methods support, for error messages."""
    _load_families()
    return "; ".join([SUPPORTED_VITS, *(f.family for f in _FAMILIES)])


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
    """Read a Vision Transformer's geometry and validate inputs against it.

    ``ViTAdapter(model)`` returns the adapter of the model's family: timm's
    ``VisionTransformer`` (this class) or one registered with :func:`register_family` (timm
    BEiT / EVA / relative-position ViTs, torchvision and Hugging Face ViTs, see
    :mod:`captum_vit.models.families`). A family subclass overrides :meth:`accepts`,
    :meth:`_setup` and the properties that differ; methods only ever ask the adapter.

    Parameters
    ----------
    model : nn.Module
        The model whose output is explained. It is the ViT itself, a ``torch.compile`` wrapper
        of one (the adapter, and every hook, then works on the module it compiled: the same
        function with the same weights), a :class:`~captum_vit.models.wrapped.Wrapped` naming
        the ViT inside a larger module, or a larger module holding exactly one supported ViT
        (found automatically).
    inner : str, optional
        Dotted path of the ViT inside ``model`` (what :class:`Wrapped` passes); default: the
        model itself, or the one ViT it holds.

    Attributes
    ----------
    model : nn.Module
        What is run to get the explained output (the whole wrapper).
    module : nn.Module
        The ViT whose internals are read and instrumented (``model`` itself unless wrapped).
    inner : str
        The dotted path of ``module`` in ``model`` (``""`` for the model itself).

    Raises
    ------
    TypeError
        If ``model`` is not (and holds no) supported ViT, or holds several (name one with
        :class:`~captum_vit.models.wrapped.Wrapped`).

    Examples
    --------
    >>> import timm
    >>> m = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3,
    ...                       depth=2, img_size=64)
    >>> a = ViTAdapter(m)
    >>> a.num_prefix_tokens, a.grid_size((64, 64))
    (1, (4, 4))
    >>> ViTAdapter(nn.Sequential(nn.Identity(), m)).inner
    '1'
    """

    #: What the family is, in words (error messages, the coverage matrix).
    family: ClassVar[str] = SUPPORTED_VITS
    #: Whether MUTEX may drop patch tokens from the sequence (absolute position embeddings
    #: only); families with relative position bias or rotary embeddings say ``False`` and
    #: MUTEX masks the removed tokens out of every attention instead (the same function).
    supports_token_removal: ClassVar[bool] = True

    def __new__(cls, model: nn.Module | None = None, inner: str | None = None) -> ViTAdapter:
        if cls is not ViTAdapter or model is None:  # a subclass, or copy/pickle restoring state
            return object.__new__(cls)
        if not isinstance(model, nn.Module):
            return object.__new__(cls)  # __init__ raises the TypeError
        resolved = _resolve_inner(model, inner)
        adapter = object.__new__(_family_of(resolved[1]) or ViTAdapter)
        adapter.__dict__["_resolved"] = resolved  # __init__ takes it: the inner ViT is searched for once
        return adapter

    @classmethod
    def accepts(cls, module: nn.Module) -> bool:
        """Whether ``module`` is a model of this family (cheap: no forward pass)."""
        return all(hasattr(module, n) for n in ("patch_embed", "blocks", "num_prefix_tokens", "forward_features"))

    def __init__(self, model: nn.Module, inner: str | None = None) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        model = unwrap_compiled(model)
        resolved: tuple[str, nn.Module] | None = self.__dict__.pop("_resolved", None)
        self.inner, module = resolved if resolved is not None else _resolve_inner(model, inner)
        self.model = model
        self.module: Any = module
        self._setup(module)

    def rebuild(self: A, model: nn.Module) -> A:
        """The same family's adapter of ``model`` (a private view of :attr:`model`), with the
        same inner path: built on every call, so the family is not looked up again and the
        inner ViT is not searched for (``""`` is the model itself)."""
        new = object.__new__(type(self))
        new.__init__(model, self.inner)  # type: ignore[misc]
        return new

    def _setup(self, module: nn.Module) -> None:
        """Validate ``module`` and find its blocks (raise ``TypeError`` naming the problem)."""
        needed = ("patch_embed", "blocks", "num_prefix_tokens", "forward_features")
        missing = [n for n in needed if not hasattr(module, n)]
        if missing:
            raise TypeError(
                f"model of type {type(module).__name__} is not a supported ViT (missing "
                f"{', '.join(missing)}); supported: {supported_vits()}"
            )
        blocks = list(module.blocks)  # type: ignore[arg-type, union-attr]
        if not blocks or not all(isinstance(getattr(b, "attn", None), Attention) for b in blocks):
            raise TypeError(
                f"model of type {type(module).__name__} has blocks whose attention is not "
                f"timm.layers.Attention; supported: {supported_vits()}"
            )
        self.blocks: list[nn.Module] = blocks
        # timm modules are typed loosely (nn.Module.__getattr__); keep them as Any here.
        self.attentions: list[Any] = [b.attn for b in blocks]
        self.patch_embed: Any = module.patch_embed

    # ------------------------------------------------------------------ geometry
    @property
    def num_prefix_tokens(self) -> int:
        """Class, distillation and register tokens placed before the patch tokens."""
        return int(self.module.num_prefix_tokens)  # type: ignore[arg-type]

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def num_heads(self) -> int:
        return int(self.attentions[-1].num_heads)

    @property
    def num_classes(self) -> int:
        """Classifier outputs; 0 for a model without a classifier head (an embedding model)."""
        return int(getattr(self.module, "num_classes", 0))

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
        return bool(getattr(self.module, "dynamic_img_size", False))

    @property
    def pads_input(self) -> bool:
        """Whether the patch embedding pads an input whose size is not a multiple of the patch
        size (timm's ``dynamic_img_pad``: zeros at the bottom and right)."""
        return bool(getattr(self.patch_embed, "dynamic_img_pad", False))

    def covered_size(self, image_size: tuple[int, int]) -> tuple[int, int]:
        """The input extent the patch grid covers: ``image_size``, or the padded size when the
        model pads (:attr:`pads_input`); a map is upsampled to it and cropped to the image."""
        if not self.pads_input:
            return (int(image_size[0]), int(image_size[1]))
        (gh, gw), (ph, pw) = self.grid_size(image_size), self.patch_size
        return (gh * ph, gw * pw)

    @property
    def img_size(self) -> tuple[int, int] | None:
        """The one input size the model takes, or ``None`` when it takes any size."""
        if self.dynamic_img_size or not bool(getattr(self.patch_embed, "strict_img_size", True)):
            return None
        return (int(self.patch_embed.img_size[0]), int(self.patch_embed.img_size[1]))

    @property
    def embed_dim(self) -> int:
        """Width of the token states."""
        return int(self.module.embed_dim)

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
        m = self.module
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
        return getattr(self.module, "attn_pool", None)

    @property
    def pool_input(self) -> nn.Module:
        """The module whose output ``(B, N, D)`` is the token states the pooling (and the class
        token's head) reads: timm's final norm."""
        return self.module.norm  # type: ignore[return-value]

    @property
    def attention_probes(self) -> list[nn.Module]:
        """Per block, the module whose output is the block's post-softmax attention
        probabilities ``(B, heads, N, N)`` inside :meth:`explicit_attention` (timm: the
        attention dropout, an identity in eval mode). Hooks read or replace that output."""
        return [a.attn_drop for a in self.attentions]

    def _probe_children(self) -> list[nn.Module]:
        """Per block, the :data:`PROBE_NAME` child a family installs on each attention module
        inside :meth:`explicit_attention` (families whose probe is not timm's ``attn_drop``)."""
        probes = [a._modules.get(PROBE_NAME) for a in self.attentions]
        if any(p is None for p in probes):
            raise RuntimeError(f"{self.family}: attention is explicit only inside ViTAdapter.explicit_attention()")
        return [p for p in probes if p is not None]

    def pool_attention_probe(self) -> nn.Module | None:
        """Inside :meth:`explicit_attention`, the module whose output is the attention pool's
        probe attention ``(B, heads, 1, N)``; ``None`` for models without attention pooling."""
        pool = self.attention_pool
        if pool is None:
            return None
        probe = pool._modules.get(PROBE_NAME)
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
        # Re-entrant: an enclosing call's probe (and the hooks on it) stays in place.
        pool = None if pool is not None and PROBE_NAME in pool._modules else pool
        try:
            for a in self.attentions:
                a.fused_attn = False
            if pool is not None:
                pool._modules[PROBE_NAME] = nn.Identity()
                # timm >= 1.0.16 pools the patch tokens unless pool_include_prefix; 1.0.15 (no
                # such attribute) pooled every token
                skipped = 0 if getattr(self.module, "pool_include_prefix", True) else self.num_prefix_tokens
                pool.forward = types.MethodType(functools.partial(_explicit_pool_forward, skipped=skipped), pool)
            yield
        finally:
            for a, flag in zip(self.attentions, saved):
                a.fused_attn = flag
            if pool is not None:
                pool._modules.pop(PROBE_NAME, None)
                pool.__dict__.pop("forward", None)

    @property
    def patch_embedding(self) -> nn.Module:
        """The module whose output is the patch tokens, before prefix tokens and position
        embeddings (DiffMask replaces it, :func:`~captum_vit.models.hooks.replace_patch_embeddings`)."""
        return self.patch_embed  # type: ignore[no-any-return]

    def patch_tokens(self, out: Tensor) -> Tensor:
        """:attr:`patch_embedding`'s output as ``(B, h*w, D)`` tokens (timm models with
        ``flatten=False`` give ``(B, h, w, D)``)."""
        return out.flatten(1, 2) if out.dim() == 4 else out

    def restore_patch_tokens(self, tokens: Tensor, like: Tensor) -> Tensor:
        """Inverse of :meth:`patch_tokens`: ``(B, h*w, D)`` tokens in the layout of ``like``."""
        return tokens.reshape(like.shape)

    @property
    def gradcam_layer(self) -> nn.Module:
        """ViT Grad-CAM's default layer: the last block's first norm (pytorch-grad-cam's
        recommendation; its patch tokens get gradients through the last attention)."""
        return self.blocks[-1].norm1  # type: ignore[return-value]

    @property
    def lrp_unsupported(self) -> str | None:
        """Why Transformer Attribution's relevance rules do not cover this model, or ``None``."""
        if type(self) is ViTAdapter:
            return None
        return f"its relevance-propagation rules cover the pre-norm Block of timm's ViT, not {self.family}"

    def final_tokens(self, x: Tensor) -> Tensor:
        """The final (normed) token states ``(B, N, D)`` of images ``x`` (what the pooling and
        the class token's head read; LTX's explainer network reads them)."""
        return self.module.forward_features(x)  # type: ignore[no-any-return]

    def strip_head(self) -> None:
        """Remove the classifier of :attr:`module` in place (called on a copy: LTX's explainer
        backbone)."""
        self.module.reset_classifier(0)

    @property
    def embedding_parts(self) -> list[nn.Module | nn.Parameter]:
        """Patch and position embeddings and prefix tokens (frozen in LTX's explainer, as the
        official code), and parts the explainer never runs (an attention-pooling head)."""
        # fc_norm follows the pooling (global_pool='avg'): never run, so frozen as well
        names = ("patch_embed", "cls_token", "dist_token", "reg_token", "pos_embed", "attn_pool", "fc_norm")
        parts = [getattr(self.module, n, None) for n in names]
        return [p for p in parts if isinstance(p, (nn.Module, nn.Parameter))]

    def prefix_token_parameters(self) -> Tensor:
        """The learned prefix tokens ``(1, num_prefix_tokens, D)`` in sequence order (class,
        distillation, registers), before position embeddings: what Vision DiffMask prepends
        to the patch embeddings to gate the prefix positions. ``(1, 0, D)`` when none is found."""
        parts = [getattr(self.module, n, None) for n in ("cls_token", "dist_token", "reg_token")]
        tokens = [t for t in parts if isinstance(t, Tensor)]
        return torch.cat(tokens, 1) if tokens else torch.zeros(1, 0, self.embed_dim)

    @property
    def preprocess(self) -> nn.Module | None:
        """What turns :attr:`model`'s input into :attr:`module`'s (the module
        ``Wrapped(..., preprocess=...)`` names, or the children before the ViT in
        ``nn.Sequential`` containers), or ``None`` when unknown or nothing
        (:func:`~captum_vit.models.wrapped.preprocess_of`). LTX's explainer runs a copy."""
        return preprocess_of(self.model, self.inner)

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
            if not self.pads_input and (h % ph or w % pw):
                raise ValueError(
                    f"{name} spatial size {(h, w)} is not a multiple of the patch size {(ph, pw)}; "
                    "resize the images, or create the model with dynamic_img_pad=True"
                )
        else:
            expected = self.img_size
            if expected is not None and (h, w) != expected:
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


def probabilities(q: Tensor, k: Tensor, scale: float, mask: Tensor | None = None) -> Tensor:
    """``softmax(q · scale kᵀ + mask)``, the operations and their order of timm's explicit
    attention path (so the result is the tensor that path computes).

    Examples
    --------
    >>> q, k = torch.randn(1, 2, 3, 4), torch.randn(1, 2, 3, 4)
    >>> p = probabilities(q, k, 0.5)
    >>> torch.allclose(p, torch.softmax(q @ k.transpose(-2, -1) * 0.5, -1), atol=1e-6)
    True
    """
    scores = (q * scale) @ k.transpose(-2, -1)
    if mask is not None:
        scores = scores + mask
    return scores.softmax(dim=-1)


def _explicit_pool_forward(self: Any, x: Tensor, attn_mask: Tensor | None = None, skipped: int = 0) -> Tensor:
    """timm's ``AttentionPoolLatent.forward`` with the unfused attention, its probabilities
    passed through the probe module (``tests/models`` checks it against timm's own forward).

    ``skipped``: prefix tokens the model drops before pooling (timm pools the patch tokens
    only unless ``pool_include_prefix``); the probe sees probabilities over every token of
    the sequence, zero at those, so that every method reads a ``(B, heads, 1, N)`` probe."""
    b, n, c = x.shape
    if self.pos_embed is not None:
        x = x + self.pos_embed.unsqueeze(0).to(x.dtype)
    q = self.q(self.latent.expand(b, -1, -1)).reshape(b, self.latent_len, self.num_heads, self.head_dim).transpose(1, 2)
    k, v = self.kv(x).reshape(b, n, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    q, k = self.q_norm(q), self.k_norm(k)
    attn = probabilities(q, k, self.scale, attn_mask)
    attn = self._modules[PROBE_NAME](F.pad(attn, (skipped, 0)) if skipped else attn)[..., skipped:]
    x = (attn @ v).transpose(1, 2).reshape(b, self.latent_len, c)
    x = self.proj_drop(self.proj(x))
    if self.mlp is not None:
        x = x + self.mlp(self.norm(x))
    if self.pool == "token":
        return x[:, 0]  # type: ignore[no-any-return]
    if self.pool == "avg":
        return x.mean(1)  # type: ignore[no-any-return]
    return x


def upsample_patch_map(
    patch_map: Tensor,
    image_shape: torch.Size | tuple[int, ...],
    mode: str = "bilinear",
    covered: tuple[int, int] | None = None,
) -> Tensor:
    """Upsample a ``(B, h, w)`` patch map to the input's ``(B, C, H, W)`` shape.

    The map is interpolated to ``(H, W)`` (bilinear with ``align_corners=False`` as in
    Chefer et al. and LTX, or ``"nearest"`` as in Vision DiffMask and MUTEX's metrics) and
    broadcast over channels, so captum's metrics that demand ``attr.shape == input.shape``
    accept it. ``covered``: the extent the grid covers when the model padded the input
    (:meth:`ViTAdapter.covered_size`); the map is interpolated to it and its top-left
    ``(H, W)`` kept, so each patch's value lands on the pixels the patch saw.

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
    size = (hh, ww) if covered is None else (max(hh, int(covered[0])), max(ww, int(covered[1])))
    kwargs = {} if mode == "nearest" else {"align_corners": False}
    up = F.interpolate(patch_map.unsqueeze(1).float(), size=size, mode=mode, **kwargs)[..., :hh, :ww]
    return up.expand(b, c, hh, ww).contiguous()


def _family_of(module: nn.Module) -> type[ViTAdapter] | None:
    """The adapter class of ``module``'s family, or ``None``."""
    _load_families()
    for fam in _FAMILIES:
        if fam.accepts(module):
            return fam
    return ViTAdapter if ViTAdapter.accepts(module) else None


def _resolve_inner(model: nn.Module, inner: str | None) -> tuple[str, nn.Module]:
    """``(path, module)`` of the ViT to read in ``model``: ``inner`` when given (or the one a
    :class:`~captum_vit.models.wrapped.Wrapped` names), ``model`` itself when it is a ViT,
    else the one supported ViT it holds."""
    model = unwrap_compiled(model)
    if inner is None:
        inner = getattr(model, "captum_vit_inner", None)
    if inner is not None:
        try:
            return inner, unwrap_compiled(model.get_submodule(inner))
        except AttributeError:
            raise TypeError(f"inner={inner!r} is not a submodule of the {type(model).__name__} model") from None
    if _family_of(model) is not None:
        return "", model
    found: list[str] = []
    for name, sub in model.named_modules():
        if name and not any(name.startswith(f + ".") for f in found) and _family_of(sub) is not None:
            found.append(name)
    if len(found) == 1:
        return found[0], unwrap_compiled(model.get_submodule(found[0]))
    if len(found) > 1:
        raise TypeError(
            f"the {type(model).__name__} model holds several ViTs ({', '.join(found)}); name the one to explain "
            "with captum_vit.models.Wrapped(model, vit=...)"
        )
    return "", model


def is_vit(model: nn.Module) -> bool:
    """True when :class:`ViTAdapter` accepts ``model``."""
    try:
        ViTAdapter(model)
    except TypeError:
        return False
    return True
