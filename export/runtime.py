"""Run an exported explainer with onnxruntime, behind the same captum call as in research.

``FastExplainer`` picks the fastest available execution provider (TensorRT, then CUDA, then
CPU) and returns patch maps; ``FastAttribution`` wraps it as a captum ``Attribution`` so that
``attribute(inputs, target=...)`` returns what ``LTX(model, finetune_steps=0)`` (or, for exported
DiffMask gates, ``VisionDiffMask(model)``) returns.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from captum._utils.typing import TargetType, TensorOrTupleOfTensorsGeneric
from captum.attr import Attribution
from captum.log import log_usage
from torch import Tensor

from captum_vit.attr import format_targets, patch_map_output, unpack_single_input
from captum_vit.export.onnx_export import ExplainerMetadata, check_batch, read_metadata

#: Execution providers in order of preference.
PREFERRED_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


def select_providers(available: list[str] | None = None, requested: list[str] | None = None) -> list[str]:
    """The providers to use, fastest first, among ``available`` (onnxruntime's by default).

    Examples
    --------
    >>> select_providers(["CPUExecutionProvider", "CUDAExecutionProvider"])
    ['CUDAExecutionProvider', 'CPUExecutionProvider']
    """
    if available is None:
        import onnxruntime as ort

        available = list(ort.get_available_providers())
    if requested is not None:
        missing = [p for p in requested if p not in available]
        if missing:
            raise ValueError(f"providers {missing} are not available; available: {available}")
        return list(requested)
    chosen = [p for p in PREFERRED_PROVIDERS if p in available]
    if not chosen:
        raise RuntimeError(f"onnxruntime offers none of {PREFERRED_PROVIDERS}; available: {available}")
    return chosen


class FastExplainer:
    """Load an exported explainer and compute maps in one forward pass.

    Parameters
    ----------
    path : path-like
        An ONNX file written by :func:`captum_vit.export.export_onnx`.
    providers : list of str, optional
        onnxruntime execution providers; default: TensorRT, CUDA, CPU, whichever exist.
    session_options : onnxruntime.SessionOptions, optional
        E.g. ``intra_op_num_threads`` to share the CPU with other work (default: onnxruntime's).

    Raises
    ------
    FileNotFoundError, ValueError
        Missing, invalid, or foreign ONNX file (no captum_vit metadata, or an input that
        does not match the metadata).
    """

    def __init__(
        self, path: str | os.PathLike[str], providers: list[str] | None = None, session_options: Any = None
    ) -> None:
        try:
            import onnxruntime as ort
        except ImportError as e:  # pragma: no cover
            raise ImportError("FastExplainer needs onnxruntime: pip install 'captum_vit[onnx]'") from e
        self.path = Path(path)
        self.metadata: ExplainerMetadata = read_metadata(self.path)
        self.providers = select_providers(requested=providers)
        self.session = ort.InferenceSession(str(self.path), session_options, providers=self.providers)
        inputs = self.session.get_inputs()
        if len(inputs) != 1 or list(inputs[0].shape[1:]) != list(self.metadata.input_size):
            raise ValueError(
                f"{self.path}: graph input {[(i.name, i.shape) for i in inputs]} does not match "
                f"the metadata input_size {self.metadata.input_size}"
            )
        self.input_name = inputs[0].name

    def __call__(self, images: Tensor | np.ndarray) -> Tensor:
        """Patch maps ``(B, h, w)`` for normalised images ``(B, C, H, W)`` (tensor or array)."""
        x = torch.as_tensor(images)
        if not x.is_floating_point():
            raise TypeError(f"images must be floating point, got {x.dtype}")
        check_batch(x, self.metadata, "images")
        if not torch.isfinite(x).all():
            raise ValueError("images contains NaN or infinite values")
        out = self.session.run(None, {self.input_name: x.detach().cpu().float().contiguous().numpy()})[0]
        return torch.from_numpy(out).to(x.device)


class FastAttribution(Attribution):
    """captum ``Attribution`` over an exported explainer: the same call and output as the
    PyTorch method it was exported from (``LTX(model, finetune_steps=0)`` / ``PLTX(model)``,
    or ``VisionDiffMask(model)`` for exported DiffMask gates).

    ``target`` is validated like every captum_vit method but does not change the map: neither
    the pLTX explainer (docs/methods.md §2.1) nor the DiffMask gates are conditioned on the class.
    The output is built by :func:`captum_vit.attr.patch_map_output`, the same code as every
    :class:`~captum_vit.attr.MapAttribution`'s.

    Parameters
    ----------
    explainer : FastExplainer or path-like
        A loaded explainer, or the path of an ONNX file written by
        :func:`captum_vit.export.export_onnx`.

    Examples
    --------
    >>> import tempfile, timm
    >>> from captum_vit.explainers import build_explainer
    >>> from captum_vit.export import export_onnx
    >>> from captum_vit.export.explainers import pltx_export_module
    >>> vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3,
    ...                         depth=1, img_size=32).eval()
    >>> module, meta = pltx_export_module(build_explainer(vit), vit)
    >>> report = export_onnx(module, Path(tempfile.mkdtemp()) / "e.onnx", meta)
    >>> fast = FastAttribution(report.path)
    >>> fast.attribute(torch.rand(2, 3, 32, 32), target=[0, 2]).shape
    torch.Size([2, 3, 32, 32])
    >>> fast.attribute((torch.rand(2, 3, 32, 32),), return_patch_map=True)[0].shape
    torch.Size([2, 2, 2])
    """

    #: The map comes from the exported network alone; the explained model never runs.
    runs_explainee = False

    def __init__(self, explainer: FastExplainer | str | os.PathLike[str]) -> None:
        self.explainer = explainer if isinstance(explainer, FastExplainer) else FastExplainer(explainer)
        super().__init__(self.explainer)

    @log_usage()
    def attribute(  # type: ignore[override]
        self,
        inputs: TensorOrTupleOfTensorsGeneric,
        target: TargetType = None,
        additional_forward_args: Any = None,
        return_patch_map: bool = False,
    ) -> TensorOrTupleOfTensorsGeneric:
        """The exported explainer's map for ``inputs``, as the PyTorch method returns it.

        Parameters
        ----------
        inputs : Tensor or tuple of one Tensor
            Normalised images ``(B, C, H, W)`` of the exported input size.
        target : int, tuple, list, Tensor or None
            Any captum target form; validated, and does not change the map.
        additional_forward_args : Any, optional
            Accepted for captum compatibility and ignored (the graph takes only the images).
        return_patch_map : bool
            Return the ``(B, h, w)`` patch map instead of the input-shaped one.

        Returns
        -------
        Tensor or tuple of one Tensor
            ``(B, C, H, W)``, or ``(B, h, w)`` with ``return_patch_map=True``; same
            tuple-ness as ``inputs``.

        Raises
        ------
        TypeError, ValueError
            For inputs that do not match the exported input size, or invalid targets.
        """
        is_tuple, x = unpack_single_input(inputs)
        check_batch(x, self.explainer.metadata)
        if not torch.isfinite(x).all():  # named as the caller's argument, not FastExplainer's
            raise ValueError("inputs contains NaN or infinite values")
        format_targets(target, x.shape[0], self.explainer.metadata.num_classes)
        return patch_map_output(
            self.explainer(x), x, is_tuple, return_patch_map, self.explainer.metadata.interpolate_mode
        )
