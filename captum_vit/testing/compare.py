"""One tolerance table and one verbose tensor comparison for every test of the project."""

from __future__ import annotations

import torch
from torch import Tensor

#: ``(rtol, atol)`` per kind of comparison.
TOL: dict[str, tuple[float, float]] = {
    "exact": (0.0, 0.0),
    "fp32": (1e-5, 1e-6),
    "fp32_loose": (1e-4, 1e-5),  # batched vs per-example: a different reduction order
    "kernel": (1e-4, 1e-5),  # Triton (interpreter) vs the reference
    "kernel_fp16": (5e-3, 1e-3),  # Triton vs reference on fp16 storage (both compute in fp32): ~1 ulp
    "onnx_fp32": (1e-3, 1e-4),
    "onnx_fp16": (1e-2, 1e-2),
    "mc": (0.0, 2e-2),  # Monte Carlo estimates
}


def assert_close(actual: Tensor, expected: Tensor, kind: str = "fp32", msg: str = "") -> None:
    """``torch.testing.assert_close`` with the tolerance of ``kind`` in :data:`TOL`, in float64,
    reporting the largest difference and where it is.

    Raises
    ------
    AssertionError
        Different shapes, or values further apart than the tolerance.
    KeyError
        For a ``kind`` that is not in :data:`TOL`.

    Examples
    --------
    >>> assert_close(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 2.0 + 1e-7]))
    >>> assert_close(torch.zeros(2, 2), torch.eye(2), "exact", "identity")
    Traceback (most recent call last):
    ...
    AssertionError: identity (kind=exact, rtol=0.0, atol=0.0) max abs diff 1.000e+00 at (0, 0)...
    """
    rtol, atol = TOL[kind]
    actual, expected = torch.as_tensor(actual), torch.as_tensor(expected)
    if actual.shape != expected.shape:
        raise AssertionError(f"{msg} shape mismatch: {tuple(actual.shape)} vs {tuple(expected.shape)}")
    try:
        torch.testing.assert_close(actual.double(), expected.double(), rtol=rtol, atol=atol)
    except AssertionError as e:
        diff = (actual.double() - expected.double()).abs()
        where = tuple(int(i) for i in torch.nonzero(diff == diff.max())[0])
        raise AssertionError(
            f"{msg} (kind={kind}, rtol={rtol}, atol={atol}) max abs diff {diff.max().item():.3e} at {where}\n{e}"
        ) from None
