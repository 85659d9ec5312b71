"""Trained models shipped inside the package, loaded offline with a checksum check.

``captum_vit/weights/manifest.json`` is the single source of truth: one entry per name,
holding the safetensors file, its sha256, how to build the architecture (a timm model name
and its keyword arguments, or a ``"module:function"`` builder), the preprocessing that goes
into ``model.pretrained_cfg``, the class names and how the weights were produced (command,
training time, held-out accuracy). Shipping another model is one more entry plus its file;
code that builds its own module can reuse :func:`load_verified_state_dict`.

The synthetic-benchmark models are trained by ``captum-vit train-models``
(:mod:`captum_vit.training.train_classifier`).
"""

from __future__ import annotations

import hashlib
import importlib
import json
from pathlib import Path
from typing import Any

import timm
import torch
from safetensors.torch import load_file
from torch import Tensor, nn

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
MANIFEST_NAME = "manifest.json"


class ChecksumError(ValueError):
    """A weights file whose sha256 differs from the manifest's (corrupt or tampered)."""


def sha256_file(path: str | Path) -> str:
    """Hex sha256 digest of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_manifest(weights_dir: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """The manifest's entries, ``name -> entry`` (empty when no manifest exists yet)."""
    path = Path(weights_dir or WEIGHTS_DIR) / MANIFEST_NAME
    if not path.exists():
        return {}
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    return dict(data.get("models", {}))


def write_manifest_entry(name: str, entry: dict[str, Any], weights_dir: str | Path | None = None) -> None:
    """Add or replace one entry, keeping every other entry (used by the training commands)."""
    directory = Path(weights_dir or WEIGHTS_DIR)
    directory.mkdir(parents=True, exist_ok=True)
    models = read_manifest(directory)
    models[name] = entry
    with open(directory / MANIFEST_NAME, "w", encoding="utf-8") as f:
        json.dump({"format": 1, "models": dict(sorted(models.items()))}, f, indent=2)
        f.write("\n")


def list_pretrained(weights_dir: str | Path | None = None) -> list[str]:
    """Names accepted by :func:`load_pretrained`, sorted.

    Examples
    --------
    >>> {"synthetic-vit", "synthetic-resnet"} <= set(list_pretrained())
    True
    """
    return sorted(read_manifest(weights_dir))


def pretrained_entry(name: str, weights_dir: str | Path | None = None) -> dict[str, Any]:
    """The manifest entry of ``name``.

    Raises
    ------
    ValueError
        If ``name`` is not in the manifest (the message lists the known names).
    """
    models = read_manifest(weights_dir)
    if name not in models:
        raise ValueError(f"unknown pretrained model name {name!r}; known names: {sorted(models)}")
    return models[name]


def load_verified_state_dict(path: str | Path, sha256: str, dtype: torch.dtype = torch.float32) -> dict[str, Tensor]:
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


def build_architecture(entry: dict[str, Any]) -> nn.Module:
    """An untrained model of the entry's architecture, with its ``pretrained_cfg`` set.

    ``entry["builder"]`` (``"package.module:function"``) takes precedence; otherwise
    ``timm.create_model(entry["timm_name"], pretrained=False, **entry["kwargs"])`` with the
    entry's preprocessing as timm's ``pretrained_cfg_overlay`` (no download is attempted).
    """
    kwargs = dict(entry.get("kwargs", {}))
    cfg = dict(entry.get("pretrained_cfg", {}))
    for key in ("input_size", "mean", "std"):
        if key in cfg:
            cfg[key] = tuple(cfg[key])
    if "builder" in entry:
        module_name, _, fn_name = entry["builder"].partition(":")
        model: nn.Module = getattr(importlib.import_module(module_name), fn_name)(**kwargs)
        model.pretrained_cfg = cfg  # type: ignore[assignment]
        return model
    # Clear timm's hub/url fields: these weights are ours, not the named ImageNet checkpoint.
    overlay = dict(cfg, url="", hf_hub_id=None, tag=entry.get("tag", "synthetic"), test_input_size=None)
    return timm.create_model(entry["timm_name"], pretrained=False, pretrained_cfg_overlay=overlay, **kwargs)


def load_pretrained(name: str, weights_dir: str | Path | None = None) -> nn.Module:
    """Load a shipped trained model offline.

    Parameters
    ----------
    name : str
        One of :func:`list_pretrained`, e.g. ``"synthetic-vit"`` or ``"synthetic-resnet"``.
    weights_dir : str or Path, optional
        Folder holding ``manifest.json`` and the weights (default: the package's).

    Returns
    -------
    nn.Module
        The plain timm model in eval mode, float32 on the CPU; ``model.pretrained_cfg``
        holds ``mean``, ``std``, ``input_size`` and ``num_classes`` as timm does.

    Raises
    ------
    ValueError
        If ``name`` is unknown (the message lists the known names).
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
    entry = pretrained_entry(name, weights_dir)
    directory = Path(weights_dir or WEIGHTS_DIR)
    state = load_verified_state_dict(directory / entry["file"], entry["sha256"])
    model = build_architecture(entry)
    model.load_state_dict(state)
    return model.eval()
