"""IIA against straightforward per-point loop references and analytic answers.

The ViT reference follows the released code's structure literally: one image at a time, an
outer pass records the attention to interpolate, and each inner pass substitutes a
precomputed constant tensor (not the on-the-fly detached attention the method uses). The
CNN reference splits the ResNet by hand at the feature stage, without hooks.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

from captum_vit.attr import IIA
from captum_vit.models.hooks import record_attention
from captum_vit.models.vit import ViTAdapter
from captum_vit.testing import assert_close, input_for, make_cnn, make_vit


def _levels(n: int) -> list[float]:
    return [k / n for k in range(n + 1)] if n > 0 else [1.0]


def _rollout_row(
    model: nn.Module, cams: list[Tensor], image_size: tuple[int, int], pool_row: Tensor | None = None
) -> Tensor:
    """Gradient rollout of per-block ``(N, N)`` maps, read at the classifier's row(s) (or at
    ``pool_row`` for average pooling): ``(h, w)``."""
    n = cams[0].shape[-1]
    joint = torch.eye(n, dtype=torch.float64)
    for c in cams:
        a = c.double() + torch.eye(n, dtype=torch.float64)
        joint = (a / a.sum(-1, keepdim=True)) @ joint
    ad = ViTAdapter(model)
    weights = ad.readout_weights(n, torch.device("cpu")).double() if pool_row is None else pool_row.double()
    return ad.patch_columns((weights @ joint)[None], image_size)[0]


def _constant(t: Tensor) -> Callable[[Tensor], Tensor]:
    """An attention override that substitutes the precomputed tensor ``t`` (a fresh leaf)."""
    return lambda _a: t.clone().requires_grad_(True)


def reference_vit(model: nn.Module, x: Tensor, target: int, steps: tuple[int, ...], blocks: tuple[int, ...],
                  baseline: Tensor | float = 0.0) -> Tensor:  # fmt: skip
    """IIA for ONE image ``(C, H, W)`` with an explicit loop over every path point."""
    n_blocks = len(model.blocks)
    blocks = tuple(sorted(b % n_blocks for b in blocks))
    sums: list[Tensor] = [torch.zeros(()) for _ in range(n_blocks)]
    average = getattr(model, "global_pool", "token") == "avg"
    pool_sum = torch.zeros(())  # average pooling: the pool's integrand <dy/dt_j, t_j>^+
    count = 0

    def inner(xa: Tensor, level: int, fixed: dict[int, Tensor]) -> None:
        nonlocal count, pool_sum
        overrides = {b: _constant(t) for b, t in fixed.items()}
        if level == len(blocks):  # innermost: one gradient pass
            with record_attention(model, override=overrides, tokens=average) as rec:
                logits = model(xa.clone().requires_grad_(True))
                atts = list(rec.attentions)
                grads = torch.autograd.grad(logits[0, target], atts + ([rec.tokens] if average else []))
            for i, (a, g) in enumerate(zip(atts, grads)):
                sums[i] = sums[i] + (g * a).clamp(min=0).mean(dim=1)[0].detach()
            if average:
                t, g = rec.tokens[0].detach(), grads[-1][0]
                p = model.num_prefix_tokens
                pool_sum = pool_sum + torch.cat([torch.zeros(p), (g[p:] * t[p:]).sum(-1).clamp(min=0)])
            count += 1
            return
        with torch.no_grad(), record_attention(model, override=overrides, detach=True) as rec:
            model(xa)
        natural = rec.attentions[blocks[level]]
        for c in _levels(steps[level + 1]):
            inner(xa, level + 1, {**fixed, blocks[level]: c * natural})

    for a in _levels(steps[0]):
        inner((baseline + a * (x - baseline))[None], 0, {})
    pool_row = pool_sum / count if average else None
    return _rollout_row(model, [s / count for s in sums], tuple(x.shape[-2:]), pool_row)


def _resnet_split(model: nn.Module, stage: int) -> tuple[nn.Module, nn.Module]:
    stages = [model.layer1, model.layer2, model.layer3, model.layer4]
    trunk = nn.Sequential(model.conv1, model.bn1, model.act1, model.maxpool, *stages[: stage + 1])
    rest = nn.Sequential(*stages[stage + 1 :])
    return trunk, rest


def reference_cnn(model: nn.Module, x: Tensor, target: int, steps: tuple[int, int], stage: int = 3,
                  released: bool = False) -> Tensor:  # fmt: skip
    """IIA on a ResNet for ONE image, looping over image points and activation points."""
    trunk, rest = _resnet_split(model, stage)
    total, count = None, 0
    for a in _levels(steps[0]):
        u = trunk((a * x)[None]).detach()
        r = u if released else u.amin(dim=(2, 3), keepdim=True)
        for c in [1.0] if released else _levels(steps[1]):
            v = (r + c * (u - r)).requires_grad_(True)
            (g,) = torch.autograd.grad(model.forward_head(rest(v))[0, target], v)
            q = (g * v.clamp(min=0) if released else g * (v - r)).sum(dim=1)[0]
            total = q if total is None else total + q
            count += 1
    assert total is not None
    return total / count


# ------------------------------------------------------------------------- ViT values
@pytest.mark.parametrize("kind", ["cls", "dist", "reg", "avg", "rect"])
def test_vit_iia2_matches_loop_reference(kind: str) -> None:
    model = make_vit(kind)
    x = input_for(model, batch=2)
    targets = [3, 1]
    got = IIA(model, n_steps=(2, 1)).attribute(x, target=targets, return_patch_map=True)
    for i, t in enumerate(targets):
        assert_close(got[i], reference_vit(model, x[i], t, (2, 1), (-1,)).float(), "fp32_loose", f"{kind} ex {i}")


def test_vit_iia3_and_baseline_match_loop_reference() -> None:
    model = make_vit("cls", depth=3)
    x = input_for(model, batch=2)
    base = torch.tensor([0.1, -0.2, 0.3])
    method = IIA(model, n_steps=(1, 2, 1), attention_layers=(-2, -1), baseline=base)
    got = method.attribute(x, target=[0, 4], return_patch_map=True)
    for i, t in enumerate([0, 4]):
        ref = reference_vit(model, x[i], t, (1, 2, 1), (-2, -1), baseline=base[:, None, None])
        assert_close(got[i], ref.float(), "fp32_loose", f"IIA3 example {i}")


def test_single_point_is_plain_gradient_rollout() -> None:
    """With no interpolation (n_steps=0) and only the input level, IIA is the rollout of
    ``mean_heads((dy/dA * A)^+)`` at the real input: one plain gradient x activation pass."""
    model = make_vit("cls")
    x = input_for(model, batch=2)
    got = IIA(model, n_steps=0, attention_layers=()).attribute(x, target=[2, 0], return_patch_map=True)
    for i, t in enumerate([2, 0]):
        with record_attention(model) as rec:
            logits = model(x[i : i + 1].clone().requires_grad_(True))
            atts = list(rec.attentions)
            grads = torch.autograd.grad(logits[0, t], atts)
        cams = [(g * a).clamp(min=0).mean(dim=1)[0].detach() for a, g in zip(atts, grads)]
        assert_close(got[i], _rollout_row(model, cams, (32, 32)).float(), "fp32_loose")


class _Zero(nn.Module):
    def forward(self, t: Tensor) -> Tensor:
        return torch.zeros_like(t)


@pytest.mark.parametrize("n_attn", [1, 4])
def test_model_linear_in_attention(n_attn: int) -> None:
    """One block, no MLP output, no final norm: the logit is affine in the attention, so
    ``dy/dA`` does not depend on the scale ``c`` and the attention integral is
    ``mean(c) * (dy/dA * A)^+ = 0.5 * (dy/dA * A)^+`` for any number of steps."""
    model = make_vit("cls", depth=1)
    model.blocks[0].mlp = _Zero()
    model.norm = nn.Identity()
    x = input_for(model, batch=2)
    got = IIA(model, n_steps=(0, n_attn)).attribute(x, target=[1, 2], return_patch_map=True)
    for i, t in enumerate([1, 2]):
        with record_attention(model) as rec:
            logits = model(x[i : i + 1])
            (g,) = torch.autograd.grad(logits[0, t], rec.attentions[0])
        cam = (g * rec.attentions[0]).clamp(min=0).mean(dim=1)[0].detach()
        assert_close(got[i], _rollout_row(model, [0.5 * cam], (32, 32)).float(), "fp32_loose")


# ------------------------------------------------------------------------- CNN values
def test_cnn_paper_matches_loop_reference_and_analytic() -> None:
    model = make_cnn()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    got = IIA(model, n_steps=(1, 2)).attribute(x, target=[4, 0], return_patch_map=True)
    for i, t in enumerate([4, 0]):
        assert_close(got[i], reference_cnn(model, x[i], t, (1, 2)), "fp32_loose", f"example {i}")
    # Analytic: the head after layer4 is average pooling + fc, so dy/dv = W_c / (h w) and
    # the activation integral is mean(c) = 0.5 times W_c . (u - r) / (h w).
    single = IIA(model, n_steps=(0, 3)).attribute(x, target=[4, 0], return_patch_map=True)
    u = model.forward_features(x).detach()
    r = u.amin(dim=(2, 3), keepdim=True)
    w = model.fc.weight[[4, 0]].detach()
    expected = 0.5 * torch.einsum("bk,bkhw->bhw", w, u - r) / (u.shape[2] * u.shape[3])
    assert_close(single, expected, "fp32_loose", "analytic")


def test_cnn_other_feature_layer_and_released_switch() -> None:
    model = make_cnn()
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    got = IIA(model, n_steps=(1, 2), feature_layer=2).attribute(x, target=1, return_patch_map=True)
    assert_close(got[0], reference_cnn(model, x[0], 1, (1, 2), stage=2), "fp32_loose", "layer3")
    # Released: the activation path collapses; map = mean over image points of W_c . ReLU(u) / (h w).
    rel = IIA(model, n_steps=(2, 7), cnn_reference="released").attribute(x, target=1, return_patch_map=True)
    assert_close(rel[0], reference_cnn(model, x[0], 1, (2, 7), released=True), "fp32_loose", "released")
    feats = torch.stack([model.forward_features(a * x)[0] for a in (0.0, 0.5, 1.0)]).detach()
    expected = torch.einsum("k,pkhw->hw", model.fc.weight[1].detach(), feats.clamp(min=0)) / (3 * 4)
    assert_close(rel[0], expected, "fp32_loose", "released analytic")


# --------------------------------------------------------------------- batching
@pytest.mark.parametrize("kind", ["vit", "cnn"])
def test_batched_equals_alone_and_internal_batch_size_invariant(kind: str) -> None:
    model = make_vit("reg") if kind == "vit" else make_cnn()
    x = input_for(model, batch=3)
    targets = [0, 2, 4]
    # CNN: layer3 gives a 2x2 map on 32x32 inputs (layer4 would be 1x1, where u - r = 0).
    opts = {"n_steps": (2, 1)} if kind == "vit" else {"n_steps": (2, 1), "feature_layer": 2}
    full = IIA(model, **opts).attribute(x, target=targets, return_patch_map=True)
    assert full.abs().amax() > 0
    for ibs in (1, 4, 7):
        chunked = IIA(model, internal_batch_size=ibs, **opts).attribute(x, target=targets, return_patch_map=True)
        assert_close(chunked, full, "fp32_loose", f"internal_batch_size={ibs}")
    for i, t in enumerate(targets):
        alone = IIA(model, **opts).attribute(x[i : i + 1], target=t, return_patch_map=True)
        assert_close(alone[0], full[i], "fp32_loose", f"example {i} alone")


def test_counts_passes_and_leaves_model_alone() -> None:
    model = make_vit("cls")
    calls: list[int] = []
    handle = model.patch_embed.register_forward_hook(lambda _m, i, _o: calls.append(i[0].shape[0]))
    try:
        IIA(model, n_steps=5, internal_batch_size=40).attribute(input_for(model, batch=2), target=[0, 1])
    finally:
        handle.remove()
    assert calls == [40, 32]  # 2 x 36 path points in chunks of 40 rows, no extra pass
    assert all(p.grad is None for p in model.parameters())


# ------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"n_steps": (2, 2, 2)}, ValueError, "n_steps"),
        ({"n_steps": -1}, ValueError, "n_steps"),
        ({"attention_layers": (5,)}, ValueError, "attention_layers"),
        ({"attention_layers": (1, -1)}, ValueError, "distinct"),
        ({"attention_layers": 1}, TypeError, "attention_layers"),
        ({"internal_batch_size": 0}, ValueError, "internal_batch_size"),
        ({"baseline": "grey"}, TypeError, "baseline"),
    ],
)
def test_vit_argument_errors(kwargs: dict, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        IIA(make_vit("cls"), **kwargs)


def test_cnn_argument_errors_and_bad_baseline_shape() -> None:
    with pytest.raises(ValueError, match="feature_layer"):
        IIA(make_cnn(), feature_layer=4)
    with pytest.raises(ValueError, match="cnn_reference"):
        IIA(make_cnn(), cnn_reference="official")
    model = make_vit("cls")
    with pytest.raises(ValueError, match="baseline"):
        IIA(model, n_steps=1, baseline=torch.zeros(4)).attribute(input_for(model, batch=1), target=0)
