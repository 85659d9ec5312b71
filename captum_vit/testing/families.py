"""Tiny random models of every family the package explains, for tests and the coverage matrix.

:data:`FAMILIES` maps a short name to a :class:`Family`: how to build a 2-block (or 2-stage),
32-wide model of that family on 32x32 inputs, randomly initialised and in eval mode, and what
it needs. :func:`build` returns the model and a batch of images for it. Every builder seeds
its own initialisation (two calls give identical weights) and nothing is downloaded; the
Hugging Face families import ``transformers`` only when built
(:func:`missing_requirement` says when it is absent, so tests can skip with that reason).

Transformer weights (every parameter of two or more dimensions) are redrawn from
N(0, 0.3), as :func:`~captum_vit.testing.models.make_vit` does: at their default
initialisation tiny transformers have near-uniform attention and zero-initialised heads, and
the maps of a random model would be flat for reasons that have nothing to do with the method.
CNNs keep their library's initialisation (batch normalisation keeps it well scaled).

Examples
--------
>>> model, images = build("timm_vit", batch=2)
>>> images.shape, model(images).shape
(torch.Size([2, 3, 32, 32]), torch.Size([2, 5]))
>>> FAMILIES["swin"].kind, FAMILIES["hf_clip"].requires
('hierarchical', 'transformers')
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import timm
import torch
from torch import Tensor, nn

from captum_vit.testing.models import NUM_CLASSES, make_vit

#: Width, depth and geometry shared by the tiny transformers.
_TINY = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)


@dataclass(frozen=True)
class Family:
    """One model family of the coverage matrix.

    Attributes
    ----------
    label : str
        The family in words (a row of the matrix).
    kind : str
        ``"vit"`` (a token-graph transformer), ``"hierarchical"`` (Swin, PVT: windowed or
        down-sampling stages) or ``"cnn"``.
    make : callable
        ``make(seed) -> nn.Module``: the tiny model, in eval mode.
    requires : str, optional
        The optional package it needs (imported by ``make`` only).
    size : tuple of int
        The input size ``(H, W)``: 32x32, or 64x64 for models that down-sample by 32 (so
        that their last feature map is 2x2, not one cell).
    pixels : bool
        Whether the model reads ``[0, 1]`` pixels (it normalises them itself) rather than
        normalised images.
    output_fn : callable, optional
        For a model without a classifier (an embedding model), what the methods explain:
        passed to them as ``output_fn``.
    """

    label: str
    kind: str
    make: Callable[[int], nn.Module]
    requires: str | None = None
    size: tuple[int, int] = (32, 32)
    pixels: bool = False
    output_fn: Callable[[Any], Tensor] | None = None

    @property
    def method_options(self) -> dict[str, Any]:
        """Constructor options every method needs for this family (beyond its own)."""
        return {} if self.output_fn is None else {"output_fn": self.output_fn}


def pooled_output(output: Any) -> Tensor:
    """The pooled embedding ``(B, D)`` of a Hugging Face vision model's output (what the
    coverage matrix explains for models without a classifier)."""
    return output.pooler_output  # type: ignore[no-any-return]


def _informative(model: nn.Module, seed: int, std: float = 0.3) -> nn.Module:
    """Redraw every weight matrix from N(0, ``std``) (see the module docstring) and set eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g) * std)
    return model.eval()


def _timm(name: str, **overrides: Any) -> Callable[[int], nn.Module]:
    def make(seed: int) -> nn.Module:
        torch.manual_seed(seed)
        model = timm.create_model(name, pretrained=False, num_classes=NUM_CLASSES, **overrides)
        return _informative(model, seed)

    return make


def _timm_cnn(name: str, **overrides: Any) -> Callable[[int], nn.Module]:
    def make(seed: int) -> nn.Module:
        torch.manual_seed(seed)
        return timm.create_model(name, pretrained=False, num_classes=NUM_CLASSES, **overrides).eval()

    return make


def _torchvision_vit(seed: int) -> nn.Module:
    from torchvision.models import VisionTransformer

    torch.manual_seed(seed)
    model = VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=NUM_CLASSES
    )
    return _informative(model, seed)


def _torchvision_resnet(seed: int) -> nn.Module:
    # torchvision's ResNet class with one basic block per stage (ResNet-18 has two): the
    # same modules and names at half the depth.
    from torchvision.models.resnet import BasicBlock, ResNet

    torch.manual_seed(seed)
    return ResNet(BasicBlock, [1, 1, 1, 1], num_classes=NUM_CLASSES).eval()


def _hf(model_class: str, config_class: str, **config: Any) -> Callable[[int], nn.Module]:
    """A Hugging Face model built from a config written here (nothing is downloaded)."""

    def make(seed: int) -> nn.Module:
        import transformers

        sizes = dict(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            image_size=32,
            patch_size=8,
        )
        cfg = getattr(transformers, config_class)(**(sizes | config))
        torch.manual_seed(seed)
        return _informative(getattr(transformers, model_class)(cfg), seed)

    return make


def normalized_pipeline(seed: int = 0) -> nn.Sequential:
    """``nn.Sequential(Normalize(mean, std), vit)``: a timm ViT behind the normalisation its
    ``pretrained_cfg`` names, reading ``[0, 1]`` pixels (the ViT is found automatically)."""
    from torchvision.transforms import Normalize

    vit = make_vit("cls", seed=seed)
    cfg: dict[str, Any] = vit.pretrained_cfg  # type: ignore[assignment]
    return nn.Sequential(Normalize(cfg["mean"], cfg["std"]), vit).eval()


def _wrapped_pipeline(seed: int) -> nn.Module:
    from captum_vit.models.wrapped import Wrapped

    return Wrapped(normalized_pipeline(seed), vit="1", preprocess="0").eval()


_SMALL_HIERARCHY = dict(depths=(1, 1), num_heads=(1, 2))
_STRIDE_32 = (64, 64)

#: Every family of the coverage matrix, in the order of its rows.
FAMILIES: dict[str, Family] = {
    "timm_vit": Family("timm ViT", "vit", lambda seed: make_vit("cls", seed=seed)),
    "deit_distilled": Family("timm DeiT (distilled)", "vit", lambda seed: make_vit("dist", seed=seed)),
    "deit3": Family("timm DeiT3", "vit", _timm("deit3_small_patch16_224", **_TINY)),
    "dinov2_reg": Family("timm DINOv2 with registers", "vit", _timm("vit_small_patch14_reg4_dinov2", **_TINY)),
    "clip": Family("timm CLIP", "vit", _timm("vit_base_patch16_clip_224", **_TINY)),
    "siglip": Family("timm SigLIP (attention pool)", "vit", _timm("vit_base_patch16_siglip_224", **_TINY)),
    "siglip_reg": Family(
        "timm SigLIP-style, 4 registers (attention pool)", "vit", _timm("vit_so150m_patch16_reg4_map_256", **_TINY)
    ),
    "flexivit": Family("timm FlexiViT", "vit", _timm("flexivit_small", **_TINY)),
    "beit": Family("timm BEiT", "vit", _timm("beit_base_patch16_224", **_TINY)),
    "eva02": Family("timm EVA-02", "vit", _timm("eva02_tiny_patch14_224", ref_feat_shape=(4, 4), **_TINY)),
    "vit_relpos": Family("timm vit_relpos", "vit", _timm("vit_relpos_small_patch16_224", **_TINY)),
    "torchvision_vit": Family("torchvision ViT", "vit", _torchvision_vit),
    "hf_vit": Family(
        "HF ViT", "vit", _hf("ViTForImageClassification", "ViTConfig", num_labels=NUM_CLASSES), "transformers"
    ),
    "hf_deit": Family(
        "HF DeiT (distilled)",
        "vit",
        _hf("DeiTForImageClassificationWithTeacher", "DeiTConfig", num_labels=NUM_CLASSES),
        "transformers",
    ),
    "hf_dinov2": Family(
        "HF DINOv2", "vit", _hf("Dinov2ForImageClassification", "Dinov2Config", num_labels=NUM_CLASSES), "transformers"
    ),
    "hf_clip": Family(
        "HF CLIP vision (pooled output)",
        "vit",
        _hf("CLIPVisionModel", "CLIPVisionConfig"),
        "transformers",
        output_fn=pooled_output,
    ),
    "hf_siglip": Family(
        "HF SigLIP vision (pooled output)",
        "vit",
        _hf("SiglipVisionModel", "SiglipVisionConfig"),
        "transformers",
        output_fn=pooled_output,
    ),
    "swin": Family(
        "timm Swin",
        "hierarchical",
        _timm(
            "swin_tiny_patch4_window7_224", img_size=32, patch_size=4, embed_dim=16, window_size=4, **_SMALL_HIERARCHY
        ),
    ),
    "pvt_v2": Family(
        "timm PVT-v2",
        "hierarchical",
        _timm("pvt_v2_b0", depths=(1, 1, 1, 1), embed_dims=(8, 16, 32, 64), num_heads=(1, 1, 2, 2)),
        size=_STRIDE_32,
    ),
    "timm_resnet": Family("timm ResNet", "cnn", _timm_cnn("resnet10t", channels=(8, 16, 32, 64)), size=_STRIDE_32),
    "convnext": Family(
        "timm ConvNeXt", "cnn", _timm_cnn("convnext_atto", depths=(1, 1, 1, 1), dims=(8, 16, 32, 64)), size=_STRIDE_32
    ),
    "efficientnet": Family("timm EfficientNet", "cnn", _timm_cnn("test_efficientnet"), size=_STRIDE_32),
    "regnet": Family("timm RegNet", "cnn", _timm_cnn("regnetx_002"), size=_STRIDE_32),
    "torchvision_resnet": Family("torchvision ResNet", "cnn", _torchvision_resnet, size=_STRIDE_32),
    "sequential": Family("nn.Sequential(Normalize, timm ViT)", "vit", normalized_pipeline, pixels=True),
    "wrapped": Family("Wrapped(Sequential(Normalize, timm ViT))", "vit", _wrapped_pipeline, pixels=True),
}


def missing_requirement(name: str) -> str | None:
    """Why family ``name`` cannot be built here (its optional package is not installed), or
    ``None``."""
    package = family(name).requires
    if package is not None and importlib.util.find_spec(package) is None:
        return f"{FAMILIES[name].label} needs {package!r}: pip install 'captum-vit[hf]'"
    return None


def family(name: str) -> Family:
    """The :class:`Family` registered as ``name``.

    Raises
    ------
    ValueError
        For an unknown name (the message lists them).
    """
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown family {name!r}; expected one of {', '.join(FAMILIES)}") from None


def build(name: str, batch: int = 2, seed: int = 0) -> tuple[nn.Module, Tensor]:
    """The tiny model of family ``name`` (eval mode, weights fixed by ``seed``) and a batch of
    ``batch`` images of the family's :attr:`~Family.size` for it: standard-normal (normalised) images, or uniform ``[0, 1]``
    pixels for a model that normalises its input itself (:attr:`Family.pixels`).

    Raises
    ------
    ValueError
        For an unknown ``name``.
    ImportError
        When the family's optional package is not installed.

    Examples
    --------
    >>> model, x = build("sequential", batch=1)
    >>> bool(x.min() >= 0), model(x).shape
    (True, torch.Size([1, 5]))
    """
    fam = family(name)
    why = missing_requirement(name)
    if why is not None:
        raise ImportError(why)
    model = fam.make(seed)
    g = torch.Generator().manual_seed(seed + 1)
    shape = (batch, 3, *fam.size)
    images = torch.rand(shape, generator=g) if fam.pixels else torch.randn(shape, generator=g)
    return model, images
