"""Turn trained explainer networks into exportable ``images -> map`` modules."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn

from captum_vit.explainers.diffmask_gates import DiffMaskGates
from captum_vit.explainers.hard_concrete import expected_keep
from captum_vit.explainers.ltx_network import CNNExplainer, ViTExplainer
from captum_vit.export.onnx_export import ExplainerMetadata
from captum_vit.models.fingerprint import model_fingerprint
from captum_vit.models.preprocess import model_normalization


class MaskOutput(nn.Module):
    """``sigmoid(explainer(x))``: the pLTX keep-mask ``(B, h, w)`` the attribution returns."""

    def __init__(self, explainer: nn.Module) -> None:
        super().__init__()
        self.explainer = explainer

    def forward(self, x: Tensor) -> Tensor:
        return self.explainer(x).sigmoid()


def _input_size(explainee: nn.Module) -> tuple[int, int, int]:
    """The explainee's ``(C, H, W)`` input size."""
    # A ViT's own img_size is authoritative (timm's pretrained_cfg keeps the default 224 of the
    # architecture name when img_size is overridden); a CNN takes any size, so use its cfg.
    pe = getattr(explainee, "patch_embed", None)
    if pe is not None:
        size: tuple[int, ...] = (int(pe.proj.in_channels), *(int(s) for s in pe.img_size))
    else:
        cfg = getattr(explainee, "pretrained_cfg", None) or {}
        size = tuple(int(s) for s in cfg.get("input_size", ()))
        if len(size) != 3:
            raise ValueError("explainee.pretrained_cfg['input_size'] is needed to export a CNN explainer")
    return (size[0], size[1], size[2])


def _metadata(
    module: nn.Module, explainee: nn.Module, method: str, interpolate_mode: str, **extra: Any
) -> ExplainerMetadata:
    """``source_sha256`` is the exported module's :func:`model_fingerprint`;
    ``extra["explainee_fingerprint"]`` the explainee's, as the weights registry stores it."""
    input_size = _input_size(explainee)
    mean, std = model_normalization(explainee)
    with torch.no_grad():
        grid = tuple(module(torch.zeros(1, *input_size)).shape[1:])
    return ExplainerMetadata(
        input_size=input_size,
        patch_grid=(int(grid[0]), int(grid[1])),
        mean=tuple(float(v) for v in mean),
        std=tuple(float(v) for v in std),
        method=method,
        source_sha256=model_fingerprint(module),
        interpolate_mode=interpolate_mode,
        num_classes=int(getattr(explainee, "num_classes", 0)),
        extra={"explainee_fingerprint": model_fingerprint(explainee), **extra},
    )


def pltx_export_module(
    explainer: nn.Module, explainee: nn.Module, method: str = "ltx"
) -> tuple[nn.Module, ExplainerMetadata]:
    """The module to export and its metadata for an LTX/EEA explainer of ``explainee``.

    Raises
    ------
    ValueError
        When the explainer was built for another explainee geometry or other weights.

    Examples
    --------
    >>> import timm
    >>> from captum_vit.explainers import build_explainer
    >>> vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3,
    ...                         depth=1, img_size=32).eval()
    >>> module, meta = pltx_export_module(build_explainer(vit), vit)
    >>> meta.input_size, meta.patch_grid, meta.method
    ((3, 32, 32), (2, 2), 'ltx')
    """
    if not isinstance(explainer, (ViTExplainer, CNNExplainer)):
        raise TypeError(f"explainer must be an LTX/EEA explainer network, got {type(explainer).__name__}")
    explainer.check_explainee(explainee)
    explainer.check_weights_for(explainee)
    module = MaskOutput(explainer).eval()
    return module, _metadata(module, explainee, method, "bilinear")


class DiffMaskKeep(nn.Module):
    """Vision DiffMask's inference map in one graph: one pass of the ViT, the gate networks on
    its hidden states, and the expected keep probability at hidden state ``layer`` ``(B, h, w)``.

    Only training needs a second, masked pass of the ViT (for the KL constraint); the map of
    :class:`captum_vit.attr.VisionDiffMask` does not.
    """

    def __init__(self, gates: nn.Module, explainee: nn.Module, layer: int = -1) -> None:
        super().__init__()
        if not isinstance(gates, DiffMaskGates):
            raise TypeError(f"gates must be DiffMaskGates, got {type(gates).__name__}")
        adapter = gates.check_model(explainee)
        gates.check_weights_for(explainee)
        k = int(gates.config["num_states"])
        if not isinstance(layer, int) or not -k <= layer < k:
            raise ValueError(f"layer must be an int in [{-k}, {k}) for a model with {k} hidden states, got {layer!r}")
        self.gates, self.model, self.layer = gates, explainee, layer
        input_size = _input_size(explainee)
        self.grid = tuple(int(g) for g in adapter.grid_size((input_size[1], input_size[2])))

    def forward(self, x: Tensor) -> Tensor:
        keep = expected_keep(self.gates.gate_logits(self.model, x), self.layer)
        return keep.reshape(-1, *self.grid)


def diffmask_export_module(
    gates: nn.Module, explainee: nn.Module, layer: int = -1
) -> tuple[nn.Module, ExplainerMetadata]:
    """The module to export and its metadata for Vision DiffMask gates of ``explainee``.

    The graph holds the explainee too (the gates read its hidden states), so
    ``source_sha256`` fingerprints the gates and the explainee together.

    Raises
    ------
    ValueError
        When the gates were built for another explainee width or depth or trained for other
        weights, or ``layer`` is out of range.

    Examples
    --------
    >>> import timm
    >>> from captum_vit.explainers import DiffMaskGates
    >>> vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3,
    ...                         depth=1, img_size=32).eval()
    >>> module, meta = diffmask_export_module(DiffMaskGates.for_model(vit, seed=0), vit)
    >>> meta.method, meta.interpolate_mode, tuple(module(torch.rand(2, 3, 32, 32)).shape)
    ('diffmask', 'nearest', (2, 2, 2))
    """
    module = DiffMaskKeep(copy.deepcopy(gates), copy.deepcopy(explainee), layer).eval()
    return module, _metadata(module, explainee, "diffmask", "nearest", layer=layer)
