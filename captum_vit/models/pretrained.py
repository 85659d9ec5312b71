"""Load registered weights offline, with a checksum check.

What is registered, and where, is :mod:`captum_vit.models.registry`: the shipped manifest
``captum_vit/weights/manifest.json`` and the user registry that ``--register NAME`` writes to.
:func:`load_pretrained` builds the module an entry describes (a plain timm classifier, an
LTX/EEA explainer network or Vision DiffMask gates) and loads its verified weights. Code that
builds its own module can reuse :func:`load_verified_state_dict`.

The shipped synthetic-benchmark classifiers are trained by ``captum-vit train-models``, their
explainers by ``captum-vit pretrain-ltx`` and ``captum-vit train-diffmask``.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import timm
import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from captum_vit.models.registry import WeightsEntry, all_entries, find_entry, sha256_file

#: Where the module of each explainer kind is built from a registry entry (imported on use:
#: the explainers stand on ``models``, not the other way round).
_EXPLAINER_LOADERS = {
    "pltx": "captum_vit.explainers.registry:load_registered",
    "diffmask": "captum_vit.explainers.registry:load_registered",
}


class ChecksumError(ValueError):
    """A weights file whose sha256 differs from the manifest's (corrupt or tampered)."""


def list_pretrained(weights_dir: str | os.PathLike[str] | None = None, kind: str | None = None) -> list[str]:
    """Names accepted by :func:`load_pretrained` (user registry and shipped), sorted.

    Parameters
    ----------
    weights_dir : str or Path, optional
        Search only this registry folder.
    kind : str, optional
        Only entries of this kind (``"classifier"``, ``"pltx"``, ``"diffmask"``).

    Examples
    --------
    >>> {"synthetic-vit", "synthetic-resnet"} <= set(list_pretrained(kind="classifier"))
    True
    """
    return [n for n, e in all_entries(weights_dir).items() if kind is None or e.kind == kind]


def load_verified_state_dict(
    path: str | os.PathLike[str], sha256: str, dtype: torch.dtype = torch.float32
) -> dict[str, Tensor]:
    """Check a safetensors file against its sha256, then load it on the CPU.

    Parameters
    ----------
    path : str or Path
        The ``.safetensors`` file.
    sha256 : str
        Expected hex digest (from the manifest).
    dtype : torch.dtype
        Floating-point tensors are cast to this type (weights may be stored in fp16).

    Returns
    -------
    dict of str to Tensor
        The state dict.

    Raises
    ------
    FileNotFoundError
        If the file is missing.
    ChecksumError
        If the file's digest differs from ``sha256``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} is missing; reinstall captum_vit or retrain the model")
    actual = sha256_file(path)
    if actual != sha256:
        raise ChecksumError(
            f"checksum mismatch for {path}: expected sha256 {sha256}, got {actual} (corrupt or tampered)"
        )
    state = load_file(str(path), device="cpu")
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}


def build_architecture(spec: WeightsEntry | Mapping[str, Any]) -> nn.Module:
    """An untrained timm classifier of a registered architecture, with its ``pretrained_cfg`` set.

    ``timm.create_model(spec["timm_name"], pretrained=False, **spec["kwargs"])`` with the
    preprocessing ``spec["pretrained_cfg"]`` as timm's ``pretrained_cfg_overlay`` (no download
    is attempted). ``spec`` is a classifier's :class:`WeightsEntry` or its
    :meth:`~WeightsEntry.architecture` mapping.
    """
    arch = spec.architecture() if isinstance(spec, WeightsEntry) else spec
    cfg = dict(arch.get("pretrained_cfg") or {})
    for key in ("input_size", "mean", "std"):
        if key in cfg:
            cfg[key] = tuple(cfg[key])
    # Clear timm's hub/url fields: these weights are ours, not the named ImageNet checkpoint.
    overlay = dict(cfg, url="", hf_hub_id=None, tag="synthetic", test_input_size=None)
    kwargs = dict(arch.get("kwargs") or {})
    return timm.create_model(str(arch["timm_name"]), pretrained=False, pretrained_cfg_overlay=overlay, **kwargs)


def load_entry(entry: WeightsEntry) -> nn.Module:
    """The module of a registry entry with its verified weights, in eval mode, float32 on the CPU."""
    if entry.kind != "classifier":
        module_name, _, fn_name = _EXPLAINER_LOADERS[entry.kind].partition(":")
        explainer: nn.Module = getattr(importlib.import_module(module_name), fn_name)(entry)
        return explainer
    state = load_verified_state_dict(entry.path, entry.sha256)
    model = build_architecture(entry)
    model.load_state_dict(state)
    return model.eval()


def load_pretrained(name: str, weights_dir: str | os.PathLike[str] | None = None) -> nn.Module:
    """Load registered weights offline (shipped, or registered by the user).

    Parameters
    ----------
    name : str
        One of :func:`list_pretrained`, e.g. ``"synthetic-vit"``, ``"synthetic-resnet"`` or an
        explainer such as ``"synthetic-vit-pltx"``.
    weights_dir : str or Path, optional
        Search only this registry folder (default: the user registry, then the package's).

    Returns
    -------
    nn.Module
        In eval mode, float32 on the CPU. A classifier is a plain timm model whose
        ``pretrained_cfg`` holds ``mean``, ``std``, ``input_size`` and ``num_classes`` as timm's;
        an explainer is a :class:`~captum_vit.explainers.ViTExplainer` /
        :class:`~captum_vit.explainers.CNNExplainer` or :class:`~captum_vit.explainers.DiffMaskGates`.

    Raises
    ------
    ValueError
        If ``name`` is unknown (the message lists the known names), or a manifest is corrupt.
    FileNotFoundError
        If the weights file is missing.
    ChecksumError
        (a ``ValueError``) if the file's sha256 differs from the manifest's.

    Examples
    --------
    >>> import torch
    >>> model = load_pretrained("synthetic-vit")
    >>> model.pretrained_cfg["input_size"], model.training
    ((3, 64, 64), False)
    >>> model(torch.rand(1, 3, 64, 64)).shape
    torch.Size([1, 5])
    """
    return load_entry(find_entry(name, weights_dir))
