"""A private, per-call view of a user's model: the same weights, modules of its own.

Explaining needs hooks on attention modules, timm's ``fused_attn`` switched off and eval
semantics; doing any of that on the user's model, even for the duration of one call, breaks
every other thread that runs the same model (a web server shares one model between its
workers). :func:`private_view` rebuilds the module tree around the *same* parameter and buffer
tensors: no weight is copied, and hooks, flags and the training mode set on the view never
reach the user's modules.

The view keeps the hooks the user registered on their own modules (they are part of the
function being explained); hooks registered on the view go to the view only.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, TypeVar

import torch
from torch import nn

M = TypeVar("M", bound=nn.Module)

#: Per-module dictionaries that hold hooks; each gets a fresh copy in the view.
_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_backward_hooks",
    "_backward_pre_hooks",
    "_state_dict_hooks",
    "_state_dict_pre_hooks",
    "_load_state_dict_pre_hooks",
    "_load_state_dict_post_hooks",
)


def unwrap_compiled(model: nn.Module) -> nn.Module:
    """The module a ``torch.compile`` wrapper runs (same weights), or ``model`` itself.

    Explanation methods instrument Python modules; a compiled graph runs none of their hooks,
    so the original module is explained instead (it computes the same function). A module
    compiled in place (``model.compile()``) is its own original: :func:`private_view` drops the
    compiled call from the view.

    Examples
    --------
    >>> lin = nn.Linear(2, 2)
    >>> unwrap_compiled(lin) is lin
    True
    """
    inner = getattr(model, "_orig_mod", None)
    return inner if isinstance(inner, nn.Module) else model


def _clone(module: nn.Module, memo: dict[int, nn.Module], training: bool | None) -> nn.Module:
    if id(module) in memo:  # a submodule shared by two parents stays shared in the view
        return memo[id(module)]
    new = object.__new__(type(module))  # no __init__: the state comes from the original
    memo[id(module)] = new
    state = module.__dict__.copy()
    # ``model.compile()`` stores a compiled *bound* call of the original module: the view
    # would run the original (and none of the view's hooks). The view runs eagerly.
    state.pop("_compiled_call_impl", None)
    if training is not None:
        state["training"] = training
    # Containers that the copy would otherwise share with the user's module: each gets its
    # own dict holding the same tensors (parameters, buffers) or the same hook callables.
    state["_parameters"] = module._parameters.copy()
    state["_buffers"] = module._buffers.copy()
    state["_non_persistent_buffers_set"] = module._non_persistent_buffers_set.copy()
    for name in _HOOK_DICTS:
        hooks = state.get(name)
        if hooks is not None:
            state[name] = hooks.copy()
    state["_modules"] = OrderedDict(
        (name, _clone(child, memo, training) if child is not None else None) for name, child in module._modules.items()
    )
    # Written past nn.Module.__setattr__, whose per-attribute checks were most of the cost.
    object.__setattr__(new, "__dict__", state)
    return new


def private_view(model: M, dtype: torch.dtype | None = None, training: bool | None = None) -> M:
    """A structural copy of ``model`` that shares every parameter and buffer tensor.

    Building it costs one shallow copy per module (no tensor is copied). Setting flags
    (``fused_attn``, ``training``), registering hooks or replacing submodules on the view
    leaves ``model`` untouched, so any number of threads can each explain through their own
    view of one shared model. Writes *into* the shared tensors (an optimiser step, BatchNorm
    running statistics in training mode) would reach the user's weights: explanation code runs
    the view in eval mode and never steps an optimiser on it.

    Never call ``.to()``, ``.float()`` or ``.half()`` on a view: ``nn.Module._apply`` assigns
    ``param.data`` of the *shared* parameters and would convert the user's model. Pass
    ``dtype`` instead.

    Parameters
    ----------
    model
        Any ``nn.Module``; a ``torch.compile`` wrapper is unwrapped first
        (:func:`unwrap_compiled`).
    dtype : torch.dtype, optional
        Give the view its own copies of the floating-point parameters and buffers whose dtype
        differs, converted to ``dtype`` (e.g. a float32 view of a half-precision model for
        relevance propagation); the user's tensors are not touched. Default: share them all.
    training : bool, optional
        The view's modules' training flag (``False``: what ``view.eval()`` gives, set while
        copying); default: each module's own.

    Returns
    -------
    nn.Module
        The view, of the same class as ``model`` (as ``model._orig_mod`` for a compiled one).

    Examples
    --------
    >>> import torch
    >>> m = nn.Sequential(nn.Linear(2, 2), nn.ReLU()).train()
    >>> v = private_view(m, training=False)
    >>> v[0].weight is m[0].weight, m.training, v.training
    (True, True, False)
    >>> _ = v[0].register_forward_hook(lambda *a: None)
    >>> len(m[0]._forward_hooks), len(v[0]._forward_hooks)
    (0, 1)
    >>> h = nn.Linear(2, 2).half()
    >>> private_view(h, dtype=torch.float32).weight.dtype, h.weight.dtype
    (torch.float32, torch.float16)
    """
    view = _clone(unwrap_compiled(model), {}, training)
    if dtype is not None:
        _convert(view, dtype)
    return view  # type: ignore[return-value]


def _convert(view: nn.Module, dtype: torch.dtype) -> None:
    """Replace the view's floating tensors by converted copies (the dicts are the view's own)."""
    done: dict[int, torch.Tensor] = {}  # a tensor shared by two modules stays shared

    def convert(t: torch.Tensor) -> torch.Tensor:
        if id(t) not in done:
            new = t.detach().to(dtype)
            done[id(t)] = nn.Parameter(new, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else new
        return done[id(t)]

    for module in view.modules():
        stores: tuple[dict[str, Any], ...] = (module._parameters, module._buffers)
        for store in stores:
            for name, t in store.items():
                if t is not None and t.is_floating_point() and t.dtype != dtype:
                    store[name] = convert(t)
