"""What the registry-wide contract test needs beyond the models: each method's constructor
options, and a check that an attribution left the explained model exactly as it found it.

Most methods are built as ``Cls(model)``. A method that needs more (a trained explainer,
gate networks) adds an entry to :data:`CONTRACT_OPTIONS`: ``name -> callable(model) -> dict``.
Keep the options cheap: the contract runs every method many times.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

CONTRACT_OPTIONS: dict[str, Callable[[nn.Module], dict[str, Any]]] = {}


def _diffmask_options(model: nn.Module) -> dict[str, Any]:
    # Untrained gates, built deterministically: the contract does not need trained ones.
    from captum_vit.explainers import DiffMaskGates

    return {"gates": DiffMaskGates.for_model(model, seed=0)}


def _ltx_options(model: nn.Module) -> dict[str, Any]:
    # An untrained explainer built from the tiny model (so no warning); 2 finetuning steps.
    from captum_vit.explainers import build_explainer

    return {"explainer": build_explainer(model), "finetune_steps": 2, "finetune_lr": 1e-3}


CONTRACT_OPTIONS["diffmask"] = _diffmask_options
# IIA: 3 points per level keeps the contract cheap (9 passes per example instead of 36).
CONTRACT_OPTIONS["iia"] = lambda model: {"n_steps": 2}
CONTRACT_OPTIONS["ltx"] = _ltx_options
CONTRACT_OPTIONS["pltx"] = lambda model: _ltx_options(model) | {"finetune_steps": 0}


def options_for(name: str, model: nn.Module) -> dict[str, Any]:
    """The constructor options of the method registered as ``name`` for explaining ``model``.

    Examples
    --------
    >>> from captum_vit.testing.models import make_vit
    >>> options_for("iia", make_vit()), options_for("gae", make_vit())
    ({'n_steps': 2}, {})
    """
    fn = CONTRACT_OPTIONS.get(name)
    return fn(model) if fn is not None else {}


@dataclass
class ModelSnapshot:
    """Everything an attribution must leave unchanged on the explained model."""

    training: list[bool]
    state: dict[str, Tensor]
    requires_grad: list[bool]
    grads: list[Tensor | None]
    fused_attn: list[object]


def snapshot(model: nn.Module) -> ModelSnapshot:
    """Record ``model``'s modes, parameters and buffers, ``requires_grad`` and ``.grad``, and
    ``fused_attn`` flags, for :func:`assert_untouched`."""
    return ModelSnapshot(
        training=[m.training for m in model.modules()],
        state={k: v.detach().clone() for k, v in model.state_dict().items()},
        requires_grad=[p.requires_grad for p in model.parameters()],
        grads=[p.grad for p in model.parameters()],
        fused_attn=[getattr(m, "fused_attn", None) for m in model.modules()],
    )


def assert_untouched(model: nn.Module, before: ModelSnapshot) -> None:
    """Check that ``model`` is as :func:`snapshot` found it, with no hook left on any module.

    Raises
    ------
    AssertionError
        Naming the first thing that changed.

    Examples
    --------
    >>> from captum_vit.testing.models import make_vit
    >>> m = make_vit()
    >>> before = snapshot(m)
    >>> assert_untouched(m, before)
    >>> _ = m.train()
    >>> assert_untouched(m, before)
    Traceback (most recent call last):
    ...
    AssertionError: training flags changed
    """
    after = snapshot(model)
    if after.training != before.training:
        raise AssertionError("training flags changed")
    if after.requires_grad != before.requires_grad:
        raise AssertionError("requires_grad flags changed")
    if any(g is not None for g in after.grads):
        raise AssertionError("gradients were accumulated into the model's .grad")
    if after.fused_attn != before.fused_attn:
        raise AssertionError("fused_attn flags not restored")
    for k, v in before.state.items():
        if not torch.equal(after.state[k], v):
            raise AssertionError(f"parameter/buffer {k} changed")
    for m in model.modules():
        for attr in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks"):
            if len(getattr(m, attr)):
                raise AssertionError(f"{type(m).__name__}.{attr} not empty")
