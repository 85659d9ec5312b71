"""Explainer networks of LTX (ViT explainees) and EEA (CNN explainees).

An explainer maps the explainee's (normalised) input to one mask logit per patch (ViT) or
per cell of the last feature map (CNN); ``sigmoid`` of it is the keep-mask LTX multiplies
the pixel-space image by (Barkan et al., "Learning to Explain", §3). The backbone is a *copy*
of the explainee (its architecture and weights, as in the papers); the explainee itself is
never touched.

* :class:`ViTExplainer`: the explainee's timm ViT (classifier head removed) with frozen
  patch/position embeddings and prefix tokens; a per-patch head Linear(d, d) → tanh →
  Linear(d, 1) on the final (normed) patch tokens.
* :class:`CNNExplainer` (EEA): the explainee (any feature backbone: CNN or hierarchical
  transformer, :class:`~captum_vit.models.cnn.CNNAdapter`) cut after its feature stage (the
  last by default), whose ``(B, C, h, w)`` features go to a 1×1 convolution to one channel.
  The backbone's BatchNorm layers always run in eval mode (their statistics frozen, as the
  official code), while its weights stay trainable.

Every explainer carries the :func:`~captum_vit.models.fingerprint.model_fingerprint` of the
explainee it was built from as a ``uint8`` buffer, so a saved explainer names the exact
weights it belongs to.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from captum_vit.models.cnn import SUPPORTED_CNNS, CNNAdapter, is_cnn
from captum_vit.models.fingerprint import HalfCopies, check_fingerprint, model_fingerprint
from captum_vit.models.registry import save_weights
from captum_vit.models.view import unwrap_compiled
from captum_vit.models.vit import ViTAdapter, is_vit


def _geometry(explainee: nn.Module) -> dict[str, Any]:
    """What an explainer must agree on with its explainee."""
    if is_vit(explainee):
        a = ViTAdapter(explainee)
        return {
            "kind": "vit",
            "in_chans": a.in_chans,
            "patch_size": a.patch_size,
            "num_prefix_tokens": a.num_prefix_tokens,
            "img_size": a.img_size,
            "dynamic_img_size": a.dynamic_img_size,
        }
    if is_cnn(explainee):
        return {"kind": "cnn", "in_chans": CNNAdapter(explainee).in_chans}
    raise TypeError(f"unsupported explainee {type(explainee).__name__}: expected a timm ViT or a {SUPPORTED_CNNS}")


class _Explainer(HalfCopies, nn.Module):
    """Shared parts: the geometry it was built for and the fingerprint of the explainee whose
    weights it was built from / trained for (a ``uint8`` buffer, so it is saved and loaded
    with the state dict, also as safetensors)."""

    geometry: dict[str, Any]
    explainee_sha256: Tensor
    #: λ the explainer was pretrained with (set by pretraining and by the registry loader);
    #: per-instance finetuning uses it by default. ``None``: untrained / unknown.
    mask_weight: float | None = None

    def _set_fingerprint(self, explainee: nn.Module) -> None:
        self.register_buffer(
            "explainee_sha256", torch.tensor(list(bytes.fromhex(model_fingerprint(explainee))), dtype=torch.uint8)
        )

    @property
    def explainee_fingerprint(self) -> str:
        """The :func:`~captum_vit.models.fingerprint.model_fingerprint` of the explainee this
        explainer belongs to."""
        return bytes(self.explainee_sha256.cpu().tolist()).hex()

    def _explainee_key(self) -> str:
        return self.explainee_fingerprint

    def check_weights_for(self, explainee: nn.Module) -> None:
        """Raise ``ValueError`` (naming both fingerprints) when this explainer was made for
        other weights than ``explainee``'s."""
        check_fingerprint(self.explainee_fingerprint, explainee, "LTX explainer", self._half_fingerprints())

    def check_explainee(self, explainee: nn.Module) -> None:
        """Raise ``ValueError`` when ``explainee``'s geometry differs from the one this explainer
        was built for (a ViT explainer for a CNN, another patch size, image size, ...)."""
        theirs = _geometry(explainee)
        if theirs != self.geometry:
            raise ValueError(
                f"explainer architecture does not match the explainee: explainer built for {self.geometry}, "
                f"explainee is {theirs}"
            )

    def mask(self, x: Tensor) -> Tensor:
        """The ``(B, h, w)`` keep-mask ``sigmoid(self(x))`` in (0, 1)."""
        return torch.sigmoid(self(x))

    def weights_metadata(self) -> dict[str, str]:
        """The safetensors metadata of a saved explainer (its kind, explainee, the half-precision
        copies of the explainee it was vouched for, and λ)."""
        meta = {"kind": "pltx", "explainee_fingerprint": self.explainee_fingerprint} | self._half_metadata()
        return meta | ({"mask_weight": repr(float(self.mask_weight))} if self.mask_weight is not None else {})

    def save(self, path: str | os.PathLike[str], storage_dtype: torch.dtype | None = None) -> str:
        """Write the explainer as safetensors (loadable with ``LTX(model, explainer=path)``);
        returns the file's sha256."""
        return save_weights(path, self.state_dict(), self.weights_metadata(), storage_dtype)


class ViTExplainer(_Explainer):
    """LTX explainer for a timm ViT explainee.

    Parameters
    ----------
    explainee : nn.Module
        A timm ViT; copied (architecture and weights), never modified.

    Examples
    --------
    >>> import timm, torch
    >>> vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3, depth=2,
    ...                         img_size=32, patch_size=8, embed_dim=32, num_heads=2).eval()
    >>> e = ViTExplainer(vit)
    >>> e(torch.rand(2, 3, 32, 32)).shape
    torch.Size([2, 4, 4])
    >>> e.backbone.pos_embed.requires_grad, vit.pos_embed.requires_grad
    (False, True)
    """

    def __init__(self, explainee: nn.Module) -> None:
        super().__init__()
        self.geometry = _geometry(explainee)
        if self.geometry["kind"] != "vit":
            raise TypeError(f"ViTExplainer needs a timm ViT explainee, got {type(explainee).__name__}")
        self._set_fingerprint(explainee)
        # The backbone is a copy of the ViT itself (inside a wrapper: the ViT the adapter reads).
        explainee_adapter = ViTAdapter(explainee)
        backbone = copy.deepcopy(explainee_adapter.module)
        adapter = ViTAdapter(backbone)
        adapter.strip_head()
        backbone.train(explainee.training)
        backbone.requires_grad_(True)  # the copy trains even when the explainee is frozen
        # Frozen embeddings, as the official explainer (its freeze_multitask_model).
        # The attention-pooling head (SigLIP) never runs: the explainer reads the tokens.
        for part in adapter.embedding_parts:
            part.requires_grad_(False)
        # Inside a pipeline the ViT reads preprocessed images: so does its copy (frozen, as
        # it is the explainee's input transform, not part of the explanation).
        pre = explainee_adapter.preprocess
        self.preprocess = nn.Identity() if pre is None else copy.deepcopy(pre).requires_grad_(False)
        self.backbone = backbone
        self.adapter = adapter
        d = adapter.embed_dim
        self.head = nn.Sequential(nn.Linear(d, d), nn.Tanh(), nn.Linear(d, 1))

    def forward(self, x: Tensor) -> Tensor:
        """Mask logits ``(B, h, w)`` for images ``x`` ``(B, C, H, W)`` as the explainee takes
        them (normalised; a wrapped ViT's preprocessing runs first)."""
        x = self.preprocess(x)
        tokens = self.adapter.final_tokens(x)  # (B, N, d), final norm applied
        logits = self.head(tokens).squeeze(-1)
        return self.adapter.patch_columns(logits, (int(x.shape[-2]), int(x.shape[-1])))


class CNNExplainer(_Explainer):
    """EEA explainer for a feature-backbone explainee (CNN or hierarchical transformer).

    Parameters
    ----------
    explainee : nn.Module
        A model :class:`~captum_vit.models.cnn.CNNAdapter` reads (timm CNNs, torchvision
        ResNets, Swin, PVT-v2); copied (architecture and weights), never modified.
    feature_layer : int, str or nn.Module
        The feature stage whose map the mask lives on: an index into the adapter's ``stages``,
        a stage's dotted name or the stage module of ``explainee``. Default -1, the last stage
        (the ResNets' ``layer4``, as EEA). The copy is cut after it.

    Examples
    --------
    >>> import timm, torch
    >>> cnn = timm.create_model("resnet10t", pretrained=False, num_classes=3).eval()
    >>> CNNExplainer(cnn)(torch.rand(2, 3, 64, 64)).shape
    torch.Size([2, 2, 2])
    >>> CNNExplainer(cnn, feature_layer="layer3")(torch.rand(2, 3, 64, 64)).shape
    torch.Size([2, 4, 4])
    """

    def __init__(self, explainee: nn.Module, feature_layer: int | str | nn.Module = -1) -> None:
        super().__init__()
        self.geometry = _geometry(explainee)
        if self.geometry["kind"] != "cnn":
            raise TypeError(f"CNNExplainer needs a CNN or hierarchical explainee, got {type(explainee).__name__}")
        self._set_fingerprint(explainee)
        stage = CNNAdapter(explainee).stage_index(feature_layer)
        self.feature_stage = stage
        backbone = copy.deepcopy(unwrap_compiled(explainee))
        adapter = CNNAdapter(backbone)
        channels = adapter.stage_channels(stage)
        self.reader = adapter.truncate(stage)
        backbone.requires_grad_(True)
        self.backbone = backbone
        self.head = nn.Conv2d(channels, 1, kernel_size=1)
        self.train(explainee.training)

    def train(self, mode: bool = True) -> CNNExplainer:
        """Set the head's mode; the backbone stays in eval mode (frozen BatchNorm statistics,
        as the official EEA code)."""
        super().train(mode)
        self.backbone.eval()
        return self

    def forward(self, x: Tensor) -> Tensor:
        """Mask logits ``(B, h, w)`` on the feature stage's grid for normalised images ``x``."""
        return self.head(self.reader(self.backbone, x)).squeeze(1)


LTXExplainer = ViTExplainer | CNNExplainer


def build_explainer(explainee: nn.Module, feature_layer: int | str | nn.Module | None = None) -> LTXExplainer:
    """An untrained explainer (backbone = a copy of ``explainee``, fresh head) for a timm ViT
    or a feature backbone (CNN, hierarchical transformer); ``feature_layer`` picks the latter's
    feature stage (:class:`CNNExplainer`).

    Raises
    ------
    TypeError
        For any other model, or a ``feature_layer`` for a ViT.

    Examples
    --------
    >>> import timm
    >>> cnn = timm.create_model("resnet10t", pretrained=False, num_classes=3).eval()
    >>> type(build_explainer(cnn)).__name__
    'CNNExplainer'
    """
    kind = _geometry(explainee)["kind"]
    if kind == "vit":
        if feature_layer is not None:
            raise TypeError("feature_layer is for CNN explainees; a ViT explainer reads the final tokens")
        return ViTExplainer(explainee)
    return CNNExplainer(explainee, -1 if feature_layer is None else feature_layer)


def explainer_for_architecture(architecture: Mapping[str, Any], mask_weight: float | None = None) -> LTXExplainer:
    """An explainer shaped for an explainee architecture, to load saved weights into.

    ``architecture`` is the explainee's registry description (``timm_name``, ``kwargs``,
    ``pretrained_cfg``, :meth:`~captum_vit.models.registry.WeightsEntry.architecture`): the
    explainee is built untrained, so the explainer loads without the explainee's weights; its
    weights and fingerprint buffer are then overwritten by the stored ones. ``mask_weight`` is
    the λ it was pretrained with (the default λ of its finetuning).
    """
    from captum_vit.models.pretrained import build_architecture

    explainer = build_explainer(build_architecture(architecture).eval()).eval()
    explainer.mask_weight = None if mask_weight is None else float(mask_weight)
    return explainer
