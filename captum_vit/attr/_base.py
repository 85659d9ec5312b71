"""The pipeline every map-producing method shares.

A method implements one function, ``_patch_map(x, target, forward_args) -> (B, h, w)``;
this base handles captum's calling conventions (inputs first, tuple-in/tuple-out, every
target form, ``additional_forward_args``, grad re-enabled under ``no_grad``), input
validation and the upsampling to the input's shape.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from captum._utils.common import (
    _format_additional_forward_args,
    _format_output,
    _format_tensor_into_tuples,
    _is_tuple,
)
from captum._utils.typing import TargetType, TensorOrTupleOfTensorsGeneric
from captum.attr import GradientAttribution
from captum.log import log_usage
from torch import Tensor, nn

from captum_vit.attr._targets import format_targets, resolve_targets
from captum_vit.models.cnn import SUPPORTED_CNNS, CNNAdapter
from captum_vit.models.preprocess import model_logits
from captum_vit.models.vit import SUPPORTED_VITS, ViTAdapter, upsample_patch_map

Adapter = ViTAdapter | CNNAdapter


def make_adapter(model: nn.Module, kinds: tuple[str, ...]) -> Adapter:
    """The adapter for ``model`` among the supported ``kinds`` (``"vit"``, ``"cnn"``)."""
    errors = []
    for kind in kinds:
        try:
            return ViTAdapter(model) if kind == "vit" else CNNAdapter(model)
        except TypeError as e:
            errors.append(str(e))
    supported = " or ".join(SUPPORTED_VITS if k == "vit" else SUPPORTED_CNNS for k in kinds)
    raise TypeError(f"unsupported model {type(model).__name__}: expected {supported}")


def unpack_single_input(inputs: object) -> tuple[bool, Tensor]:
    """captum's tuple-in/tuple-out for one image tensor: ``(was_tuple, tensor)``.

    The first step of every ``attribute``; :func:`patch_map_output` is the last, and gives
    the result the tuple-ness recorded here.

    Raises
    ------
    ValueError
        If ``inputs`` is a tuple of more than one tensor.

    Examples
    --------
    >>> x = torch.zeros(1, 3, 4, 4)
    >>> unpack_single_input((x,))[0], unpack_single_input(x)[0]
    (True, False)
    """
    is_tuple = _is_tuple(inputs)  # type: ignore[arg-type]
    formatted = _format_tensor_into_tuples(inputs)  # type: ignore[arg-type]
    if len(formatted) != 1:
        raise ValueError(f"inputs must be one image tensor (or a 1-tuple), got a tuple of {len(formatted)}")
    return is_tuple, formatted[0]


def patch_map_output(
    patch_map: Tensor,
    images: Tensor,
    is_tuple: bool,
    return_patch_map: bool = False,
    interpolate_mode: str = "bilinear",
) -> TensorOrTupleOfTensorsGeneric:
    """What ``attribute`` returns for the ``(B, h, w)`` patch map of ``images``.

    The map (detached, in ``images``' dtype) as it is with ``return_patch_map``, otherwise
    upsampled with ``interpolate_mode`` and broadcast to ``images``' ``(B, C, H, W)``
    (:func:`captum_vit.models.upsample_patch_map`); a 1-tuple when the inputs were one.
    Every :class:`MapAttribution` and the exported runtime's ``FastAttribution`` end here.

    Examples
    --------
    >>> x = torch.zeros(2, 3, 4, 4)
    >>> patch_map_output(torch.ones(2, 2, 2), x, is_tuple=False).shape
    torch.Size([2, 3, 4, 4])
    >>> patch_map_output(torch.ones(2, 2, 2), x, is_tuple=True, return_patch_map=True)[0].shape
    torch.Size([2, 2, 2])
    """
    pmap = patch_map.detach().to(images.dtype)
    out = pmap if return_patch_map else upsample_patch_map(pmap, images.shape, interpolate_mode).to(images.dtype)
    return _format_output(is_tuple, (out,))  # type: ignore[return-value]


def resolve_layer(model: nn.Module, layer: nn.Module | str) -> nn.Module:
    """A submodule of ``model`` given as a module or its dotted name.

    Raises
    ------
    ValueError
        If it is not a submodule of ``model``.
    """
    if isinstance(layer, str):
        try:
            layer = model.get_submodule(layer)
        except AttributeError:
            raise ValueError(f"layer {layer!r} is not a submodule of the model") from None
    if not isinstance(layer, nn.Module) or not any(m is layer for m in model.modules()):
        raise ValueError("layer must be a submodule of the model (or its dotted name)")
    return layer


class MapAttribution(GradientAttribution):
    """Base class: a captum ``GradientAttribution`` producing one spatial map per image.

    Parameters
    ----------
    model : nn.Module
        The explainee. Never modified: no mode change, no parameter or ``requires_grad``
        change, no hook left behind.
    interpolate_mode : str
        How the patch map is upsampled to the input (``"bilinear"`` as the papers, or
        ``"nearest"``).
    """

    model_kinds: ClassVar[tuple[str, ...]] = ("vit",)
    #: Default interpolation of the patch map.
    default_interpolate_mode: ClassVar[str] = "bilinear"

    @property
    def runs_explainee(self) -> bool:
        """Whether ``attribute`` runs the explained model (an amortised explainer such as
        pLTX explains in one pass of its own network and never calls it)."""
        return True

    def __init__(self, model: nn.Module, interpolate_mode: str | None = None) -> None:
        self.adapter = make_adapter(model, self.model_kinds)
        GradientAttribution.__init__(self, model)
        self.model = model
        mode = interpolate_mode or self.default_interpolate_mode
        if mode not in ("bilinear", "nearest", "bicubic"):
            raise ValueError(f"interpolate_mode must be 'bilinear', 'nearest' or 'bicubic', got {mode!r}")
        self.interpolate_mode = mode

    # -- subclasses implement this ------------------------------------------------
    def _patch_map(self, x: Tensor, target: Tensor | None, forward_args: tuple[Any, ...]) -> Tensor:
        """Return the ``(B, h, w)`` map for images ``x``; ``target`` is ``None`` (explain the
        predicted class) or a ``(B,)`` long tensor."""
        raise NotImplementedError

    # -- helpers for subclasses ---------------------------------------------------
    def _forward(self, x: Tensor, forward_args: tuple[Any, ...]) -> Tensor:
        return model_logits(self.model(x, *forward_args))

    @staticmethod
    def _target_score(logits: Tensor, target: Tensor | None) -> tuple[Tensor, Tensor]:
        """The summed target logits (for one backward over the batch) and the resolved targets."""
        idx = resolve_targets(target, logits)
        return logits.gather(1, idx[:, None]).sum(), idx

    # -- captum entry point -------------------------------------------------------
    @log_usage()
    def attribute(  # type: ignore[override]
        self,
        inputs: TensorOrTupleOfTensorsGeneric,
        target: TargetType = None,
        additional_forward_args: Any = None,
        return_patch_map: bool = False,
    ) -> TensorOrTupleOfTensorsGeneric:
        """Attribute the model's output for ``target`` to the input pixels.

        Parameters
        ----------
        inputs : Tensor or tuple of one Tensor
            Images ``(B, C, H, W)`` as the model takes them (normalised).
        target : int, tuple, list, Tensor or None
            Any captum target form; ``None`` explains the predicted class.
        additional_forward_args : Any, optional
            Extra positional arguments passed to the model after the images.
        return_patch_map : bool
            Return the ``(B, h, w)`` patch-level map instead of the input-shaped one.

        Returns
        -------
        Tensor or tuple of one Tensor
            ``(B, C, H, W)`` (the map upsampled and broadcast over channels), or
            ``(B, h, w)`` with ``return_patch_map=True``; same tuple-ness as ``inputs``.

        Raises
        ------
        TypeError, ValueError
            For unsupported inputs or targets (the model is left untouched).
        """
        is_tuple, images = unpack_single_input(inputs)
        x = self.adapter.check_input(images, "inputs")
        idx = format_targets(target, x.shape[0], self.adapter.num_classes)
        fargs: tuple[Any, ...] = _format_additional_forward_args(additional_forward_args) or ()
        with torch.enable_grad():
            pmap = self._patch_map(x.detach(), idx, fargs)
        return patch_map_output(pmap, x, is_tuple, return_patch_map, self.interpolate_mode)

    def attribute_future(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} has no attribute_future")
