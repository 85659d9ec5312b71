"""The trained explainer for a model: registered ones found by fingerprint, explicit files.

``LTX(model)`` and ``VisionDiffMask(model)`` (and ``captum-vit export``) resolve their
``explainer=`` / ``gates=`` argument here:

* ``None``: the explainer registered for ``model``'s exact weights (matched by
  :func:`~captum_vit.models.fingerprint.model_fingerprint`), in the user registry or shipped
  with the package (:func:`captum_vit.models.registry.find_explainer_entry`);
* a registered name, e.g. ``"synthetic-vit-pltx"``;
* a file: ``.safetensors`` written by ``pretrain-ltx`` / ``train-diffmask`` (``OUT/best.safetensors``)
  or a registered file; for LTX also a trainer checkpoint (``.pt``, key ``"model"``);
* a module (used as it is, after the checks).

Whatever the source, an explainer whose architecture or weights fingerprint belong to another
model is refused with a ``ValueError`` naming both fingerprints.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from torch import nn

from captum_vit._io import read_safetensors, read_torch_file
from captum_vit.explainers.diffmask_gates import DiffMaskGates
from captum_vit.explainers.ltx_network import CNNExplainer, LTXExplainer, ViTExplainer, build_explainer
from captum_vit.explainers.ltx_network import explainer_for_architecture as _explainer_for_architecture
from captum_vit.models.fingerprint import model_fingerprint, read_half_fingerprints
from captum_vit.models.pretrained import load_verified_state_dict
from captum_vit.models.registry import (
    ManifestError,
    WeightsEntry,
    all_entries,
    find_entry_for_file,
    find_explainer_entry,
)

LTXSpec = ViTExplainer | CNNExplainer | str | os.PathLike[str] | None
GatesSpec = DiffMaskGates | str | os.PathLike[str] | None


def load_registered(entry: WeightsEntry) -> LTXExplainer | DiffMaskGates:
    """The explainer of a ``"pltx"`` or ``"diffmask"`` registry entry, with its verified weights,
    in eval mode on the CPU.

    Raises
    ------
    ManifestError
        The entry is not an explainer, or its file was trained for another explainee than the
        entry says.

    Examples
    --------
    >>> from captum_vit.models.registry import find_entry
    >>> type(load_registered(find_entry("synthetic-vit-diffmask"))).__name__
    'DiffMaskGates'
    """
    module: LTXExplainer | DiffMaskGates
    if entry.kind == "pltx":
        kwargs = dict(entry.kwargs)
        module = _explainer_for_architecture(kwargs["architecture"], kwargs.get("mask_weight"))
    elif entry.kind == "diffmask":
        module = DiffMaskGates(**entry.kwargs, fingerprint=str(entry.explainee_fingerprint))
    else:
        raise ManifestError(f"weights entry {entry.name!r} is a {entry.kind}, not an explainer")
    module.load_state_dict(load_verified_state_dict(entry.path, entry.sha256))
    if isinstance(module, (ViTExplainer, CNNExplainer)) and module.explainee_fingerprint != entry.explainee_fingerprint:
        raise ManifestError(
            f"weights entry {entry.name!r}: its file was trained for fingerprint {module.explainee_fingerprint}, "
            f"the entry says {entry.explainee_fingerprint}"
        )
    module.vouch_half_fingerprints(entry.explainee_half_fingerprints)  # bfloat16/float16 copies of the explainee
    return module.eval()


def _by_name(name: str, kind: str) -> LTXExplainer | DiffMaskGates:
    entries = all_entries()
    entry = entries.get(name)
    if entry is None or entry.kind != kind:
        known = sorted(n for n, e in entries.items() if e.kind == kind)
        raise ValueError(f"{name!r} is neither a file nor a registered {kind} explainer (registered: {known})")
    return load_registered(entry)


class UntrainedExplainerWarning(UserWarning):
    """``LTX(model)`` found no trained explainer for the model and explains with an untrained
    one (its maps mean nothing until it is pretrained). Turn it into an error with
    ``warnings.simplefilter("error", UntrainedExplainerWarning)`` (``captum-vit evaluate`` does)."""


def load_ltx_explainer(spec: LTXSpec, model: nn.Module) -> LTXExplainer:
    """Resolve ``LTX``'s ``explainer`` argument for explainee ``model`` (see the module docstring).

    ``None`` with nothing registered for ``model`` gives a fresh, untrained explainer, with a
    warning.

    Raises
    ------
    ValueError
        An unknown name, an architecture mismatch, or weights trained for another model (the
        message names both fingerprints).
    TypeError
        Any other kind of ``spec``.
    """
    explainer: object = spec
    if spec is None:
        entry = find_explainer_entry(model_fingerprint(model), "pltx")
        if entry is None:
            warnings.warn(
                "LTX: no trained explainer for this model; using an UNTRAINED explainer (a copy of the model "
                "with a fresh head). Pretrain one with `captum-vit pretrain-ltx --register NAME` or pass explainer=...",
                UntrainedExplainerWarning,
                stacklevel=3,
            )
            return build_explainer(model)
        explainer = load_registered(entry)
    elif isinstance(spec, (str, os.PathLike)) and Path(spec).is_file():
        explainer = _ltx_from_file(Path(spec), model)
    elif isinstance(spec, str):
        explainer = _by_name(spec, "pltx")
    if not isinstance(explainer, (ViTExplainer, CNNExplainer)):
        raise TypeError(
            f"explainer must be a ViTExplainer, CNNExplainer, a registered name or a file, got {type(spec).__name__}"
        )
    explainer.check_explainee(model)
    explainer.check_weights_for(model)
    return explainer


def _ltx_from_file(path: Path, model: nn.Module) -> LTXExplainer:
    entry = find_entry_for_file(path)
    if entry is not None and entry.kind == "pltx":
        registered = load_registered(entry)
        assert isinstance(registered, (ViTExplainer, CNNExplainer))
        return registered
    explainer = build_explainer(model).float()  # the file's weights as they are, even for a half-precision model
    if path.suffix == ".safetensors":
        state, meta = read_safetensors(path, "explainer")
        weight = meta.get("mask_weight")
        explainer.mask_weight = float(weight) if weight else None
        half = read_half_fingerprints(meta, path)
    else:
        state = read_torch_file(path, "explainer", "an explainer's state dict or a pretrain-ltx checkpoint")
        if not isinstance(state, dict):
            raise ValueError(f"explainer: {path} holds a {type(state).__name__}, not an explainer's state dict")
        state = state.get("model", state)
        half = {}
    try:
        explainer.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(f"explainer checkpoint {path} does not match this model's architecture: {e}") from None
    explainer.vouch_half_fingerprints(half)  # keyed to the file's explainee fingerprint, just loaded
    return explainer


def load_gates(spec: GatesSpec, model: nn.Module) -> DiffMaskGates:
    """Resolve ``VisionDiffMask``'s ``gates`` argument for ``model`` (see the module docstring).

    Raises
    ------
    ValueError
        Nothing registered for ``model`` when ``spec`` is ``None``, an unknown name, gates of
        another width/depth, or gates trained for other weights (naming both fingerprints).
    TypeError
        Any other kind of ``spec``.
    """
    gates: object = spec
    if spec is None:
        fingerprint = model_fingerprint(model)
        entry = find_explainer_entry(fingerprint, "diffmask")
        if entry is None:
            raise ValueError(
                "VisionDiffMask needs gate networks trained for this model (weights fingerprint "
                f"{fingerprint}): pass gates= (a DiffMaskGates, a gates .safetensors file or a registered name) "
                "or train and register them with `captum-vit train-diffmask --register NAME`"
            )
        gates = load_registered(entry)
    elif isinstance(spec, (str, os.PathLike)) and Path(spec).is_file():
        entry = find_entry_for_file(spec)
        gates = load_registered(entry) if entry is not None and entry.kind == "diffmask" else DiffMaskGates.load(spec)
    elif isinstance(spec, str):
        gates = _by_name(spec, "diffmask")
    if not isinstance(gates, DiffMaskGates):
        raise TypeError(f"gates must be a DiffMaskGates, a registered name or a file, got {type(spec).__name__}")
    gates.check_model(model)
    gates.check_weights_for(model)
    return gates
