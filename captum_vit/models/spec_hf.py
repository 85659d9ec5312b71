"""Hugging Face ``transformers`` model folders for :mod:`captum_vit.models.spec`.

A folder holds ``config.json``, the weights and ``preprocessor_config.json``. It loads with
``AutoModelForImageClassification`` (offline: ``local_files_only``), wrapped so that its
forward returns logits, and with the preprocessing of its image processor in
``pretrained_cfg``. The explanation methods take the wrapper: the ViT adapter finds the one
supported Hugging Face model it holds (:mod:`captum_vit.models.families.hf`) and explains it
through the wrapper's forward.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from captum_vit._io import exception_line

#: Pillow's resampling codes, as Hugging Face image-processor configs store them.
_PIL_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


def hf_preprocessing(folder: str | Path) -> dict[str, Any]:
    """timm-style ``pretrained_cfg`` fields from a Hugging Face ``preprocessor_config.json``.

    ``size`` is ``{"height", "width"}`` (a squashing resize, as ``ViTImageProcessor``) or
    ``{"shortest_edge"}`` with ``crop_size`` (resize then centre crop); the rescale to
    ``[0, 1]`` is the datasets' own, and ``image_mean``/``image_std`` the normalisation.

    Raises
    ------
    ValueError
        A missing or unreadable file, or a size this reader does not know.
    """
    path = Path(folder) / "preprocessor_config.json"
    try:
        proc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ValueError(f"--model: cannot read the image-processor config {path}: {e}") from None
    size = proc.get("size", {})
    size = {"height": size, "width": size} if isinstance(size, int) else dict(size)
    crop = proc.get("crop_size") if proc.get("do_center_crop") else None
    crop = {"height": crop, "width": crop} if isinstance(crop, int) else crop
    if "height" in size and "width" in size and not crop:
        hw, crop_pct, crop_mode = (int(size["height"]), int(size["width"])), 1.0, "squash"
    elif "shortest_edge" in size and crop:
        hw = (int(crop["height"]), int(crop["width"]))
        crop_pct, crop_mode = min(hw) / int(size["shortest_edge"]), "center"
    else:
        raise ValueError(
            f"--model: {path}: unsupported size {proc.get('size')!r} / crop_size {proc.get('crop_size')!r}"
        )
    normalise = proc.get("do_normalize", True)
    return {
        "input_size": (3, *hw),
        "mean": tuple(proc.get("image_mean", (0.5, 0.5, 0.5))) if normalise else (0.0, 0.0, 0.0),
        "std": tuple(proc.get("image_std", (0.5, 0.5, 0.5))) if normalise else (1.0, 1.0, 1.0),
        "interpolation": _PIL_RESAMPLE.get(int(proc.get("resample", 2)), "bilinear"),
        "crop_pct": crop_pct,
        "crop_mode": crop_mode,
    }


class HFImageClassifier(nn.Module):
    """A ``transformers`` image classifier whose forward returns the logits tensor, with its
    preprocessing in ``pretrained_cfg``; the loaded model itself is ``.model``.

    ``transformers`` models return a ``ModelOutput``; the library's metrics and exporters take
    models that return logits, as timm's do. The explanation methods read ``.model``'s
    attention (:class:`~captum_vit.models.families.hf.HFViTAdapter`).

    Examples
    --------
    >>> from transformers import ViTConfig, ViTForImageClassification
    >>> from captum_vit.attr import GenericAttention
    >>> cfg = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
    ...                 intermediate_size=64, image_size=32, patch_size=8, num_labels=5)
    >>> wrapper = HFImageClassifier(ViTForImageClassification(cfg), {"num_classes": 5}).eval()
    >>> GenericAttention(wrapper).attribute(torch.rand(1, 3, 32, 32), target=2, return_patch_map=True).shape
    torch.Size([1, 4, 4])
    """

    def __init__(self, model: nn.Module, pretrained_cfg: dict[str, Any]) -> None:
        super().__init__()
        self.model = model
        self.pretrained_cfg = pretrained_cfg
        self.num_classes = int(pretrained_cfg["num_classes"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=x).logits


def load_hf_folder(folder: str | Path) -> nn.Module:
    """The image classifier of a Hugging Face folder, wrapped in :class:`HFImageClassifier`,
    in eval mode, float32 on the CPU, its preprocessing from :func:`hf_preprocessing`.

    Raises
    ------
    ImportError
        Without ``transformers`` (the ``hf`` extra).
    ValueError
        An unreadable or unsupported ``preprocessor_config.json``, or a model ``transformers``
        cannot load from the folder (no weights, a malformed ``config.json``).
    """
    folder = Path(folder)
    try:
        from transformers import AutoModelForImageClassification
    except ImportError as e:
        raise ImportError("a Hugging Face model folder needs transformers: pip install 'captum_vit[hf]'") from e
    cfg = hf_preprocessing(folder)
    try:
        model = AutoModelForImageClassification.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as e:  # no weights, a malformed config.json, an unknown model type...
        raise ValueError(f"--model: cannot load the Hugging Face model in {folder}: {exception_line(e)}") from None
    labels = getattr(model.config, "id2label", None) or {}
    cfg |= {"num_classes": int(model.config.num_labels), "label_names": [str(labels[i]) for i in sorted(labels)]}
    return HFImageClassifier(model.float(), cfg).eval()
