"""A small registry of attribution methods (in the spirit of timm's ``register_model``).

Tests, the demo, the leaderboard and the benchmarks iterate over it, so a newly
registered method is picked up everywhere.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from captum.attr import Attribution

T = TypeVar("T", bound=type[Attribution])


@dataclass(frozen=True)
class MethodInfo:
    name: str
    cls: type[Attribution]
    model_kinds: tuple[str, ...]  # which explainees it supports: "vit", "cnn"


_REGISTRY: dict[str, MethodInfo] = {}


def register_method(name: str, model_kinds: tuple[str, ...] = ("vit",)) -> Callable[[T], T]:
    """Class decorator registering an attribution method under ``name``."""

    def deco(cls: T) -> T:
        if name in _REGISTRY and _REGISTRY[name].cls is not cls:
            raise ValueError(f"a method named {name!r} is already registered")
        _REGISTRY[name] = MethodInfo(name, cls, tuple(model_kinds))
        return cls

    return deco


def list_methods(model_kind: str | None = None) -> list[str]:
    """Names of the registered methods, sorted; optionally only those supporting
    ``model_kind`` (``"vit"`` or ``"cnn"``).

    Examples
    --------
    >>> "rollout" in list_methods("vit")
    True
    """
    return sorted(n for n, i in _REGISTRY.items() if model_kind is None or model_kind in i.model_kinds)


def get_method(name: str) -> type[Attribution]:
    """The class registered under ``name``.

    Raises
    ------
    ValueError
        If no method of that name is registered.
    """
    try:
        return _REGISTRY[name].cls
    except KeyError:
        raise ValueError(f"unknown method {name!r}; registered: {', '.join(list_methods())}") from None


def method_info(name: str) -> MethodInfo:
    get_method(name)
    return _REGISTRY[name]
