"""Adapter for feature-backbone explainees: CNNs and hierarchical vision transformers.

The counterpart of ``ViTAdapter`` for models whose explanation is read from a spatial feature
map rather than from one token graph: timm CNNs (ResNet, ConvNeXt, EfficientNet, RegNet, ...),
torchvision ResNets, and hierarchical transformers (Swin, PVT-v2), whose windowed or
spatially reduced attention inside down-sampling stages has no token graph shared by every
block. The feature stages are read from the model (timm's ``feature_info``, torchvision's
``layer1..layer4``); a stage may output ``(B, C, h, w)`` or, as timm's Swin, ``(B, h, w, C)``:
:attr:`CNNAdapter.layout` says which and :meth:`CNNAdapter.to_nchw` gives methods the former.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from captum_vit.models.view import unwrap_compiled
from captum_vit.models.vit import check_dtype, check_image_batch, is_vit

SUPPORTED_CNNS = (
    "timm CNNs and hierarchical transformers that declare their feature stages (feature_info: ResNet, "
    "ConvNeXt, EfficientNet, RegNet, Swin, PVT-v2, ...) and torchvision ResNets"
)
_NCHW_MODULES = (nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d)
#: feature_info entries of the stem, before the first stage (timm ResNet's ``act1``, RegNet's ``stem``).
_STEM_NAMES = frozenset({"stem", "act1", "bn1", "conv1", "conv_stem"})
_USE_INSTEAD = "use gradcam, iia, ltx or pltx, which read a feature stage or mask pixels"
#: Why each attention-graph method has nothing to read on a hierarchical model.
_METHOD_NEEDS = {
    "RawAttention": "reads the last block's attention from the classifier token to every patch",
    "AttentionRollout": "multiplies one token-to-token attention graph across blocks",
    "GenericAttention": "propagates relevance through one token-to-token attention graph across blocks",
    "TransformerAttribution": "rolls relevance out over one token-to-token attention graph across blocks",
    "AttentionGradCAM": "weights each head of the last block's classifier-token attention by its gradient",
    "ViTGradCAM": "reads the patch tokens of a plain ViT's last block (gradcam reads the stage's feature map)",
    "MUTEX": "masks tokens of one sequence shared by every block and builds its multiplex attention graph",
    "VisionDiffMask": "gates the same patch tokens' hidden states in every block, which patch merging changes",
}


class CNNAdapter:
    """Read a feature backbone's stages and validate inputs.

    Attributes
    ----------
    model : nn.Module
        The model run (a ``torch.compile`` wrapper is unwrapped).
    stage_names : list of str
        Dotted names of the feature stages, shallow to deep (the stem excluded).
    stages : list of nn.Module
        The stage modules; the last is the default feature layer of Grad-CAM, IIA and EEA.
    layout : str
        ``"NCHW"`` or ``"NHWC"``: how the model's 4-D feature maps are laid out.

    Raises
    ------
    TypeError
        For a ViT, or a model whose stages are unknown (naming what is supported).

    Examples
    --------
    >>> import timm
    >>> m = timm.create_model("resnet10t", pretrained=False, num_classes=3)
    >>> a = CNNAdapter(m)
    >>> a.in_chans, a.stage_names, a.num_classes, a.layout
    (3, ['layer1', 'layer2', 'layer3', 'layer4'], 3, 'NCHW')
    >>> swin = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, num_classes=3, img_size=32,
    ...                          patch_size=4, embed_dim=16, depths=(1, 1), num_heads=(1, 2), window_size=4)
    >>> s = CNNAdapter(swin)
    >>> s.stage_names, s.layout, s.hierarchical
    (['layers.0', 'layers.1'], 'NHWC', True)
    """

    def __init__(self, model: nn.Module) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        model = unwrap_compiled(model)
        self.model = model
        self._info = _timm_stages(model)
        if self._info is not None:
            if is_vit(model):
                raise TypeError(
                    f"model of type {type(model).__name__} is a ViT, not a feature backbone: explain it with the "
                    f"attention methods (vit_gradcam for Grad-CAM); supported here: {SUPPORTED_CNNS}"
                )
            self.stage_names: list[str] = [str(d["module"]) for _, d in self._info]
        elif all(hasattr(model, f"layer{i}") for i in range(1, 5)) and any(_convs(model)):
            self.stage_names = [f"layer{i}" for i in range(1, 5)]  # torchvision (and timm) ResNets
        elif is_vit(model):  # any ViT family, or a pipeline holding one
            raise TypeError(
                f"model of type {type(model).__name__} is a ViT, not a feature backbone: explain it with the "
                f"attention methods (vit_gradcam for Grad-CAM); supported here: {SUPPORTED_CNNS}"
            )
        else:
            raise TypeError(f"model of type {type(model).__name__} is not a supported CNN; supported: {SUPPORTED_CNNS}")
        self._setup()

    def _setup(self) -> None:
        self.stages: list[nn.Module] = [self.model.get_submodule(n) for n in self.stage_names]
        self.layout = "NHWC" if str(getattr(self.model, "output_fmt", "NCHW")) == "NHWC" else "NCHW"
        self._first_conv = next(_convs(self.model), None)
        if self._first_conv is None:
            raise TypeError(f"model of type {type(self.model).__name__} has no nn.Conv2d; supported: {SUPPORTED_CNNS}")

    def rebuild(self, model: nn.Module) -> CNNAdapter:
        """The adapter of ``model`` (a private view of :attr:`model`), without re-validation."""
        new = object.__new__(type(self))
        new.model, new._info, new.stage_names = unwrap_compiled(model), self._info, self.stage_names
        new._setup()
        return new

    # ------------------------------------------------------------------ geometry
    @property
    def num_classes(self) -> int:
        """Classifier outputs (torchvision: ``fc.out_features``); 0 without a classifier."""
        n = getattr(self.model, "num_classes", None)
        if n is None and isinstance(getattr(self.model, "fc", None), nn.Linear):
            n = self.model.fc.out_features  # type: ignore[union-attr]
        return int(n or 0)

    @property
    def in_chans(self) -> int:
        assert self._first_conv is not None
        return int(self._first_conv.in_channels)

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the stem convolution's weights, which the images must have."""
        assert self._first_conv is not None
        return self._first_conv.weight.dtype

    @property
    def feature_layer(self) -> nn.Module:
        """The last stage: the features Grad-CAM, IIA and EEA read by default."""
        return self.stages[-1]

    @property
    def hierarchical(self) -> bool:
        """Whether the backbone computes attention (Swin, PVT-v2): a hierarchical transformer."""
        return _has_attention(self.model)

    @property
    def min_size(self) -> int:
        """The smallest input side the model takes: its total stride (32 when unknown)."""
        info = getattr(self.model, "feature_info", None)
        try:
            return int(info[-1]["reduction"])  # type: ignore[index]
        except (TypeError, KeyError, IndexError):
            return 32

    def stage_index(self, layer: int | str | nn.Module) -> int:
        """The index in :attr:`stages` of a stage given as an index, dotted name or module.

        Raises
        ------
        ValueError
            Naming the stages when ``layer`` is none of them.
        """
        n = len(self.stages)
        if isinstance(layer, int) and not isinstance(layer, bool):
            if -n <= layer < n:
                return layer % n
        elif isinstance(layer, str) and layer in self.stage_names:
            return self.stage_names.index(layer)
        elif isinstance(layer, nn.Module):
            for i, s in enumerate(self.stages):
                if s is layer:
                    return i
        raise ValueError(
            f"feature_layer must be an int in [{-n}, {n}) or one of the stages {self.stage_names}, got {layer!r}"
        )

    def stage_channels(self, index: int) -> int:
        """Channels of stage ``index``'s feature map."""
        if self._info is not None:
            return int(self._info[index][1]["num_chs"])
        norms = [m for m in self.stages[index].modules() if isinstance(m, nn.BatchNorm2d)]
        if norms:
            return int(norms[-1].num_features)
        return int([m for m in self.stages[index].modules() if isinstance(m, nn.Conv2d)][-1].out_channels)

    # ---------------------------------------------------------------- layout
    def layout_of(self, module: nn.Module) -> str:
        """The layout of ``module``'s 4-D output: torch's convolutions, batch norms and pools
        give ``"NCHW"`` in any model (Swin's patch projection); other modules the model's."""
        return "NCHW" if isinstance(module, _NCHW_MODULES) else self.layout

    def to_nchw(self, features: Tensor, layout: str | None = None) -> Tensor:
        """A 4-D feature map of the model (in ``layout``, default :attr:`layout`) as
        ``(B, C, h, w)`` (a view of an NHWC map)."""
        nhwc = (layout or self.layout) == "NHWC"
        return features.permute(0, 3, 1, 2) if nhwc and features.dim() == 4 else features

    def from_nchw(self, features: Tensor) -> Tensor:
        """Inverse of :meth:`to_nchw`: a ``(B, C, h, w)`` map in the model's layout."""
        return features.permute(0, 2, 3, 1) if self.layout == "NHWC" and features.dim() == 4 else features

    # ------------------------------------------------------- explainer backbone
    def truncate(self, index: int) -> StageReader:
        """Cut :attr:`model` *in place* after stage ``index`` (call it on a copy: EEA's explainer
        backbone); the returned reader gives that stage's ``(B, C, h, w)`` features.

        timm models keep what their own ``forward_intermediates`` runs up to the stage; other
        models keep their modules (later stages and the classifier become identities) and the
        stage's output is read by a forward hook.
        """
        m: Any = self.model
        if self._info is not None and hasattr(m, "forward_intermediates") and hasattr(m, "prune_intermediate_layers"):
            k = self._info[index][0]
            m.prune_intermediate_layers([k], prune_norm=True, prune_head=True)
            return StageReader(self.stage_names[index], k, self.layout)
        for name in self.stage_names[index + 1 :]:
            m.set_submodule(name, nn.Identity())
        if isinstance(getattr(m, "fc", None), nn.Module):
            m.fc = nn.Identity()
        return StageReader(self.stage_names[index], None, self.layout)

    # ---------------------------------------------------------------- validation
    def check_input(self, x: object, name: str = "inputs") -> Tensor:
        """Validate an image batch (channels, dtype, size, finiteness); return it unchanged."""
        x = check_image_batch(x, self.in_chans, name)
        check_dtype(x, self.dtype, name)
        size = (int(x.shape[2]), int(x.shape[3]))
        pe = getattr(self.model, "patch_embed", None)
        fixed = getattr(pe, "img_size", None) if getattr(pe, "strict_img_size", False) else None
        if fixed is not None and size != tuple(fixed):
            raise ValueError(f"{name} spatial size {size} does not match the model's img_size {tuple(fixed)}")
        least = self.min_size
        if size[0] < least or size[1] < least:
            raise ValueError(f"{name} spatial size {size} is below the model's minimum of {least}x{least}")
        if not torch.isfinite(x).all():
            raise ValueError(f"{name} contains NaN or infinite values")
        return x


@dataclass(frozen=True)
class StageReader:
    """How to read stage ``stage``'s ``(B, C, h, w)`` features from a model cut after it
    (:meth:`CNNAdapter.truncate`): timm's ``forward_intermediates`` index ``info_index``, or
    (``None``) a forward hook on the stage."""

    stage: str
    info_index: int | None
    layout: str

    def __call__(self, model: nn.Module, x: Tensor) -> Tensor:
        if self.info_index is not None:
            out = model.forward_intermediates(x, indices=[self.info_index], intermediates_only=True)  # type: ignore[operator]
            return out[0]  # type: ignore[no-any-return]  # timm gives NCHW by default
        store: list[Tensor] = []
        handle = model.get_submodule(self.stage).register_forward_hook(lambda _m, _i, out: store.append(out))
        try:
            model(x)
        finally:
            handle.remove()
        return store[-1].permute(0, 3, 1, 2) if self.layout == "NHWC" else store[-1]


def _convs(model: nn.Module) -> Any:
    return (m for m in model.modules() if isinstance(m, nn.Conv2d))


def _timm_stages(model: nn.Module) -> list[tuple[int, dict[str, Any]]] | None:
    """``(feature_info index, entry)`` of each stage timm declares (stem entries dropped)."""
    info = getattr(model, "feature_info", None)
    if not isinstance(info, list) or not info or not all(isinstance(d, dict) and "module" in d for d in info):
        return None
    stages = [(i, d) for i, d in enumerate(info) if str(d["module"]).split(".")[0] not in _STEM_NAMES]
    return stages or None


def _has_attention(model: nn.Module) -> bool:
    return any("Attention" in type(m).__name__ for m in model.modules())


def backbone_refusal(model: nn.Module, method: str | None = None) -> str | None:
    """Why attention-graph method ``method`` (a class name) cannot explain ``model`` when
    ``model`` is a feature backbone: a hierarchical transformer (Swin, PVT-v2) or a CNN;
    ``None`` for any other model.

    Examples
    --------
    >>> import timm
    >>> pvt = timm.create_model("pvt_v2_b0", pretrained=False, num_classes=3)
    >>> print(backbone_refusal(pvt, "AttentionRollout"))  # doctest: +NORMALIZE_WHITESPACE
    AttentionRollout does not support PyramidVisionTransformerV2: it multiplies one token-to-token attention
    graph across blocks, and PyramidVisionTransformerV2 is a hierarchical transformer (attention from each token
    to spatially reduced keys, in down-sampling stages) with no token graph shared by its blocks; use gradcam,
    iia, ltx or pltx, which read a feature stage or mask pixels
    >>> backbone_refusal(nn.Linear(2, 2)) is None
    True
    """
    model = unwrap_compiled(model)
    if not is_cnn(model):
        return None
    name = type(model).__name__
    low = name.lower()
    if not _has_attention(model):
        what = "a CNN, whose convolutions have no attention"
    elif "swin" in low:
        what = (
            "a hierarchical transformer (windowed attention in down-sampling stages that merge patches: a "
            "token-graph rollout across windows is not defined) with no token graph shared by its blocks"
        )
    elif "pyramid" in low or "pvt" in low:
        what = (
            "a hierarchical transformer (attention from each token to spatially reduced keys, in down-sampling "
            "stages) with no token graph shared by its blocks"
        )
    else:
        what = "a hierarchical transformer (attention inside down-sampling stages) with no token graph shared by its blocks"
    needs = _METHOD_NEEDS.get(method or "", "needs one token graph shared by every block")
    return f"{method or 'attention-graph methods'} does not support {name}: it {needs}, and {name} is {what}; {_USE_INSTEAD}"


def is_cnn(model: nn.Module) -> bool:
    """True when :class:`CNNAdapter` accepts ``model``."""
    try:
        CNNAdapter(model)
    except TypeError:
        return False
    return True
