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


def options_for(name: str, model: nn.Module) -> dict[str, Any]:
    fn = CONTRACT_OPTIONS.get(name)
    return fn(model) if fn is not None else {}
