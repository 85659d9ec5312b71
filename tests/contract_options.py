"""Constructor options the registry-wide contract tests use for each method.

Most methods are built as ``Cls(model)``. A method that needs more (a trained explainer,
gate networks) adds an entry here: ``name -> callable(model) -> dict of options``.
Keep the options cheap: the contract tests run every method many times.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

CONTRACT_OPTIONS: dict[str, Callable[[nn.Module], dict[str, Any]]] = {}


def _diffmask_options(model: nn.Module) -> dict[str, Any]:
    # Untrained gates, built deterministically: the contract does not need trained ones.
    from captum_vit.training.diffmask import DiffMaskGates

    return {"gates": DiffMaskGates.for_model(model, seed=0)}


CONTRACT_OPTIONS["diffmask"] = _diffmask_options
# IIA: 3 points per level keeps the contract cheap (9 passes per example instead of 36).
CONTRACT_OPTIONS["iia"] = lambda model: {"n_steps": 2}


def _ltx_options(model: nn.Module) -> dict[str, Any]:
    # An untrained explainer built from the tiny model (no warning); 2 finetuning steps for LTX.
    from captum_vit.models.explainer import build_explainer

    return {"explainer": build_explainer(model), "finetune_steps": 2, "finetune_lr": 1e-3}


CONTRACT_OPTIONS["ltx"] = _ltx_options
CONTRACT_OPTIONS["pltx"] = lambda model: _ltx_options(model) | {"finetune_steps": 0}


def options_for(name: str, model: nn.Module) -> dict[str, Any]:
    fn = CONTRACT_OPTIONS.get(name)
    return fn(model) if fn is not None else {}
