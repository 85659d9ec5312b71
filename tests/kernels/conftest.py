"""Kernel tests run Triton on CUDA when there is a GPU and on Triton's CPU interpreter otherwise.

Triton reads ``TRITON_INTERPRET`` when a kernel is decorated, i.e. when a
``captum_vit.kernels._triton_*`` module is first imported (only ever from a Triton launch).
Setting it here, at conftest import, happens during collection: before any test runs, in the
main process and in every pytest-xdist worker (each worker collects the conftests itself).
It is set only without CUDA, so GPU runs use the real compiler; it only affects Triton.

Triton's own ``triton.language.standard`` helpers (``tl.sum``, ``tl.zeros``…) are decorated at
``import triton``, which timm triggers from tests/conftest.py before this file runs; our kernels
therefore use only core builtins (see captum_vit/kernels/_triton_utils.py), so the interpreter
works whichever conftest imported Triton first.
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture
def triton_device() -> torch.device:
    """The device Triton runs on here; skips when Triton is not installed."""
    pytest.importorskip("triton", reason="the triton extra is not installed")
    return DEVICE
