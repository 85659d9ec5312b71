"""Vision DiffMask attribution (Nalmpantis et al., CVPRW 2023, §3)."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn

from captum_vit.attr._base import OutputFn
from captum_vit.attr._registry import register_method
from captum_vit.attr._vit_common import AttentionAttribution
from captum_vit.explainers.diffmask_gates import DiffMaskGates
from captum_vit.explainers.hard_concrete import expected_keep
from captum_vit.explainers.registry import GatesSpec, load_gates


@register_method("diffmask")
class VisionDiffMask(AttentionAttribution):
    """Vision DiffMask: the expected probability that learned gates keep each patch.

    Gate networks, trained once per explainee (``captum-vit train-diffmask``), read the
    ViT's hidden states and predict hard-concrete gates deciding which patch embeddings can be
    replaced by a learned placeholder without moving the output distribution by more than a
    KL tolerance. The map is the expected keep probability at hidden state ``layer``, the
    product over states ``0..layer`` of ``P(gate != 0)``: deterministic, one forward pass of
    the ViT plus the small gate networks, no per-image optimisation.

    Not class-specific: the gates preserve the whole output distribution, so ``target`` is
    validated but does not change the map.

    Parameters
    ----------
    model : nn.Module
        A timm ViT.
    gates : DiffMaskGates, str or Path, optional
        Trained gates, a registered name (``"synthetic-vit-diffmask"``) or a gates
        ``.safetensors`` file (``train-diffmask``'s ``OUT/best.safetensors``). Default: the
        gates registered for the model's exact weights, in the user registry or shipped
        (:mod:`captum_vit.explainers.registry`).
    layer : int
        Hidden state whose cumulative keep probability is the map (default ``-1``: the last,
        i.e. gates of all states multiplied, as the paper).
    interpolate_mode : str
        Upsampling of the patch map (default ``"nearest"``, as the paper).
    output_fn : callable, optional
        See :class:`~captum_vit.attr.MapAttribution` (only the targets are checked against it:
        the map does not depend on the output).

    Gates on another device or in another dtype than the images are used through a private
    copy moved there (the given gates are never moved or cast).

    Raises
    ------
    ValueError
        If ``gates`` is omitted for a model without registered gates, the gates do not fit the
        model or were trained for other weights (the message names both fingerprints), or
        ``layer`` is out of range.

    References
    ----------
    Nalmpantis et al., "Vision DiffMask: Faithful Interpretation of Vision Transformers with
    Differentiable Patch Masking", CVPR Workshops 2023, §3.

    Examples
    --------
    >>> import timm, torch
    >>> from captum_vit.explainers import DiffMaskGates
    >>> m = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3,
    ...                       depth=2, img_size=32).eval()
    >>> method = VisionDiffMask(m, gates=DiffMaskGates.for_model(m, seed=0))
    >>> keep = method.attribute(torch.rand(2, 3, 32, 32), return_patch_map=True)
    >>> keep.shape, bool(((keep >= 0) & (keep <= 1)).all())
    (torch.Size([2, 2, 2]), True)
    """

    default_interpolate_mode = "nearest"

    def __init__(
        self,
        model: nn.Module,
        gates: GatesSpec = None,
        layer: int = -1,
        interpolate_mode: str | None = None,
        output_fn: OutputFn | None = None,
    ) -> None:
        super().__init__(model, interpolate_mode, output_fn)
        self.gates = load_gates(gates, self.adapter.model)  # a compiled model's own module
        self._copies: dict[tuple[torch.device, torch.dtype], DiffMaskGates] = {}
        k = int(self.gates.config["num_states"])
        if not isinstance(layer, int) or not -k <= layer < k:
            raise ValueError(f"layer must be an int in [{-k}, {k}) for a model with {k} hidden states, got {layer!r}")
        self.layer = layer

    def _gates_on(self, device: torch.device, dtype: torch.dtype) -> DiffMaskGates:
        if all(p.device == device and p.dtype == dtype for p in self.gates.parameters()):
            return self.gates
        if (device, dtype) not in self._copies:  # a dict write: atomic for concurrent calls
            self._copies[device, dtype] = copy.deepcopy(self.gates).to(device=device, dtype=dtype)
        return self._copies[device, dtype]

    def _patch_map(self, x: Tensor, target: Tensor | None, forward_args: tuple[Any, ...]) -> Tensor:
        with torch.no_grad():
            logits = self._gates_on(x.device, x.dtype).gate_logits(self.adapter.model, x, forward_args)
        keep = expected_keep(logits, self.layer)
        return keep.reshape(-1, *self.vit.grid_size((x.shape[-2], x.shape[-1])))
