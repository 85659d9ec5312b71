"""Choosing between a kernel's pure-torch reference and its Triton path.

Triton is an optional dependency (the ``triton`` extra). It is imported only when a Triton
path is actually taken, and the ``@triton.jit`` kernels live in private ``_triton_*`` modules
imported at that moment: Triton reads ``TRITON_INTERPRET`` when a kernel is decorated, so
deferring the import lets a test session switch the CPU interpreter on before any kernel exists.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

import torch
from torch import Tensor

from captum_vit.kernels._common import check_impl


def triton_available() -> bool:
    """True when ``import triton`` succeeds (cheap after the first call)."""
    try:
        importlib.import_module("triton")
    except ImportError:
        return False
    return True


def use_triton(impl: str, *tensors: Tensor, differentiable: bool = False) -> bool:
    """Resolve ``impl`` for these tensors: ``True`` means take the Triton path.

    ``"auto"`` picks Triton only when every tensor is on CUDA and Triton imports;
    ``"reference"`` never does; ``"triton"`` always does (a missing Triton raises then).
    A kernel whose Triton path has no backward (``differentiable=False``) is never used for
    inputs that need a gradient: ``"auto"`` falls back to the reference and ``"triton"`` raises,
    rather than silently returning a result without a gradient.

    Examples
    --------
    >>> import torch
    >>> use_triton("auto", torch.zeros(2)), use_triton("reference", torch.zeros(2))
    (False, False)
    """
    if check_impl(impl) == "reference":
        return False
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
    if needs_grad and not differentiable:
        if impl == "triton":
            raise ValueError(
                "this kernel's Triton path is not differentiable: detach the input or use impl='reference'"
            )
        return False
    if impl == "triton":
        return True
    return all(t.is_cuda for t in tensors) and triton_available()


def load_triton_module(name: str) -> ModuleType:
    """Import ``captum_vit.kernels.<name>`` (a module of ``@triton.jit`` kernels).

    Raises
    ------
    ImportError
        When Triton is not installed, naming the extra that provides it.
    """
    if not triton_available():
        raise ImportError("impl='triton' needs Triton: pip install 'captum_vit[triton]'")
    return importlib.import_module(f"captum_vit.kernels.{name}")


def check_launchable(kernel: Any, *tensors: Tensor) -> None:
    """Raise a clear error when a compiled Triton kernel would be handed CPU tensors.

    Triton compiles for GPUs; CPU tensors only work under its interpreter, which is on when
    ``TRITON_INTERPRET=1`` was set before the kernel module was imported.
    """
    interpreted = type(kernel).__name__ == "InterpretedFunction"
    if not interpreted and not all(t.is_cuda for t in tensors):
        raise ValueError(
            "impl='triton' needs CUDA tensors (or TRITON_INTERPRET=1 set before the first Triton "
            "kernel is used, to run Triton's CPU interpreter)"
        )
    devices = {t.device for t in tensors}
    if len(devices) > 1:
        raise ValueError(f"all tensors must be on one device, got {sorted(str(d) for d in devices)}")
