"""The pipeline every map-producing method shares.

A method implements one function, ``_patch_map(x, target, forward_args) -> (B, h, w)``;
this base handles captum's calling conventions (inputs first, tuple-in/tuple-out, every
target form, ``additional_forward_args``, grad re-enabled under ``no_grad`` and
``inference_mode``), input validation, the private view of the model each call explains
(:func:`captum_vit.models.view.private_view`) and the upsampling to the input's shape.
"""

from __future__ import annotations

import math
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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
from captum_vit.kernels._common import accumulation_dtype
from captum_vit.models.cnn import SUPPORTED_CNNS, CNNAdapter, backbone_refusal
from captum_vit.models.preprocess import model_logits
from captum_vit.models.view import private_view, unwrap_compiled
from captum_vit.models.vit import ViTAdapter, supported_vits, upsample_patch_map

Adapter = ViTAdapter | CNNAdapter
OutputFn = Callable[[Any], Tensor]
HALF_DTYPES = (torch.float16, torch.bfloat16)
#: Benchmarks only (``benchmarks/speed/test_bench_methods.py``): instrument the user's model
#: directly, as before the private view existed, to measure the view's overhead.
_instrument_user_model = False


def make_adapter(model: nn.Module, kinds: tuple[str, ...], method: str | None = None) -> Adapter:
    """The adapter for ``model`` (a ``torch.compile`` wrapper is unwrapped) among the supported
    ``kinds`` (``"vit"``, ``"cnn"``); ``method`` (a class name) is named when refusing a CNN
    or hierarchical transformer."""
    model = unwrap_compiled(model)
    errors = []
    for kind in kinds:
        try:
            return ViTAdapter(model) if kind == "vit" else CNNAdapter(model)
        except TypeError as e:
            errors.append(str(e))
    why = backbone_refusal(model, method) if "cnn" not in kinds else None
    if why is not None:  # a CNN, Swin, PVT: say why there is no attention graph, not just "unsupported"
        raise TypeError(why)
    if len(errors) == 1:  # the one family's own reason (it names what is supported)
        raise TypeError(errors[0])
    supported = " or ".join(supported_vits() if k == "vit" else SUPPORTED_CNNS for k in kinds)
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
    covered: tuple[int, int] | None = None,
) -> TensorOrTupleOfTensorsGeneric:
    """What ``attribute`` returns for the ``(B, h, w)`` patch map of ``images``.

    The map (detached, in ``images``' dtype, or float32 for half-precision images: maps can
    lie far below float16's normal range, and rounding them to 3 significant digits changed
    them) as it is with ``return_patch_map``, otherwise upsampled with ``interpolate_mode`` and
    broadcast to ``images``' ``(B, C, H, W)``
    (:func:`captum_vit.models.upsample_patch_map`; ``covered`` is the padded extent of a model
    that pads its input); a 1-tuple when the inputs were one.
    Every :class:`MapAttribution` and the exported runtime's ``FastAttribution`` end here.

    Examples
    --------
    >>> x = torch.zeros(2, 3, 4, 4)
    >>> patch_map_output(torch.ones(2, 2, 2), x, is_tuple=False).shape
    torch.Size([2, 3, 4, 4])
    >>> patch_map_output(torch.ones(2, 2, 2), x, is_tuple=True, return_patch_map=True)[0].shape
    torch.Size([2, 2, 2])
    """
    dtype = accumulation_dtype(images.dtype)
    pmap = patch_map.detach().to(dtype)
    out = pmap if return_patch_map else upsample_patch_map(pmap, images.shape, interpolate_mode, covered).to(dtype)
    return _format_output(is_tuple, (out,))  # type: ignore[return-value]


class EmptyMapWarning(UserWarning):
    """Some images got an all-zero map. It is what the method's definition gives (a clamp or
    ReLU at zero), but it carries no information; the message names the images."""


class ConstantMapWarning(EmptyMapWarning):
    """Some images got a map of one non-zero value everywhere (e.g. uniform attention in every
    block): it ranks no patch above another; the message names the images. A subclass of
    :class:`EmptyMapWarning`, so one filter silences both."""


def warn_if_empty(cam: Tensor, method: str, why: str) -> None:
    """Warn with :class:`EmptyMapWarning` when any map of the ``(B, ...)`` batch ``cam`` is all
    zero (never silently return an empty map).

    Examples
    --------
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     warn_if_empty(torch.tensor([[0.0, 1.0], [0.0, 0.0]]), "GradCAM", "ReLU of a negative sum")
    >>> str(caught[0].message)
    'GradCAM: the map of image(s) [1] is all zero (ReLU of a negative sum)'
    """
    empty = torch.nonzero(cam.flatten(1).amax(dim=1) <= 0).flatten().tolist()
    if empty:
        # stacklevel: past _patch_map, attribute and captum's log_usage wrapper, to the caller
        warnings.warn(f"{method}: the map of image(s) {empty} is all zero ({why})", EmptyMapWarning, stacklevel=5)


def warn_if_constant(pmap: Tensor, method: str) -> None:
    """Warn with :class:`ConstantMapWarning` when a map of the ``(B, h, w)`` batch ``pmap`` has
    more than one patch, is not all zero (:func:`warn_if_empty` covers that) and holds one value
    up to rounding (16 units in the last place of its dtype).

    Examples
    --------
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     warn_if_constant(torch.tensor([[[0.5, 0.5]], [[0.0, 1.0]], [[0.0, 0.0]]]), "Rollout")
    >>> str(caught[0].message)
    'Rollout: the map of image(s) [0] is constant (one value at every patch): it ranks no patch above another'
    """
    if pmap.shape[0] == 0 or pmap[0].numel() < 2:
        return
    flat = pmap.detach().flatten(1).double()
    hi, lo = flat.amax(dim=1), flat.amin(dim=1)
    scale = torch.maximum(hi.abs(), lo.abs())
    eps = torch.finfo(pmap.dtype).eps if pmap.is_floating_point() else 0.0
    constant = torch.nonzero((scale > 0) & (hi - lo <= 16 * eps * scale)).flatten().tolist()
    if constant:
        warnings.warn(
            f"{method}: the map of image(s) {constant} is constant (one value at every patch): "
            "it ranks no patch above another",
            ConstantMapWarning, stacklevel=4,
        )  # fmt: skip


def check_finite(pmap: Tensor, method: str, dtype: torch.dtype) -> None:
    """Raise ``FloatingPointError`` naming the images whose map holds NaN or infinity (never
    return a non-finite map silently).

    Examples
    --------
    >>> check_finite(torch.ones(2, 2, 2), "IIA", torch.float32)
    >>> check_finite(torch.tensor([[[1.0, float("nan")]]]), "IIA", torch.float16)
    Traceback (most recent call last):
    ...
    FloatingPointError: IIA: the map of image(s) [0] holds NaN or infinity: the model's float16 arithmetic overflowed or lost precision on the way; explain a float32 copy of the model (model.float()) and inputs.float()
    """
    bad = torch.nonzero(~torch.isfinite(pmap.detach()).flatten(1).all(dim=1)).flatten().tolist()
    if not bad:
        return
    if dtype in HALF_DTYPES:
        why = (
            f"the model's {str(dtype).removeprefix('torch.')} arithmetic overflowed or lost precision on the way; "
            "explain a float32 copy of the model (model.float()) and inputs.float()"
        )
    else:
        why = "the model's output or gradient is not finite for these inputs, or an option (e.g. a baseline) is"
    raise FloatingPointError(f"{method}: the map of image(s) {bad} holds NaN or infinity: {why}")


def check_baseline(baseline: object, name: str = "baseline") -> float | Tensor:
    """Validate a float-or-tensor baseline option: finite (a NaN baseline would give a NaN map).

    Examples
    --------
    >>> check_baseline(0.0), check_baseline(torch.zeros(3, 1, 1)).shape
    (0.0, torch.Size([3, 1, 1]))
    >>> check_baseline(float("nan"))
    Traceback (most recent call last):
    ...
    ValueError: baseline must be finite, got nan
    """
    if isinstance(baseline, bool) or not isinstance(baseline, (int, float, Tensor)):
        raise TypeError(f"{name} must be a float or a tensor, got {type(baseline).__name__}")
    if isinstance(baseline, Tensor):
        if not torch.isfinite(baseline).all():
            raise ValueError(f"{name} must be finite, got a tensor with NaN or infinite values")
        return baseline
    if not math.isfinite(baseline):
        raise ValueError(f"{name} must be finite, got {baseline}")
    return float(baseline)


def layer_path(model: nn.Module, layer: nn.Module | str) -> str:
    """The dotted name of a submodule of ``model`` given as a module or its dotted name.

    Methods keep the name and look the layer up in each call's private view of the model.

    Raises
    ------
    ValueError
        If it is not a submodule of ``model``.

    Examples
    --------
    >>> m = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
    >>> layer_path(m, m[1]), layer_path(m, "0")
    ('1', '0')
    """
    model = unwrap_compiled(model)
    if isinstance(layer, str):
        try:
            model.get_submodule(layer)
        except AttributeError:
            raise ValueError(f"layer {layer!r} is not a submodule of the model") from None
        return layer
    if isinstance(layer, nn.Module):
        for name, m in model.named_modules():
            if m is layer:
                return name
    raise ValueError("layer must be a submodule of the model (or its dotted name)")


def _usable(t: Any) -> Any:
    """A tensor created under ``torch.inference_mode()`` cannot enter an autograd graph: a
    normal copy of it (other values are returned as they are)."""
    return t.clone() if isinstance(t, Tensor) and t.is_inference() else t


class MapAttribution(GradientAttribution):
    """Base class: a captum ``GradientAttribution`` producing one spatial map per image.

    Every call explains a private view of the model (the same parameter tensors, modules of
    its own, :func:`~captum_vit.models.view.private_view`) in eval mode: hooks, the unfused
    attention and any other instrumentation go to the view, so the user's model is never
    changed, not even during the call, and any number of threads can explain with one model.
    A model in ``train()`` mode is explained with eval semantics (no dropout), its flag left
    as it is. A ``torch.compile`` wrapper is explained through the module it compiled (same
    weights, same function). Gradient methods work under ``torch.inference_mode()``.

    Parameters
    ----------
    model : nn.Module
        The explainee. Never modified: no mode change, no flag, no parameter or
        ``requires_grad`` change, no hook, not even during a call.
    interpolate_mode : str
        How the patch map is upsampled to the input (``"bilinear"`` as the papers, or
        ``"nearest"``).
    output_fn : callable, optional
        Maps the model's output to the scores explained, ``(B, K)`` (``target`` indexes
        ``K``) or one scalar per image ``(B,)`` (then ``target`` is ``None`` or 0). Needed for a
        model without a classifier (``num_classes=0``, an embedding model), whose output is
        not a class score; by default the output is the logits (the mean of a distilled
        model's two heads).
    """

    model_kinds: ClassVar[tuple[str, ...]] = ("vit",)
    #: Default interpolation of the patch map.
    default_interpolate_mode: ClassVar[str] = "bilinear"
    #: Explain a half-precision model on a float32 view (float32 copies of its weights, for
    #: the call only): for methods whose result is unstable under half-precision arithmetic.
    float32_view: ClassVar[bool] = False
    #: The method warns about all-zero maps itself (with its own reason); otherwise
    #: ``attribute`` warns for any image whose map is zero everywhere.
    warns_empty: ClassVar[bool] = False

    @property
    def runs_explainee(self) -> bool:
        """Whether ``attribute`` runs the explained model (an amortised explainer such as
        pLTX explains in one pass of its own network and never calls it)."""
        return True

    def __init__(
        self, model: nn.Module, interpolate_mode: str | None = None, output_fn: OutputFn | None = None
    ) -> None:
        self._adapter = make_adapter(model, self.model_kinds, type(self).__name__)
        GradientAttribution.__init__(self, model)
        self.model = model
        mode = interpolate_mode or self.default_interpolate_mode
        if mode not in ("bilinear", "nearest", "bicubic"):
            raise ValueError(f"interpolate_mode must be 'bilinear', 'nearest' or 'bicubic', got {mode!r}")
        self.interpolate_mode = mode
        if output_fn is not None and not callable(output_fn):
            raise TypeError(f"output_fn must be callable (model output -> scores), got {type(output_fn).__name__}")
        self.output_fn = output_fn
        self._call = threading.local()

    def __getstate__(self) -> dict[str, Any]:
        # per-thread call state is not part of the method (and a thread-local cannot be copied)
        return {k: v for k, v in self.__dict__.items() if k != "_call"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._call = threading.local()

    @property
    def adapter(self) -> Adapter:
        """The model's adapter; inside ``attribute``, the adapter of this call's private view
        (each thread sees its own)."""
        current: Adapter | None = getattr(self._call, "adapter", None)
        return current if current is not None else self._adapter

    # -- subclasses implement this ------------------------------------------------
    def _patch_map(self, x: Tensor, target: Tensor | None, forward_args: tuple[Any, ...]) -> Tensor:
        """Return the ``(B, h, w)`` map for images ``x``; ``target`` is ``None`` (explain the
        predicted class) or a ``(B,)`` long tensor."""
        raise NotImplementedError

    # -- helpers for subclasses ---------------------------------------------------
    def _scores(self, output: Any) -> Tensor:
        """The ``(B, K)`` scores explained, from a model output (see ``output_fn``)."""
        if self.output_fn is None:
            return model_logits(output)
        scores = self.output_fn(output)
        if not isinstance(scores, Tensor) or scores.dim() not in (1, 2):
            got = tuple(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__
            raise ValueError(f"output_fn must return (batch,) or (batch, scores) tensor, got {got}")
        return scores[:, None] if scores.dim() == 1 else scores

    def _forward(self, x: Tensor, forward_args: tuple[Any, ...]) -> Tensor:
        """The scores of the model this call explains (the private view inside ``attribute``)."""
        return self._scores(self.adapter.model(x, *forward_args))

    @staticmethod
    def _target_score(logits: Tensor, target: Tensor | None) -> tuple[Tensor, Tensor]:
        """The summed target logits (for one backward over the batch) and the resolved targets."""
        idx = resolve_targets(target, logits)
        return logits.gather(1, idx[:, None]).sum(), idx

    @contextmanager
    def _explaining(self) -> Iterator[Adapter]:
        """Build this call's private eval-mode view of the model and make :attr:`adapter`
        refer to it (in this thread) until the call ends; gradients are enabled and inference
        mode is off inside. Re-entrant (a public helper called by ``attribute`` reuses it)."""
        current: Adapter | None = getattr(self._call, "adapter", None)
        if current is not None:
            yield current
            return
        if _instrument_user_model or not self.runs_explainee:  # pLTX never runs the model
            adapter = self._adapter
        else:
            half = self.float32_view and self._adapter.dtype in HALF_DTYPES
            view = private_view(self._adapter.model, torch.float32 if half else None, training=False)
            adapter = self._adapter.rebuild(view)
        self._call.adapter = adapter
        try:
            with torch.inference_mode(False), torch.enable_grad():
                yield adapter
        except RuntimeError as e:
            # checked here rather than by scanning the parameters on every call
            if "Inference tensors" not in str(e):
                raise
            raise RuntimeError(
                f"{type(self).__name__} differentiates through the model, but its parameters are inference "
                "tensors (the model was created or loaded under torch.inference_mode()); load it outside "
                "inference mode (inputs made under inference mode are fine)"
            ) from e
        finally:
            self._call.adapter = None

    def _check_scores(self) -> int:
        """The number of classes to check targets against (0: checked on the scores).

        Raises
        ------
        ValueError
            For a model without a classifier and no ``output_fn``.
        """
        if self.output_fn is not None or (isinstance(self._adapter, ViTAdapter) and self._adapter.inner):
            # scores of the user's function, or of a pipeline around the ViT (a head of its
            # own may follow the ViT's): counted when the model runs
            return 0
        n = self._adapter.num_classes
        if n == 0 and self.runs_explainee:
            raise ValueError(
                f"model {type(self._adapter.model).__name__} has no classifier (num_classes=0): its output is an "
                "embedding, not class scores; pass output_fn=... mapping the model output to (batch, scores) or "
                "one scalar per image, or create the model with num_classes > 0"
            )
        return n

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
            Images ``(B, C, H, W)`` as the model takes them (normalised), in the dtype of the
            model's parameters.
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
            ``(B, h, w)`` with ``return_patch_map=True``; same tuple-ness as ``inputs``; in
            the inputs' dtype, float32 for half-precision inputs.

        Raises
        ------
        TypeError, ValueError
            For unsupported inputs (including a dtype other than the model's) or targets, a
            model without a classifier and no ``output_fn`` (the model is left untouched).
        RuntimeError
            For a gradient method on a model whose parameters were made under
            ``torch.inference_mode()``.
        FloatingPointError
            When a map holds NaN or infinity (e.g. half-precision overflow), naming the images.

        Warns
        -----
        EmptyMapWarning, ConstantMapWarning
            Naming the images whose map is all zero or one value everywhere.
        """
        is_tuple, images = unpack_single_input(inputs)
        x = self._adapter.check_input(images, "inputs")
        idx = format_targets(target, x.shape[0], self._check_scores())
        fargs: tuple[Any, ...] = _format_additional_forward_args(additional_forward_args) or ()
        with self._explaining():
            fargs = tuple(_usable(a) for a in fargs)
            # a float32 view of a half-precision model (``float32_view``) takes float32 images
            pmap = self._patch_map(_usable(x).detach().to(self.adapter.dtype), _usable(idx), fargs)
        check_finite(pmap, type(self).__name__, self._adapter.dtype)
        if not self.warns_empty:  # methods that clamp warn with their own reason
            warn_if_empty(
                pmap.detach().abs(), type(self).__name__,
                "every value is zero: nothing the method reads depends on the explained score, e.g. a zero classifier head",
            )  # fmt: skip
        warn_if_constant(pmap, type(self).__name__)
        covered = self._adapter.covered_size((x.shape[-2], x.shape[-1])) if isinstance(self._adapter, ViTAdapter) else None
        return patch_map_output(pmap, x, is_tuple, return_patch_map, self.interpolate_mode, covered)

    def attribute_future(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} has no attribute_future")
