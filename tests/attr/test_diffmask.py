"""VisionDiffMask: the map is the cumulative expected keep probability of the gates."""

from __future__ import annotations

import math

import pytest
import torch

from captum_vit.attr import VisionDiffMask
from captum_vit.explainers import DiffMaskGates
from captum_vit.models.hooks import record_hidden_states
from captum_vit.testing import assert_close, input_for, make_vit


def reference_map(model: torch.nn.Module, gates: DiffMaskGates, x: torch.Tensor, layer: int) -> torch.Tensor:
    """Straightforward per-example loop: P(gate != 0) = sigmoid(logit - T*logit(u0)) per
    state, multiplied over states 0..layer, laid out on the patch grid."""
    p, grid = model.num_prefix_tokens, model.patch_embed.dynamic_feat_size(x.shape[-2:])  # type: ignore[operator]
    shift = 0.2 * math.log((1 / 6) / (5 / 6))
    maps = []
    for i in range(x.shape[0]):
        with torch.no_grad(), record_hidden_states(model) as hs:
            model(x[i : i + 1])
            states = [hs.states[0]] + [s[:, p:] for s in hs.states[1:]]  # type: ignore[index]
            probs = [torch.sigmoid(g(states[0], h) - shift) for g, h in zip(gates.gates, states, strict=True)]
        k = layer % len(probs)
        maps.append(torch.stack(probs[: k + 1]).prod(0).reshape(1, *grid))
    return torch.cat(maps)


@pytest.mark.parametrize(
    ("kind", "layer"), [("cls", -1), ("cls", 0), ("cls", 2), ("dist", -1), ("reg", 1), ("avg", -1), ("rect", -1)]
)
def test_map_matches_reference(kind: str, layer: int) -> None:
    model = make_vit(kind)
    gates = DiffMaskGates.for_model(model, seed=1)
    x = input_for(model, batch=3)
    got = VisionDiffMask(model, gates=gates, layer=layer).attribute(x, return_patch_map=True)
    assert_close(got, reference_map(model, gates, x, layer), "fp32_loose", f"{kind} layer {layer}")


def test_cumulative_map_decreases_with_depth_and_is_class_agnostic() -> None:
    model = make_vit("cls")
    gates = DiffMaskGates.for_model(model, seed=2)
    x = input_for(model, batch=2)
    maps = [VisionDiffMask(model, gates=gates, layer=k).attribute(x, return_patch_map=True) for k in range(4)]
    for shallow, deep in zip(maps, maps[1:], strict=False):
        assert (deep <= shallow).all()
    method = VisionDiffMask(model, gates=gates)
    assert_close(method.attribute(x, target=0), method.attribute(x, target=[3, 4]), "exact")


def test_nearest_upsampling_by_default() -> None:
    model = make_vit("cls")
    method = VisionDiffMask(model, gates=DiffMaskGates.for_model(model, seed=0))
    x = input_for(model, batch=2)
    patch = method.attribute(x, return_patch_map=True)
    full = method.attribute(x)
    expected = patch.repeat_interleave(8, 1).repeat_interleave(8, 2)[:, None].expand(-1, 3, -1, -1)
    assert_close(full, expected, "exact")


def test_gates_from_file(tmp_path) -> None:
    model = make_vit("cls")
    gates = DiffMaskGates.for_model(model, seed=0)
    gates.save(tmp_path / "g.safetensors")
    x = input_for(model, batch=2)
    a = VisionDiffMask(model, gates=tmp_path / "g.safetensors").attribute(x)
    assert_close(a, VisionDiffMask(model, gates=gates).attribute(x), "exact")


def test_errors() -> None:
    model = make_vit("cls")
    with pytest.raises(ValueError, match="needs gate networks trained for this model"):
        VisionDiffMask(model)
    gates = DiffMaskGates.for_model(model, seed=0)
    with pytest.raises(ValueError, match="layer must be an int in \\[-4, 4\\)"):
        VisionDiffMask(model, gates=gates, layer=4)
    with pytest.raises(TypeError, match="gates must be"):
        VisionDiffMask(model, gates=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="neither"):
        VisionDiffMask(model, gates="no-such-gates")
    with pytest.raises(ValueError, match="embed_dim"):
        VisionDiffMask(make_vit("cls", embed_dim=64), gates=gates)
    with pytest.raises(TypeError):
        from captum_vit.testing import make_cnn

        VisionDiffMask(make_cnn(), gates=gates)


def test_shipped_gates_are_the_default_on_the_shipped_vit_and_keep_the_prediction() -> None:
    """The shipped gates are found by the shipped ViT's weight fingerprint (this fails, as it
    should, when the ViT is retrained without retraining its gates), and masking the held-out
    images with their expected keep probability moves the output distribution by about ε."""
    from captum_vit.data.splits import HELD_OUT_SEED
    from captum_vit.data.synthetic import generate
    from captum_vit.explainers import kl_divergence
    from captum_vit.models.preprocess import normalize_for
    from captum_vit.models.pretrained import load_pretrained

    model = load_pretrained("synthetic-vit")
    x = normalize_for(model, generate(32, seed=HELD_OUT_SEED).images)
    keep = VisionDiffMask(model).attribute(x, return_patch_map=True)
    assert_close(keep, VisionDiffMask(model, gates="synthetic-vit-diffmask").attribute(x, return_patch_map=True))
    gates = load_pretrained("synthetic-vit-diffmask")
    with torch.no_grad():
        kl = kl_divergence(model(x), gates.masked_output(model, x, keep.flatten(1))).mean()
    assert float(kl) < 2 * 0.1, f"held-out KL {float(kl):.3f} with the expected-keep mask"
    assert float(keep.mean()) < 0.98, "trained gates should drop some patches"
