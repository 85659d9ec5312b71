"""LTX / pLTX (Barkan et al.) and EEA: masks from a trained explainer network."""

from __future__ import annotations

import copy
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from captum_vit.attr._base import MapAttribution, OutputFn, check_baseline
from captum_vit.attr._registry import register_method
from captum_vit.attr._targets import resolve_targets
from captum_vit.explainers.ltx_network import LTXExplainer
from captum_vit.explainers.ltx_objective import MASK_LOSSES, LTXObjective, default_mask_weight, finetune_masks
from captum_vit.explainers.registry import LTXSpec, load_ltx_explainer
from captum_vit.kernels._common import accumulation_dtype
from captum_vit.models.preprocess import model_normalization


class _Explainee(nn.Module):
    """The explainee as the LTX objective sees it: images and scores in the explainer's dtype
    (the model runs in its own), called with captum's ``additional_forward_args``."""

    def __init__(self, model: nn.Module, scores: OutputFn, dtype: torch.dtype, args: tuple[Any, ...]) -> None:
        super().__init__()
        self.model, self.scores, self.dtype, self.args = model, scores, dtype, args

    def forward(self, x: Tensor) -> Tensor:
        return self.scores(self.model(x.to(self.dtype), *self.args)).to(x.dtype)


@register_method("ltx", model_kinds=("vit", "cnn"))
class LTX(MapAttribution):
    """LTX: a pretrained explainer's mask (pLTX), sharpened by per-instance finetuning.

    The explainer sees the (normalised) input; its sigmoid patch mask, upsampled bilinearly,
    multiplies the image in pixel space (``x · std + mean``), masked-out pixels show
    ``baseline`` (black), and the explainee classifies the renormalised product. Finetuning
    runs ``finetune_steps`` Adam steps of the LTX loss (:mod:`captum_vit.explainers.ltx_objective`) on
    each image's own copy of the explainer, for groups of images at once (sized by
    ``memory_budget``; the grouping does not change any image's map).

    Parameters
    ----------
    model : nn.Module
        The explainee (timm ViT or ResNet-family CNN); never modified.
    explainer : ViTExplainer, CNNExplainer, str or Path, optional
        The pretrained explainer, a registered name (``"synthetic-vit-pltx"``) or a file
        (``pretrain-ltx``'s ``OUT/best.safetensors``, or a trainer checkpoint ``.pt``). Default:
        the explainer registered for the model's exact weights (user registry or shipped,
        :mod:`captum_vit.explainers.registry`); otherwise an untrained one (with a warning).
        Never modified (finetuning works on copies).
    finetune_steps : int
        Per-instance steps (the papers use up to 25); 0 is pLTX.
    finetune_lr : float
        Adam learning rate of the finetuning.
    mask_weight : float, optional
        λ of the loss; default :func:`~captum_vit.explainers.default_mask_weight`.
    mask_loss : str
        ``"bce"``, ``"l1"`` or ``"bce_double_sigmoid"`` (the official code's; see the module).
    baseline : float or Tensor
        Pixel value of removed pixels (0: black, as the papers).
    select_by_pos_auc : bool
        Off by default. Keep the finetuning step with the lowest positive-perturbation AUC,
        as the official code. This selects on a test metric with the explained class;
        results are not comparable with unselected methods.
    mean, std : sequence of float, optional
        The explainee's input normalisation (default ``model.pretrained_cfg``'s).
    interpolate_mode : str, optional
        Upsampling of the returned map (bilinear, as the mask the explainee saw).
    memory_budget : float
        Bytes one group of images may hold during finetuning, by the estimate of
        :func:`~captum_vit.explainers.ltx_objective.finetune_bytes_per_image` (four copies of
        the explainer's trainable weights per image plus one explainer and one explainee
        forward's activations: 550 MB for ViT-S/16, measured 560 MB). Default 2 GiB: three
        ViT-S/16 images per group, one ViT-B/16 image (at least one).
    images_per_group : int, optional
        Images finetuned together, overriding ``memory_budget``.
    output_fn : callable, optional
        See :class:`~captum_vit.attr.MapAttribution`; the loss is the cross-entropy of its
        scores, so it should return several class scores.

    The explainer and its finetuning run in float32 whatever the explainee's dtype (a private
    float32 copy of a half-precision explainer); a half-precision explainee classifies the
    masked images in its own dtype.

    Raises
    ------
    ValueError
        ``finetune_steps < 0``, a bad ``mask_loss``, ``finetune_lr``, ``memory_budget`` or
        ``images_per_group``, an explainer whose
        architecture or weights belong to another model (the message names both weight
        fingerprints).

    References
    ----------
    Barkan, Asher, Eshel, Elisha & Koenigstein, "Learning to Explain" (LTX/pLTX) and
    "Visual Explanations via Iterated Integrated Attributions"-era EEA (CNN explainees).

    Examples
    --------
    >>> import timm, torch
    >>> from captum_vit.explainers import build_explainer
    >>> m = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3, depth=2,
    ...                       img_size=32, patch_size=8, embed_dim=32, num_heads=2).eval()
    >>> ltx = LTX(m, explainer=build_explainer(m), finetune_steps=2)
    >>> ltx.attribute(torch.rand(2, 3, 32, 32), target=[0, 2]).shape
    torch.Size([2, 3, 32, 32])
    """

    model_kinds: ClassVar[tuple[str, ...]] = ("vit", "cnn")
    default_finetune_steps = 25

    def __init__(
        self,
        model: nn.Module,
        explainer: LTXSpec = None,
        finetune_steps: int | None = None,
        finetune_lr: float = 1e-4,
        mask_weight: float | None = None,
        mask_loss: str = "bce",
        baseline: float | Tensor = 0.0,
        select_by_pos_auc: bool = False,
        mean: Any = None,
        std: Any = None,
        interpolate_mode: str | None = None,
        output_fn: OutputFn | None = None,
        memory_budget: float = 2.0**31,
        images_per_group: int | None = None,
    ) -> None:
        super().__init__(model, interpolate_mode, output_fn)
        steps = self.default_finetune_steps if finetune_steps is None else finetune_steps
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 0:
            raise ValueError(f"finetune_steps must be a non-negative int, got {finetune_steps!r}")
        if not (isinstance(finetune_lr, (int, float)) and finetune_lr > 0):
            raise ValueError(f"finetune_lr must be a positive number, got {finetune_lr!r}")
        if mask_loss not in MASK_LOSSES:
            raise ValueError(f"mask_loss must be one of {MASK_LOSSES}, got {mask_loss!r}")
        if isinstance(memory_budget, bool) or not isinstance(memory_budget, (int, float)) or not memory_budget > 0:
            raise ValueError(f"memory_budget must be a positive number of bytes, got {memory_budget!r}")
        if images_per_group is not None and (
            isinstance(images_per_group, bool) or not isinstance(images_per_group, int) or images_per_group < 1
        ):
            raise ValueError(f"images_per_group must be None or a positive int, got {images_per_group!r}")
        self.memory_budget, self.images_per_group = float(memory_budget), images_per_group
        # tensors made here are differentiated through later: never inference tensors, even
        # when the method is built under torch.inference_mode()
        with torch.inference_mode(False):
            self.explainer = load_ltx_explainer(explainer, self.adapter.model)  # a compiled model's own module
            self.mean, self.std = model_normalization(self.adapter.model, mean, std)
        if self.mean.numel() not in (1, self.adapter.in_chans):
            raise ValueError(
                f"mean and std must have 1 or {self.adapter.in_chans} entries (the model's input channels), "
                f"got {self.mean.numel()}"
            )
        self.finetune_steps, self.finetune_lr, self.select_by_pos_auc = steps, float(finetune_lr), select_by_pos_auc
        self.mask_weight = default_mask_weight(self.explainer) if mask_weight is None else float(mask_weight)
        self.mask_loss, self.baseline = mask_loss, check_baseline(baseline)
        self._copies: dict[tuple[torch.device, torch.dtype], LTXExplainer] = {}

    @property
    def runs_explainee(self) -> bool:
        """pLTX (``finetune_steps=0``) explains with the explainer network alone."""
        return self.finetune_steps > 0

    def _explainer_on(self, device: torch.device, dtype: torch.dtype) -> LTXExplainer:
        """The explainer in eval mode on ``device`` in ``dtype``, a private copy when the given
        one is in training mode, elsewhere or in another dtype (the caller's explainer is never
        moved, cast or switched)."""
        e = self.explainer
        if not e.training and all(p.device == device and p.dtype == dtype for p in e.parameters()):
            return e
        if (device, dtype) not in self._copies:  # a dict write: atomic for concurrent calls
            self._copies[device, dtype] = copy.deepcopy(e).to(device=device, dtype=dtype).eval()
        return self._copies[device, dtype]

    def _patch_map(self, x: Tensor, target: Tensor | None, forward_args: tuple[Any, ...]) -> Tensor:
        explainee = _Explainee(self.adapter.model, self._scores, x.dtype, forward_args)
        objective = LTXObjective(
            explainee, self.mean.to(x.device), self.std.to(x.device), self.mask_weight, self.mask_loss, self.baseline
        )
        x32 = x.to(accumulation_dtype(x.dtype))  # float32 for a half-precision explainee
        explainer = self._explainer_on(x.device, x32.dtype)
        pixels = x32 * objective.std.view(-1, 1, 1) + objective.mean.view(-1, 1, 1)
        if self.finetune_steps == 0:
            with torch.no_grad():
                return explainer.mask(x32)
        with torch.no_grad():
            tgt = resolve_targets(target, self._forward(x, forward_args))
        return finetune_masks(
            explainer,
            objective,
            pixels,
            tgt,
            self.finetune_steps,
            self.finetune_lr,
            self.select_by_pos_auc,
            images_per_group=self.images_per_group,
            memory_budget=self.memory_budget,
        )


@register_method("pltx", model_kinds=("vit", "cnn"))
class PLTX(LTX):
    """pLTX: the pretrained explainer's mask in one forward pass (``LTX`` with
    ``finetune_steps=0``); the map does not depend on the target.

    Examples
    --------
    >>> import timm, torch
    >>> from captum_vit.explainers import build_explainer
    >>> m = timm.create_model("resnet10t", pretrained=False, num_classes=3).eval()
    >>> PLTX(m, explainer=build_explainer(m)).attribute(torch.rand(1, 3, 64, 64)).shape
    torch.Size([1, 3, 64, 64])
    """

    default_finetune_steps = 0


class EEA(LTX):
    """EEA: the LTX framework for CNN explainees (an ``LTX`` restricted to timm ResNet-family
    models, with the CNN explainer and λ = 50).

    Examples
    --------
    >>> import timm, torch
    >>> from captum_vit.explainers import build_explainer
    >>> m = timm.create_model("resnet10t", pretrained=False, num_classes=3).eval()
    >>> EEA(m, explainer=build_explainer(m), finetune_steps=1).attribute(torch.rand(1, 3, 64, 64), target=1).shape
    torch.Size([1, 3, 64, 64])
    """

    model_kinds: ClassVar[tuple[str, ...]] = ("cnn",)
