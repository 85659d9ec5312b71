"""Hugging Face ``transformers`` vision transformers (the ``hf`` extra).

Supported classes (and their subclasses): ``ViTForImageClassification`` and ``ViTModel``,
``DeiTForImageClassification``, ``DeiTForImageClassificationWithTeacher`` and ``DeiTModel``,
``Dinov2ForImageClassification`` and ``Dinov2Model``, the same two ``Dinov2WithRegisters``
classes, ``CLIPVisionModel`` and ``CLIPForImageClassification``, ``SiglipVisionModel`` and
``SiglipForImageClassification``; a module holding one of them (``CLIPVisionModelWithProjection``,
:class:`~captum_vit.models.spec_hf.HFImageClassifier`) is found inside it. The classes without a
classifier (``*Model``, ``*VisionModel``) are embedding models: ``num_classes`` is 0 and the
methods need ``output_fn``.

Attention is made explicit by :mod:`captum_vit.models.families.hf_attention` (the model's own
eager computation with a probe; ``tests/models/test_family_hf.py`` checks the output against the
user's model's own forward to 1e-5).

Position embeddings are absolute and added before the first layer (DINOv2 inserts its registers
after them, CLIP's ``pre_layrnorm`` works per token), so MUTEX removes patch tokens at the first
layer's input. Transformer Attribution refuses these models: its relevance rules cover timm blocks.

``transformers`` is imported only when a model comes from it: :meth:`HFViTAdapter.accepts`
reads the class's module name first.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from captum_vit.models.families._mha import MHA_PROBE, probed_mha
from captum_vit.models.families.hf_attention import PROBE, probed_hf_attention
from captum_vit.models.hooks import removing_hooks
from captum_vit.models.vit import Readout, ViTAdapter, register_family, supported_vits

#: Supported class -> (attribute holding the encoder model, how the output reads the tokens):
#: ``cls`` row 0, ``cls+dist`` the mean of rows 0 and 1, ``mean`` the mean of the patch tokens,
#: ``cls+mean`` the concatenation of row 0 and the patch mean (DINOv2), ``map`` SigLIP's
#: attention-pooling head.
_CLASSES: dict[str, tuple[str, str]] = {
    "ViTForImageClassification": ("vit", "cls"),
    "ViTModel": ("", "cls"),
    "DeiTForImageClassification": ("deit", "cls"),
    "DeiTForImageClassificationWithTeacher": ("deit", "cls+dist"),
    "DeiTModel": ("", "cls"),
    "Dinov2ForImageClassification": ("dinov2", "cls+mean"),
    "Dinov2Model": ("", "cls"),
    "Dinov2WithRegistersForImageClassification": ("dinov2_with_registers", "cls+mean"),
    "Dinov2WithRegistersModel": ("", "cls"),
    "CLIPVisionModel": ("", "cls"),
    "CLIPForImageClassification": ("vision_model", "mean"),
    "SiglipVisionModel": ("", "map"),
    "SiglipForImageClassification": ("vision_model", "mean"),
}
_CLASSIFIERS = ("classifier", "cls_classifier", "distillation_classifier")


def _supported_class(module: nn.Module) -> str | None:
    for c in type(module).__mro__:
        if c.__module__.startswith("transformers.") and c.__name__ in _CLASSES:
            return c.__name__
    return None


def _first(module: nn.Module, paths: tuple[str, ...]) -> Any:
    for path in paths:
        try:
            return module.get_submodule(path)
        except AttributeError:
            continue
    return None


@register_family
class HFViTAdapter(ViTAdapter):
    """Adapter of the Hugging Face ``transformers`` vision transformers listed in
    :mod:`captum_vit.models.families.hf`.

    DINOv2's classifier reads ``concat(class token, mean of the patch tokens)``: a score
    ``y = W_c t_0 + W_p (1/n) Σ_j t_j``. Its readout is therefore a pooling over token rows
    with weights ``a`` (``1/2`` on the class token, ``1/(2n)`` on each patch token, 0 on
    registers) exposed through a probe (:meth:`pool_attention_probe`, ``Readout.attention_pool``):
    inside :meth:`explicit_attention` the classifier reads ``concat(2 a_0 t_0, 2 Σ_j a_j t_j)``,
    the same value, so ``∂y/∂a_j a_j`` is token ``j``'s share of the score for the explained
    class and image. Gradient methods (GAE, IIA, Attention Grad-CAM) weigh the rows by it;
    methods without gradients (raw attention, rollout) read the fixed ``a``: the named
    approximation "class token and patch mean count equally", which the linear layer only
    satisfies when both halves contribute equally.

    Examples
    --------
    >>> from transformers import ViTConfig, ViTForImageClassification
    >>> cfg = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
    ...                 intermediate_size=64, image_size=32, patch_size=8, num_labels=5)
    >>> m = ViTForImageClassification(cfg).eval()
    >>> a = ViTAdapter(m)
    >>> type(a).__name__, a.num_blocks, a.num_prefix_tokens, a.grid_size((32, 32)), a.readout.rows
    ('HFViTAdapter', 2, 1, (4, 4), (0,))
    >>> with a.explicit_attention():
    ...     seen = []
    ...     _ = a.attention_probes[-1].register_forward_hook(lambda mod, i, o: seen.append(o.shape))
    ...     _ = m(torch.rand(1, 3, 32, 32))
    >>> seen, m.config._attn_implementation  # (B, heads, class + 16 patches, 17); config untouched
    ([torch.Size([1, 2, 17, 17])], 'sdpa')
    """

    family: ClassVar[str] = (
        "Hugging Face transformers ViT, DeiT (with teacher), DINOv2 (with registers), CLIP vision and SigLIP "
        "vision models (image classifiers and embedding models)"
    )

    @classmethod
    def accepts(cls, module: nn.Module) -> bool:
        return type(module).__module__.startswith("transformers.") and _supported_class(module) is not None

    def _setup(self, module: nn.Module) -> None:
        name = _supported_class(module)
        if name is None:
            raise TypeError(
                f"model of type {type(module).__name__} is not a supported ViT; supported: {supported_vits()}"
            )
        self.kind = _CLASSES[name][1]
        path = _CLASSES[name][0]
        self.backbone: Any = module.get_submodule(path) if path else module
        layers = _first(self.backbone, ("layers", "encoder.layer", "encoder.layers"))
        blocks = list(layers) if isinstance(layers, nn.ModuleList) else []
        attentions = [_first(b, ("attention", "self_attn")) for b in blocks]
        if not blocks or not all(hasattr(getattr(a, "config", None), "_attn_implementation") for a in attentions):
            raise TypeError(
                f"{type(module).__name__} has no encoder layers whose attention dispatches on "
                f"config._attn_implementation (transformers>=5.24 layout expected); supported: {supported_vits()}"
            )
        self.blocks: list[nn.Module] = blocks
        self.attentions: list[Any] = attentions
        emb: Any = self.backbone.embeddings
        self.patch_embed: Any = getattr(emb, "patch_embeddings", None) or emb.patch_embedding
        self._proj: Any = getattr(self.patch_embed, "projection", self.patch_embed)
        self._config: Any = self.backbone.config

    # ------------------------------------------------------------------ geometry
    @property
    def num_prefix_tokens(self) -> int:
        """Class token, DeiT's distillation token and DINOv2's registers; SigLIP has none."""
        emb = self.backbone.embeddings
        n = int(getattr(emb, "cls_token", None) is not None or getattr(emb, "class_embedding", None) is not None)
        n += int(getattr(emb, "distillation_token", None) is not None)
        registers = getattr(emb, "register_tokens", None)
        return n + (int(registers.shape[1]) if registers is not None else 0)

    @property
    def num_heads(self) -> int:
        return int(self._config.num_attention_heads)

    @property
    def num_classes(self) -> int:
        head = next((getattr(self.module, n) for n in _CLASSIFIERS if hasattr(self.module, n)), None)
        return int(head.out_features) if isinstance(head, nn.Linear) else 0

    @property
    def dtype(self) -> torch.dtype:
        return self._proj.weight.dtype

    @property
    def in_chans(self) -> int:
        return int(self._proj.in_channels)

    @property
    def patch_size(self) -> tuple[int, int]:
        p = self._proj.kernel_size
        return (int(p[0]), int(p[1]))

    @property
    def dynamic_img_size(self) -> bool:
        """DINOv2 interpolates its position embeddings for any input size; the others are
        called without ``interpolate_pos_encoding`` and take their ``config.image_size``."""
        return type(self.backbone).__name__.startswith("Dinov2")

    @property
    def img_size(self) -> tuple[int, int] | None:
        if self.dynamic_img_size:
            return None
        s = self._config.image_size
        return (int(s[0]), int(s[1])) if isinstance(s, (tuple, list)) else (int(s), int(s))

    @property
    def embed_dim(self) -> int:
        return int(self._config.hidden_size)

    def grid_size(self, image_size: tuple[int, int]) -> tuple[int, int]:
        ph, pw = self.patch_size
        return int(image_size[0]) // ph, int(image_size[1]) // pw

    @property
    def readout(self) -> Readout:
        """Class token (row 0); DeiT with teacher: rows 0 and 1; CLIP / SigLIP classifiers:
        the mean of the patch tokens; SigLIP vision model: its attention-pooling head; DINOv2
        classifiers: the pooling weights of the class docstring (``attention_pool``).

        Raises
        ------
        ValueError
            A ``SiglipVisionModel`` without its pooling head (``vision_use_head=False``),
            whose output has no pooled representation.
        """
        if self.kind == "cls+dist":
            return Readout(rows=(0, 1))
        if self.kind == "mean":
            return Readout(rows=None)
        if self.kind == "cls+mean":
            return Readout(rows=None, attention_pool=True)
        if self.kind == "map":
            if self.attention_pool is None:
                raise ValueError(
                    f"{type(self.module).__name__} has no pooling head (vision_use_head=False): attention-graph methods "
                    "need the rows its output reads"
                )
            return Readout(rows=None, attention_pool=True)
        return Readout(rows=(0,))

    def readout_weights(self, num_tokens: int, device: torch.device) -> Tensor:
        """DINOv2 classifiers: the fixed pooling weights ``a`` (class docstring); SigLIP's
        attention pool has none (``ValueError``); otherwise as for timm."""
        if self.kind != "cls+mean":
            return super().readout_weights(num_tokens, device)
        return self._cls_mean_weights(num_tokens, device)

    def _cls_mean_weights(self, num_tokens: int, device: torch.device) -> Tensor:
        p = self.num_prefix_tokens
        w = torch.zeros(num_tokens, device=device)
        w[0] = 0.5
        w[p:] = 0.5 / (num_tokens - p)
        return w

    # ----------------------------------------------------------- instrumentation
    @property
    def attention_pool(self) -> Any:
        """SigLIP's ``SiglipMultiheadAttentionPoolingHead`` when the output reads it, else ``None``."""
        if self.kind != "map" or not getattr(self.backbone, "use_head", False):
            return None
        return self.backbone.head

    @property
    def pool_input(self) -> nn.Module:
        """The module whose output is the token states the readout reads: the final norm
        (CLIP has none before its mean or class-token read: the last encoder layer)."""
        norm = getattr(self.backbone, "layernorm", None) or getattr(self.backbone, "post_layernorm", None)
        if norm is None or type(self.backbone).__name__.startswith("CLIP"):
            return self.blocks[-1]
        return norm  # type: ignore[no-any-return]

    @property
    def attention_probes(self) -> list[nn.Module]:
        """Per block, the probe child of the attention module (inside :meth:`explicit_attention`)."""
        return self._probe_children()

    def pool_attention_probe(self) -> nn.Module | None:
        """SigLIP: the pooling head's probe ``(B, heads, 1, N)``; DINOv2 classifiers: the probe
        of the pooling weights ``(B, 1, 1, N)``; ``None`` otherwise."""
        if self.kind == "cls+mean":
            probe = self._classifier._modules.get(PROBE)
        elif self.attention_pool is not None:
            probe = self.attention_pool.attention._modules.get(MHA_PROBE)
        else:
            return None
        if probe is None:
            raise RuntimeError("the pool's attention is explicit only inside ViTAdapter.explicit_attention()")
        return probe  # type: ignore[no-any-return]

    @property
    def _classifier(self) -> nn.Module:
        return self.module.classifier  # type: ignore[no-any-return]

    @contextmanager
    def explicit_attention(self) -> Iterator[None]:
        """Each attention module gets a probe child and its own copy of its config naming the
        probing attention function; SigLIP's pooling head runs an explicit
        ``nn.MultiheadAttention`` forward with a probe; a DINOv2 classifier reads its input
        through the pooling-weight probe. Everything is restored on exit. Call it on a
        private view: it rebinds (never mutates) the attention modules' ``config``."""
        # Re-entrant: what an enclosing call made explicit stays as it is (probes, hooks).
        pool = self.attention_pool
        pools = [pool.attention] if pool is not None and MHA_PROBE not in pool.attention._modules else []
        cls_mean = self.kind == "cls+mean" and PROBE not in self._classifier._modules
        try:
            with probed_hf_attention(self.attentions), probed_mha(pools), removing_hooks() as handles:
                if cls_mean:
                    self._probe_cls_mean(handles)
                yield
        finally:
            if cls_mean:
                self._classifier._modules.pop(PROBE, None)

    def _probe_cls_mean(self, handles: list[Any]) -> None:
        """Make a DINOv2 classifier read ``concat(2 a_0 t_0, 2 Σ_j a_j t_j)`` (the value it
        reads anyway) from the final tokens, ``a`` passing through a probe."""
        probe = nn.Identity()
        self._classifier._modules[PROBE] = probe
        tokens: list[Tensor] = []

        def on_tokens(_m: nn.Module, _inp: Any, out: Tensor) -> None:
            tokens[:] = [out]

        def before_classifier(_m: nn.Module, _args: Any) -> tuple[Tensor]:
            t = tokens[0]
            w = self._cls_mean_weights(t.shape[1], t.device).to(t.dtype)
            # a leaf of its own, so that the score's gradient with respect to ``a`` exists
            w.requires_grad_(torch.is_grad_enabled())
            a = probe(w.expand(t.shape[0], 1, 1, -1))[:, 0, 0]  # (B, N)
            p = self.num_prefix_tokens
            return (torch.cat([2 * a[:, :1, None].mul(t[:, :1]).sum(1), 2 * (a[:, p:, None] * t[:, p:]).sum(1)], -1),)

        handles.append(self.pool_input.register_forward_hook(on_tokens))
        handles.append(self._classifier.register_forward_pre_hook(before_classifier))

    @property
    def patch_embedding(self) -> nn.Module:
        """The patch projection's module: ``(B, h*w, D)`` tokens (ViT, DeiT, DINOv2) or a
        ``(B, D, h, w)`` convolution output (CLIP, SigLIP)."""
        return self.patch_embed  # type: ignore[no-any-return]

    def patch_tokens(self, out: Tensor) -> Tensor:
        return out.flatten(2).transpose(1, 2) if out.dim() == 4 else out

    def restore_patch_tokens(self, tokens: Tensor, like: Tensor) -> Tensor:
        return tokens.transpose(1, 2).reshape(like.shape) if like.dim() == 4 else tokens.reshape(like.shape)

    @property
    def gradcam_layer(self) -> nn.Module:
        """The last layer's first norm (timm's ``norm1``)."""
        return _first(self.blocks[-1], ("layernorm_before", "norm1", "layer_norm1"))  # type: ignore[no-any-return]

    def final_tokens(self, x: Tensor) -> Tensor:
        """The encoder model's ``last_hidden_state`` (what the classifier reads)."""
        return self.backbone(x).last_hidden_state  # type: ignore[no-any-return]

    def strip_head(self) -> None:
        for name in (*_CLASSIFIERS, "pooler"):
            if isinstance(getattr(self.module, name, None), nn.Module):
                setattr(self.module, name, nn.Identity())

    def prefix_token_parameters(self) -> Tensor:
        """Class token (CLIP's ``class_embedding``), DeiT's distillation token, DINOv2's
        registers, in sequence order ``(1, P, D)``."""
        emb = self.backbone.embeddings
        names = ("cls_token", "class_embedding", "distillation_token", "register_tokens")
        parts = [getattr(emb, n, None) for n in names]
        tokens = [t.reshape(1, -1, self.embed_dim) for t in parts if isinstance(t, Tensor)]
        return torch.cat(tokens, 1) if tokens else torch.zeros(1, 0, self.embed_dim)

    @property
    def embedding_parts(self) -> list[nn.Module | nn.Parameter]:
        """The embeddings (patch projection, class, distillation and register tokens, position
        embeddings), and what the explainer never runs: SigLIP's pooling head, CLIP's
        ``post_layernorm`` (applied to the pooled class token only)."""
        unused = [getattr(self.backbone, n, None) for n in ("head", "post_layernorm")]
        if type(self.backbone).__name__.startswith("Siglip"):  # its post_layernorm normalises every token
            unused = unused[:1]
        return [self.backbone.embeddings, *(m for m in unused if isinstance(m, nn.Module))]
