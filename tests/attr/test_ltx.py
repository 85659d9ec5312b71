"""captum_vit.attr.LTX / PLTX / EEA: values, explainer handling and bad input."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from captum_vit.attr import EEA, LTX, PLTX
from captum_vit.data.synthetic import generate
from captum_vit.explainers import LTXObjective, build_explainer, finetune_masks
from captum_vit.models import load_pretrained
from captum_vit.models.preprocess import model_normalization
from captum_vit.testing import assert_close, input_for, make_cnn, make_vit


def _trained_looking(model: torch.nn.Module) -> torch.nn.Module:
    e = build_explainer(model)
    with torch.no_grad():
        e.head[-1].weight.normal_(0, 0.5)  # a non-constant mask
    return e


def test_pltx_is_the_explainer_mask_upsampled() -> None:
    model = make_vit()
    explainer = _trained_looking(model)
    x = input_for(model, batch=2)
    attr = PLTX(model, explainer=explainer).attribute(x)
    mask = torch.sigmoid(explainer(x))
    up = torch.nn.functional.interpolate(mask[:, None], size=(32, 32), mode="bilinear", align_corners=False)
    assert_close(attr, up.expand(2, 3, 32, 32), "fp32")
    assert_close(LTX(model, explainer=explainer, finetune_steps=0).attribute(x, return_patch_map=True), mask, "fp32")


def test_ltx_equals_finetuning_on_pixel_space_images_and_leaves_models_alone() -> None:
    model = make_vit()
    explainer = _trained_looking(model)
    state = {k: v.clone() for k, v in explainer.state_dict().items()}
    model_state = {k: v.clone() for k, v in model.state_dict().items()}
    x = input_for(model, batch=2)
    got = LTX(model, explainer=explainer, finetune_steps=2, finetune_lr=1e-3).attribute(
        x, target=[1, 4], return_patch_map=True
    )
    mean, std = model_normalization(model)
    pixels = x * std.view(-1, 1, 1) + mean.view(-1, 1, 1)
    obj = LTXObjective(model, mean, std, mask_weight=LTX(model, explainer=explainer).mask_weight)
    expected = finetune_masks(explainer, obj, pixels, torch.tensor([1, 4]), steps=2, lr=1e-3)
    assert_close(got, expected, "fp32_loose")
    assert all(torch.equal(v, state[k]) for k, v in explainer.state_dict().items())
    assert all(torch.equal(v, model_state[k]) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def test_explainer_from_checkpoint_files(tmp_path: Path) -> None:
    model = make_vit()
    explainer = _trained_looking(model)
    torch.save({"model": explainer.state_dict(), "step": 3}, tmp_path / "best.pt")
    save_file({k: v.contiguous() for k, v in explainer.state_dict().items()}, str(tmp_path / "e.safetensors"))
    x = input_for(model, batch=1)
    ref = PLTX(model, explainer=explainer).attribute(x)
    for name in ("best.pt", "e.safetensors"):
        assert_close(PLTX(model, explainer=tmp_path / name).attribute(x), ref, "exact", msg=name)


def test_bad_input() -> None:
    vit, cnn = make_vit(), make_cnn()
    with pytest.raises(ValueError, match="finetune_steps"):
        LTX(vit, explainer=build_explainer(vit), finetune_steps=-1)
    with pytest.raises(ValueError, match="does not match the explainee"):
        LTX(vit, explainer=build_explainer(cnn))
    with pytest.raises(ValueError, match="does not match the explainee"):
        LTX(vit, explainer=build_explainer(make_vit(patch_size=4)))
    with pytest.raises(ValueError, match="fingerprint"):  # same architecture, other weights
        LTX(vit, explainer=build_explainer(make_vit(seed=3)))
    with pytest.raises(ValueError, match="mask_loss"):
        LTX(vit, explainer=build_explainer(vit), mask_loss="kl")
    with pytest.raises(TypeError, match="explainer"):
        LTX(vit, explainer=42)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        EEA(vit, explainer=build_explainer(vit))


def test_checkpoint_of_another_model_is_rejected(tmp_path: Path) -> None:
    vit = make_vit()
    torch.save({"model": build_explainer(make_vit(seed=5)).state_dict()}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="fingerprint"):
        LTX(vit, explainer=tmp_path / "other.pt")
    torch.save({"model": build_explainer(make_vit(kind="dist")).state_dict()}, tmp_path / "arch.pt")
    with pytest.raises(ValueError, match="architecture"):
        LTX(vit, explainer=tmp_path / "arch.pt")


def test_unknown_model_gets_an_untrained_explainer_with_a_warning() -> None:
    with pytest.warns(UserWarning, match="UNTRAINED"):
        ltx = LTX(make_cnn(), finetune_steps=0)
    assert isinstance(ltx, LTX)


@pytest.mark.parametrize("name", ["synthetic-vit", "synthetic-resnet"])
def test_shipped_model_uses_its_shipped_explainer_by_default(name: str) -> None:
    model = load_pretrained(name)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "UNTRAINED" warning
        ltx = LTX(model, finetune_steps=0)
    shipped = load_pretrained(f"{name}-pltx")
    for key, value in shipped.state_dict().items():
        assert_close(ltx.explainer.state_dict()[key], value, "exact", msg=key)
    batch = generate(8, seed=31, image_size=64)
    mean, std = model_normalization(model)
    x = (batch.images - mean.view(-1, 1, 1)) / std.view(-1, 1, 1)
    attr = ltx.attribute(x)[:, 0]
    assert_close(attr, PLTX(model, explainer=shipped).attribute(x)[:, 0], "exact")
    # a trained explainer: its mask is on average clearly higher on the objects than off them
    inside = float((attr * batch.masks).sum() / batch.masks.sum())
    outside = float((attr * (1 - batch.masks)).sum() / (1 - batch.masks).sum())
    assert inside > 2 * outside, (inside, outside)


def _reference_finetuning(
    explainer: torch.nn.Module, obj: LTXObjective, pixels: torch.Tensor, target: torch.Tensor, steps: int, lr: float
) -> torch.Tensor:
    """The specification: one image at a time, a plain copy of the explainer (fused attention)
    and PyTorch's default (per-tensor) Adam."""
    import copy

    masks = []
    for i in range(pixels.shape[0]):
        module = copy.deepcopy(explainer).eval()
        trained = [p for p in module.parameters() if p.requires_grad]
        opt = torch.optim.Adam(trained, lr=lr)
        with torch.enable_grad():
            for _ in range(steps):
                total, _, _ = obj.per_example(
                    module(obj.normalise(pixels[i : i + 1])), pixels[i : i + 1], target[i : i + 1]
                )
                opt.zero_grad()
                total.sum().backward()
                opt.step()
        with torch.no_grad():
            masks.append(module.mask(obj.normalise(pixels[i : i + 1])))
    return torch.cat(masks)


def _objective(model: torch.nn.Module) -> LTXObjective:
    mean, std = model_normalization(model)
    return LTXObjective(model, mean, std, mask_weight=8.0)


@pytest.mark.parametrize("kind", ["vit", "cnn"])
def test_batched_finetuning_equals_one_image_at_a_time_with_plain_adam(kind: str) -> None:
    """Per-image copies under vmap, transposed storage and the fused Adam change no mask."""
    model = make_vit() if kind == "vit" else make_cnn()
    explainer = _trained_looking(model) if kind == "vit" else build_explainer(model)
    obj = _objective(model)
    pixels, target = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(2)), torch.tensor([0, 3, 1])
    got = finetune_masks(explainer, obj, pixels, target, steps=4, lr=1e-2)
    expected = _reference_finetuning(explainer, obj, pixels, target, steps=4, lr=1e-2)
    assert_close(got, expected, "fp32_loose")
    assert (got - torch.sigmoid(explainer(obj.normalise(pixels)))).abs().max() > 1e-3  # the steps did something


def _assert_same_map(got: torch.Tensor, expected: torch.Tensor) -> None:
    """Not bit-exact: a group's passes run on another batch size, and the last bits of the
    batched matrix products differ with it (by 1e-7 already before any step); Adam's first
    step, ``lr * g / |g|``, turns a near-zero gradient's rounding into up to ``2 lr``. The
    tolerance of batched vs per-example results."""
    assert_close(got, expected, "fp32_loose")


@pytest.mark.parametrize("group", [1, 2])
def test_groups_of_images_give_the_one_group_masks(group: int) -> None:
    model = make_vit()
    explainer, obj = _trained_looking(model), _objective(model)
    pixels, target = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(4)), torch.tensor([0, 1, 2, 3, 4])
    whole = finetune_masks(explainer, obj, pixels, target, steps=3, lr=1e-3)
    grouped = finetune_masks(explainer, obj, pixels, target, steps=3, lr=1e-3, images_per_group=group)
    assert (whole - torch.sigmoid(explainer(obj.normalise(pixels)))).abs().max() > 1e-4  # the steps did something
    _assert_same_map(grouped, whole)


def _explainee_batches(model: torch.nn.Module, ltx: LTX, x: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    """The map and the batch size of every explainee forward pass (a hook on the user's model
    runs in each call's view too)."""
    sizes: list[int] = []
    handle = model.patch_embed.register_forward_hook(lambda _m, inp, _o: sizes.append(int(inp[0].shape[0])))
    try:
        return ltx.attribute(x, target=[0, 1, 2, 3, 4], return_patch_map=True), sizes
    finally:
        handle.remove()


def test_memory_budget_sizes_the_groups_and_does_not_change_the_map() -> None:
    from captum_vit.explainers.ltx_objective import finetune_bytes_per_image

    model = make_vit()
    explainer = _trained_looking(model)
    x = input_for(model, batch=5)
    per_image = finetune_bytes_per_image(explainer, _objective(model), x)
    trainable = sum(p.numel() * 4 for p in explainer.parameters() if p.requires_grad)
    assert 4 * trainable < per_image < 4 * trainable + 50e6  # weights, gradient, two moments, activations
    opts = {"explainer": explainer, "finetune_steps": 2, "finetune_lr": 1e-3}
    # passes: the prediction on the batch, the estimate's one image, then the groups' steps
    whole, sizes = _explainee_batches(model, LTX(model, **opts), x)  # default 2 GiB: one group here
    assert sizes[:2] == [5, 1] and set(sizes[2:]) == {5}, sizes
    grouped, sizes = _explainee_batches(model, LTX(model, memory_budget=2.5 * per_image, **opts), x)
    assert sizes[:2] == [5, 1] and set(sizes[2:]) == {2, 1} and sizes[-1] == 1, sizes  # groups of 2, 2, 1
    _assert_same_map(grouped, whole)
    alone, sizes = _explainee_batches(model, LTX(model, images_per_group=1, **opts), x)
    assert sizes[0] == 5 and set(sizes[1:]) == {1}, sizes  # no estimate needed
    _assert_same_map(alone, whole)


def test_bad_memory_options() -> None:
    vit = make_vit()
    with pytest.raises(ValueError, match="memory_budget"):
        LTX(vit, explainer=build_explainer(vit), memory_budget=0)
    with pytest.raises(ValueError, match="images_per_group"):
        LTX(vit, explainer=build_explainer(vit), images_per_group=0)
    obj, px = _objective(vit), torch.rand(1, 3, 32, 32)
    with pytest.raises(ValueError, match="images_per_group"):
        finetune_masks(build_explainer(vit), obj, px, torch.tensor([0]), steps=1, images_per_group=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="memory_budget"):
        finetune_masks(build_explainer(vit), obj, px, torch.tensor([0]), steps=1, memory_budget=-1.0)
