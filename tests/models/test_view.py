"""The private per-call view: same tensors, independent modules, identical function."""

from __future__ import annotations

import timm
import torch
from torch import nn

from captum_vit.models.view import private_view, unwrap_compiled


def _tiny_vit() -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3, depth=2, img_size=32).eval()


def test_view_shares_every_tensor_and_computes_the_same_function() -> None:
    model = _tiny_vit()
    view = private_view(model)
    assert view is not model
    own = dict(model.named_parameters())
    for name, p in view.named_parameters():
        assert p is own[name]
    buffers = dict(model.named_buffers())
    for name, b in view.named_buffers():
        assert b is buffers[name]
    assert all(a is not b for a, b in zip(model.modules(), view.modules(), strict=True))
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(view(x), model(x), rtol=0, atol=0)


def test_flags_hooks_and_mode_on_the_view_do_not_reach_the_model() -> None:
    model = _tiny_vit().train()
    flags = [b.attn.fused_attn for b in model.blocks]
    view = private_view(model).eval()
    for block in view.blocks:
        block.attn.fused_attn = False
    seen: list[tuple[int, ...]] = []
    view.blocks[0].attn.attn_drop.register_forward_hook(lambda _m, _i, out: seen.append(tuple(out.shape)))
    view(torch.rand(1, 3, 32, 32))
    assert seen == [(1, 3, 5, 5)]
    assert model.training and all(m.training for m in model.modules())
    assert [b.attn.fused_attn for b in model.blocks] == flags
    assert all(not m._forward_hooks for m in model.modules())
    model.eval()(torch.rand(1, 3, 32, 32))
    assert len(seen) == 1  # the model's forward does not run the view's hook


def test_user_hooks_are_kept_and_shared_submodules_stay_shared() -> None:
    shared = nn.Linear(2, 2)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    calls: list[int] = []
    shared.register_forward_hook(lambda *_: calls.append(1))
    view = private_view(model)
    assert view[0] is view[2] and view[0] is not shared
    view(torch.rand(1, 2))
    assert len(calls) == 2  # the user's hook is part of the function explained


def test_compiled_model_is_unwrapped() -> None:
    model = _tiny_vit()
    compiled = torch.compile(model)
    assert unwrap_compiled(compiled) is model
    view = private_view(compiled)
    assert type(view) is type(model)
    assert view.head.weight is model.head.weight
