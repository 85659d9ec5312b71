"""Tiny offline timm models shared by the tests (created with pretrained=False)."""

from __future__ import annotations

import os

# Triton kernels run under Triton's CPU interpreter where there is no GPU. The variable must be
# set before anything imports triton (timm does, through torch), hence here, first.
if not os.path.exists("/dev/nvidia0"):
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import timm
import torch
from torch import nn

# One thread per test process: the suite runs under pytest-xdist with one worker per core, and
# tiny-model ops are slower with intra-op threading on a loaded 2-core machine.
torch.set_num_threads(1)

NUM_CLASSES = 5


def make_vit(kind: str = "cls", seed: int = 0, **overrides: object) -> nn.Module:
    """A 2-block, 32-wide timm ViT on 32x32 inputs (4x4 grid of 8x8 patches).

    kind: ``cls`` (1 prefix token), ``dist`` (distilled DeiT: 2), ``reg`` (4 registers +
    class: 5), ``avg`` (no class token, average pooling), ``rect`` (48x64, non-square,
    non-224), ``dynamic`` (``dynamic_img_size=True``).
    """
    torch.manual_seed(seed)
    base: dict[str, object] = dict(
        pretrained=False, num_classes=NUM_CLASSES, img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2
    )
    name = "vit_tiny_patch16_224"
    if kind == "dist":
        name = "deit_tiny_distilled_patch16_224"
    elif kind == "reg":
        base.update(reg_tokens=4, no_embed_class=True)
    elif kind == "avg":
        base.update(global_pool="avg", class_token=False, fc_norm=False)
    elif kind == "rect":
        base.update(img_size=(48, 64))
    elif kind == "dynamic":
        base.update(dynamic_img_size=True)
    elif kind != "cls":
        raise ValueError(kind)
    base.update(overrides)
    model = timm.create_model(name, **base)
    # timm zero-initialises nothing that matters here, but make the head non-trivial so
    # gradients are informative.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0, 0.3)
    return model.eval()


def make_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return timm.create_model("resnet10t", pretrained=False, num_classes=NUM_CLASSES).eval()


def input_for(model: nn.Module, batch: int = 3, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    pe = getattr(model, "patch_embed", None)
    size = tuple(pe.img_size) if pe is not None else (32, 32)
    return torch.randn(batch, 3, *size, generator=g)


VIT_KINDS = ["cls", "dist", "reg", "avg", "rect"]


@pytest.fixture(params=VIT_KINDS)
def vit(request: pytest.FixtureRequest) -> nn.Module:
    return make_vit(request.param)


@pytest.fixture
def cnn() -> nn.Module:
    return make_cnn()
