"""Reductions that also run fast under Triton's CPU interpreter (imported only on the Triton path).

``tl.sum``, ``tl.max`` and ``tl.zeros`` are themselves ``@triton.jit`` functions of
``triton.language.standard``, decorated when ``triton`` is first imported. timm (and so any
test session) imports Triton early, before a test can set ``TRITON_INTERPRET=1``; those
functions then stay compiled-mode objects that the interpreter refuses to call. Our kernels use
the core builtins ``tl.reduce`` / ``tl.full`` instead. The interpreter runs a reduction with
numpy only when its combine function *is* Triton's own ``_sum_combine`` / ``_elementwise_max``
(any other one it calls element by element in Python, ~1000x slower), so those are passed
when this Triton version has them.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _add(a, b):
    return a + b


@triton.jit
def _larger(a, b):
    return tl.maximum(a, b)


SUM_COMBINE = getattr(tl.standard, "_sum_combine", _add)
MAX_COMBINE = getattr(tl.standard, "_elementwise_max", _larger)


@triton.jit
def reduce_sum(x, axis: tl.constexpr):
    """``tl.sum`` without calling the standard library."""
    return tl.reduce(x, axis, SUM_COMBINE)


@triton.jit
def reduce_max(x, axis: tl.constexpr):
    """``tl.max`` without calling the standard library."""
    return tl.reduce(x, axis, MAX_COMBINE)
