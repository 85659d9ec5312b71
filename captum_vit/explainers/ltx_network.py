"""Explainer networks of LTX (ViT explainees) and EEA (CNN explainees).

An explainer maps the explainee's (normalised) input to one mask logit per patch (ViT) or
per cell of the last feature map (CNN); ``sigmoid`` of it is the keep-mask LTX multiplies
the pixel-space image by (Barkan et al., "Learning to Explain", §3). The backbone is a *copy*
of the explainee (its architecture and weights, as in the papers); the explainee itself is
never touched.

* :class:`ViTExplainer`: the explainee's timm ViT (classifier head removed) with frozen
  patch/position embeddings and prefix tokens; a per-patch head Linear(d, d) → tanh →
  Linear(d, 1) on the final (normed) patch tokens.
* :class:`CNNExplainer` (EEA): the explainee's timm ResNet up to its last stage
  (``forward_features``) and a 1×1 convolution to one channel. The backbone's BatchNorm
  layers always run in eval mode (their statistics frozen, as the official code), while its
  weights stay trainable.

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

from captum_vit.models.cnn import CNNAdapter, is_cnn
from captum_vit.models.fingerprint import check_fingerprint, model_fingerprint
from captum_vit.models.registry import save_weights
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
    raise TypeError(
        f"unsupported explainee {type(explainee).__name__}: expected a timm ViT or a timm ResNet-family CNN"
    )


class _Explainer(nn.Module):
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

    def check_weights_for(self, explainee: nn.Module) -> None:
        """Raise ``ValueError`` (naming both fingerprints) when this explainer was made for
        other weights than ``explainee``'s."""
        check_fingerprint(self.explainee_fingerprint, explainee, "LTX explainer")

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
        """The safetensors metadata of a saved explainer (its kind, explainee and λ)."""
        meta = {"kind": "pltx", "explainee_fingerprint": self.explainee_fingerprint}
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
        backbone = copy.deepcopy(ViTAdapter(explainee).module)
        adapter = ViTAdapter(backbone)
        adapter.strip_head()
        backbone.train(explainee.training)
        backbone.requires_grad_(True)  # the copy trains even when the explainee is frozen
        # Frozen embeddings, as the official explainer (its freeze_multitask_model).
        # The attention-pooling head (SigLIP) never runs: the explainer reads the tokens.
        for part in adapter.embedding_parts:
            part.requires_grad_(False)
        self.backbone = backbone
        self.adapter = adapter
        d = adapter.embed_dim
        self.head = nn.Sequential(nn.Linear(d, d), nn.Tanh(), nn.Linear(d, 1))

    def forward(self, x: Tensor) -> Tensor:
        """Mask logits ``(B, h, w)`` for normalised images ``x`` ``(B, C, H, W)``."""
        tokens = self.adapter.final_tokens(x)  # (B, N, d), final norm applied
        logits = self.head(tokens).squeeze(-1)
        return self.adapter.patch_columns(logits, (int(x.shape[-2]), int(x.shape[-1])))


class CNNExplainer(_Explainer):
    """EEA explainer for a timm ResNet-family explainee.

    Parameters
    ----------
    explainee : nn.Module
        A timm ResNet; copied (architecture and weights), never modified.

    Examples
    --------
    >>> import timm, torch
    >>> cnn = timm.create_model("resnet10t", pretrained=False, num_classes=3).eval()
    >>> CNNExplainer(cnn)(torch.rand(2, 3, 64, 64)).shape
    torch.Size([2, 2, 2])
    """

    def __init__(self, explainee: nn.Module) -> None:
        super().__init__()
        self.geometry = _geometry(explainee)
        if self.geometry["kind"] != "cnn":
            raise TypeError(f"CNNExplainer needs a timm ResNet-family explainee, got {type(explainee).__name__}")
        self._set_fingerprint(explainee)
        backbone = copy.deepcopy(explainee)
        backbone.reset_classifier(0)  # type: ignore[operator]
        backbone.requires_grad_(True)
        self.backbone = backbone
        channels = int(backbone.num_features)  # type: ignore[arg-type]
        self.head = nn.Conv2d(channels, 1, kernel_size=1)
        self.train(explainee.training)

    def train(self, mode: bool = True) -> CNNExplainer:
        """Set the head's mode; the backbone stays in eval mode (frozen BatchNorm statistics,
        as the official EEA code)."""
        super().train(mode)
        self.backbone.eval()
        return self

    def forward(self, x: Tensor) -> Tensor:
        """Mask logits ``(B, h, w)`` on the last stage's grid for normalised images ``x``."""
        return self.head(self.backbone.forward_features(x)).squeeze(1)  # type: ignore[operator]


LTXExplainer = ViTExplainer | CNNExplainer


def build_explainer(explainee: nn.Module) -> LTXExplainer:
    """An untrained explainer (backbone = a copy of ``explainee``, fresh head) for a timm ViT
    or ResNet-family explainee.

    Raises
    ------
    TypeError
        For any other model.

    Examples
    --------
    >>> import timm
    >>> cnn = timm.create_model("resnet10t", pretrained=False, num_classes=3).eval()
    >>> type(build_explainer(cnn)).__name__
    'CNNExplainer'
    """
    kind = _geometry(explainee)["kind"]
    return ViTExplainer(explainee) if kind == "vit" else CNNExplainer(explainee)


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
