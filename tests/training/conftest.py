"""A tiny classifier registered in a temporary user registry, for the training commands."""

from __future__ import annotations

from pathlib import Path

import pytest

from captum_vit.models.registry import register_weights
from captum_vit.testing import make_vit

TINY_ARCH = {
    "timm_name": "vit_tiny_patch16_224",
    "kwargs": dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=5),
    "pretrained_cfg": {"input_size": [3, 32, 32], "mean": [0.5] * 3, "std": [0.22] * 3, "num_classes": 5},
}


@pytest.fixture
def tiny_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``CAPTUM_VIT_HOME`` set to a temporary folder whose registry holds ``"tiny"``
    (``make_vit()``, float32); subprocesses inherit it through the environment."""
    home = tmp_path / "home"
    monkeypatch.setenv("CAPTUM_VIT_HOME", str(home))
    register_weights("tiny", "classifier", make_vit().state_dict(), **TINY_ARCH)
    return tmp_path


@pytest.fixture
def tiny_other(tiny_home: Path) -> Path:
    """:func:`tiny_home`, whose registry also holds ``"tiny-other"``: the architecture of
    ``"tiny"`` with other weights (``make_vit(seed=1)``), hence another fingerprint."""
    register_weights("tiny-other", "classifier", make_vit(seed=1).state_dict(), **TINY_ARCH)
    return tiny_home
