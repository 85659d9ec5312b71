"""Turn trained explainer networks into exportable ``images -> map`` modules."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from captum_vit.export.onnx_export import ExplainerMetadata, state_dict_sha256


class MaskOutput(nn.Module):
    """``sigmoid(explainer(x))``: the pLTX keep-mask ``(B, h, w)`` the attribution returns."""

    def __init__(self, explainer: nn.Module) -> None:
        super().__init__()
        self.explainer = explainer

    def forward(self, x: Tensor) -> Tensor:
        return self.explainer(x).sigmoid()


def pltx_export_module(
    explainer: nn.Module, explainee: nn.Module, method: str = "ltx"
) -> tuple[nn.Module, ExplainerMetadata]:
    """The module to export and its metadata for an LTX/EEA explainer of ``explainee``.

    Raises
    ------
    ValueError
        When the explainer was built for another explainee geometry.
    """
    check = getattr(explainer, "check_explainee", None)
    if check is None:
        raise TypeError(f"explainer must be an LTX/EEA explainer network, got {type(explainer).__name__}")
    check(explainee)
    cfg: dict[str, Any] = dict(getattr(explainee, "pretrained_cfg", {}) or {})
    # A ViT's own img_size is authoritative (timm's pretrained_cfg keeps the default 224 of the
    # architecture name when img_size is overridden); a CNN takes any size, so use its cfg.
    pe = getattr(explainee, "patch_embed", None)
    if pe is not None:
        input_size: tuple[int, ...] = (int(pe.proj.in_channels), *(int(s) for s in pe.img_size))
    else:
        input_size = tuple(int(s) for s in cfg.get("input_size", ()))
        if len(input_size) != 3:
            raise ValueError("explainee.pretrained_cfg['input_size'] is needed to export a CNN explainer")
    module = MaskOutput(explainer).eval()
    with torch.no_grad():
        grid = tuple(module(torch.zeros(1, *input_size)).shape[1:])
    meta = ExplainerMetadata(
        input_size=(input_size[0], input_size[1], input_size[2]),
        patch_grid=(int(grid[0]), int(grid[1])),
        mean=tuple(float(v) for v in cfg.get("mean", (0.5, 0.5, 0.5))),
        std=tuple(float(v) for v in cfg.get("std", (0.5, 0.5, 0.5))),
        method=method,
        source_sha256=state_dict_sha256(explainer),
        num_classes=int(getattr(explainee, "num_classes", 0)),
    )
    return module, meta
