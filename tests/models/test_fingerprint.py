"""One weights fingerprint: what it depends on and what it does not."""

from __future__ import annotations

import hashlib

import pytest
import torch
from torch import nn

from captum_vit.models.fingerprint import check_fingerprint, is_fingerprint, model_fingerprint
from captum_vit.testing import make_vit


def _by_hand(model: nn.Module) -> str:
    digest = hashlib.sha256()
    for name in sorted(model.state_dict()):
        t = model.state_dict()[name].float()
        digest.update(f"{name}:{tuple(t.shape)};".encode() + t.numpy().tobytes())
    return digest.hexdigest()


def test_matches_the_definition_and_ignores_storage_dtype_and_registration_order() -> None:
    model = make_vit()
    assert model_fingerprint(model) == _by_hand(model) and is_fingerprint(model_fingerprint(model))
    a, b = nn.Sequential(), nn.Sequential()
    lin1, lin2 = nn.Linear(2, 3), nn.Linear(3, 1)
    a.add_module("x", lin1)
    a.add_module("y", lin2)
    b.add_module("y", lin2)
    b.add_module("x", lin1)
    assert model_fingerprint(a) == model_fingerprint(b)
    halved = nn.Linear(2, 3)
    halved.load_state_dict({k: v.half().float() for k, v in lin1.state_dict().items()})
    stored_half = nn.Linear(2, 3).half()
    stored_half.load_state_dict({k: v.half() for k, v in lin1.state_dict().items()})
    assert model_fingerprint(stored_half) == model_fingerprint(halved)


def test_changes_with_any_weight_and_check_names_both() -> None:
    model = make_vit()
    before = model_fingerprint(model)
    with torch.no_grad():
        model.blocks[1].mlp.fc2.bias[0] += 1e-6
    after = model_fingerprint(model)
    assert after != before
    check_fingerprint(after, model)
    with pytest.raises(ValueError, match=f"fingerprint {before}; this model's fingerprint is {after}"):
        check_fingerprint(before, model, "LTX explainer")


def test_a_compiled_model_has_the_fingerprint_of_the_module_it_compiled() -> None:
    from captum_vit.attr import LTX, VisionDiffMask
    from captum_vit.explainers import build_explainer
    from captum_vit.explainers.diffmask_gates import DiffMaskGates
    from captum_vit.testing import input_for

    model = make_vit()
    compiled = torch.compile(model)
    assert model_fingerprint(compiled) == model_fingerprint(model)
    x = input_for(model, batch=1)
    # explainers built for the compiled model are accepted for it (and for the module itself)
    for m in (compiled, model):
        assert LTX(m, explainer=build_explainer(compiled), finetune_steps=0).attribute(x).shape == x.shape
        assert VisionDiffMask(m, gates=DiffMaskGates.for_model(compiled)).attribute(x).shape == x.shape
