"""Vision DiffMask attribution (Nalmpantis et al., CVPRW 2023; methods.md §6.4)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from captum_vit.attr._registry import register_method
from captum_vit.attr._vit_common import AttentionAttribution
from captum_vit.training.diffmask import DiffMaskGates, expected_keep, model_fingerprint

#: The builder the manifest names for shipped gate checkpoints.
GATES_BUILDER = "captum_vit.training.diffmask:DiffMaskGates"


def shipped_gates_for(model: nn.Module) -> str | None:
    """Name of the shipped gate checkpoint trained for exactly this model's weights, if any
    (matched by :func:`~captum_vit.training.diffmask.model_fingerprint`)."""
    from captum_vit.models.pretrained import read_manifest

    entries = {n: e for n, e in read_manifest().items() if e.get("builder") == GATES_BUILDER}
    if not entries:
        return None
    fp = model_fingerprint(model)
    return next((n for n, e in entries.items() if e.get("kwargs", {}).get("fingerprint") == fp), None)


def resolve_gates(model: nn.Module, gates: DiffMaskGates | str | Path | None) -> DiffMaskGates:
    """Turn the ``gates`` argument of :class:`VisionDiffMask` into gate networks."""
    from captum_vit.models.pretrained import list_pretrained, load_pretrained

    if isinstance(gates, DiffMaskGates):
        return gates
    if gates is None:
        name = shipped_gates_for(model)
        if name is None:
            raise ValueError(
                "VisionDiffMask needs gate networks trained for this model: pass gates= (a DiffMaskGates, "
                "a gates .safetensors file or a shipped name) or train them with `captum-vit train-diffmask`; "
                "shipped gates exist only for the shipped ViT (load_pretrained('synthetic-vit'))"
            )
        gates = name
    if isinstance(gates, str) and gates in list_pretrained():
        loaded = load_pretrained(gates)
        if not isinstance(loaded, DiffMaskGates):
            raise ValueError(f"pretrained name {gates!r} is a model, not DiffMask gates")
        return loaded
    if isinstance(gates, (str, Path)):
        if not Path(gates).is_file():
            raise ValueError(f"gates must be a DiffMaskGates, a shipped gates name or a file; {gates!r} is neither")
        return DiffMaskGates.load(gates)
    raise TypeError(f"gates must be a DiffMaskGates, a str or a Path, got {type(gates).__name__}")


@register_method("diffmask")
class VisionDiffMask(AttentionAttribution):
    """Vision DiffMask: the expected probability that learned gates keep each patch.

    Gate networks, trained once per explainee (:mod:`captum_vit.training.diffmask`), read the
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
        Trained gates, a shipped gates name (``"synthetic-vit-diffmask"``) or a gates
        ``.safetensors`` file. Default: the shipped gates of the shipped ViT (found by the
        model's weight fingerprint).
    layer : int
        Hidden state whose cumulative keep probability is the map (default ``-1``: the last,
        i.e. gates of all states multiplied, as the paper).
    interpolate_mode : str
        Upsampling of the patch map (default ``"nearest"``, as the paper).

    Raises
    ------
    ValueError
        If ``gates`` is omitted for a model without shipped gates, the gates do not fit the
        model, or ``layer`` is out of range.

    References
    ----------
    Nalmpantis et al., "Vision DiffMask: Faithful Interpretation of Vision Transformers with
    Differentiable Patch Masking", CVPR Workshops 2023, §3.

    Examples
    --------
    >>> import timm, torch
    >>> from captum_vit.training.diffmask import DiffMaskGates
    >>> m = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3,
    ...                       depth=2, img_size=32).eval()
    >>> method = VisionDiffMask(m, gates=DiffMaskGates.for_model(m, seed=0))
    >>> keep = method.attribute(torch.rand(2, 3, 32, 32), return_patch_map=True)
    >>> keep.shape, bool(((keep >= 0) & (keep <= 1)).all())
    (torch.Size([2, 2, 2]), True)
    """

    class_specific = False
    default_interpolate_mode = "nearest"

    def __init__(
        self,
        model: nn.Module,
        gates: DiffMaskGates | str | Path | None = None,
        layer: int = -1,
        interpolate_mode: str | None = None,
    ) -> None:
        super().__init__(model, interpolate_mode)
        self.gates = resolve_gates(model, gates)
        self.gates.check_model(model)
        k = int(self.gates.config["num_states"])
        if not isinstance(layer, int) or not -k <= layer < k:
            raise ValueError(f"layer must be an int in [{-k}, {k}) for a model with {k} hidden states, got {layer!r}")
        self.layer = layer

    def _patch_map(self, x: Tensor, target: Tensor | None, forward_args: tuple[Any, ...]) -> Tensor:
        p = next(self.gates.parameters())
        if p.device != x.device or p.dtype != x.dtype:
            self.gates.to(device=x.device, dtype=x.dtype)
        with torch.no_grad():
            logits = self.gates.gate_logits(self.model, x, forward_args)
        keep = expected_keep(logits, self.layer)
        return keep.reshape(-1, *self.vit.grid_size((x.shape[-2], x.shape[-1])))
