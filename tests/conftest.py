"""Fixtures over the shared test support in :mod:`captum_vit.testing` (tiny offline timm models)."""

from __future__ import annotations

import os

# Triton kernels run under Triton's CPU interpreter where there is no GPU. The variable must be
# set before anything imports triton (timm does, through torch), hence here, first.
if not os.path.exists("/dev/nvidia0"):
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import torch
from torch import nn

from captum_vit.testing import VIT_KINDS, make_cnn, make_vit

# One thread per test process: the suite runs under pytest-xdist with one worker per core, and
# tiny-model ops are slower with intra-op threading on a loaded 2-core machine.
torch.set_num_threads(1)


@pytest.fixture(params=VIT_KINDS)
def vit(request: pytest.FixtureRequest) -> nn.Module:
    """Each ViT kind of :data:`captum_vit.testing.VIT_KINDS` in turn."""
    return make_vit(request.param)


@pytest.fixture
def cnn() -> nn.Module:
    return make_cnn()


@pytest.fixture(autouse=True)
def _private_registry(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test registers weights into a registry of its own, never the developer's
    ``$CAPTUM_VIT_HOME`` or cache folder (subprocesses inherit the variable)."""
    monkeypatch.setenv("CAPTUM_VIT_HOME", str(tmp_path_factory.mktemp("captum_vit_home")))
