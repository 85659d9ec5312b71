"""timm BEiT, EVA and relative-position ViTs (``captum_vit/models/families/timm_relative.py``):
the probed forward is the model's own, every method's map against a reference computed here
from the recorded attention (and its gradient), MUTEX's token masking against token removal,
and the refusals."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

import pytest
import timm
import torch
from torch import Tensor, nn

from captum_vit.attr import EmptyMapWarning, get_method, list_methods
from captum_vit.attr.mutex import MUTEX
from captum_vit.explainers import build_explainer
from captum_vit.models import ViTAdapter
from captum_vit.models.families.timm_relative import BeitAdapter, EvaAdapter, RelPosViTAdapter
from captum_vit.models.hooks import record_attention, record_hidden_states
from captum_vit.models.token_selection import keep_patch_tokens, mask_patch_tokens
from captum_vit.models.view import private_view
from captum_vit.testing import assert_close
from captum_vit.testing.contract import assert_untouched, options_for, snapshot
from captum_vit.testing.families import build
from captum_vit.testing.models import NUM_CLASSES, make_vit

_TINY = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=NUM_CLASSES)


def _timm(name: str, std: float = 0.3, seed: int = 0, **overrides: Any) -> nn.Module:
    # Informative random weights, as captum_vit.testing.families (its N(0, 0.3) saturates the
    # softmax of blocks that normalise after the attention: those get a smaller std).
    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False, **(_TINY | overrides))
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0, std)
    return model.eval()


def _rpn(**overrides: Any) -> nn.Module:
    """Residual post-norm blocks (``x + norm1(attn(x))``), their norms at unit scale (timm
    initialises them to 1e-6, which would hide every block's attention from the output)."""
    model = _timm("vit_relpos_small_patch16_rpn_224", std=0.1, **overrides)
    with torch.no_grad():
        for b in model.blocks:
            b.norm1.weight.fill_(1.0)
            b.norm2.weight.fill_(1.0)
    return model


#: name -> (builder, adapter class); the default configurations come from the shared builders.
VARIANTS: dict[str, tuple[Callable[[], nn.Module], type[ViTAdapter]]] = {
    "beit": (lambda: build("beit")[0], BeitAdapter),
    "beit_token": (lambda: _timm("beit_base_patch16_224", global_pool="token"), BeitAdapter),
    "beit_shared_bias": (
        lambda: _timm("beit_base_patch16_224", use_rel_pos_bias=False, use_shared_rel_pos_bias=True),
        BeitAdapter,
    ),
    "eva02": (lambda: build("eva02")[0], EvaAdapter),
    "eva02_token": (lambda: _timm("eva02_tiny_patch14_224", global_pool="token", ref_feat_shape=(4, 4)), EvaAdapter),
    "eva02_map_reg": (lambda: _timm("eva02_tiny_patch14_224", global_pool="map", num_reg_tokens=2), EvaAdapter),
    "eva_rope_gqa": (  # timm.layers.AttentionRope with grouped-query attention
        lambda: _timm("eva02_tiny_patch14_224", attn_type="rope", num_kv_heads=1, qkv_fused=False),
        EvaAdapter,
    ),
    "dinov3": (lambda: _timm("vit_small_patch16_dinov3"), EvaAdapter),  # 4 registers, RoPE
    "vit_relpos": (lambda: build("vit_relpos")[0], RelPosViTAdapter),
    "vit_relpos_cls": (lambda: _timm("vit_relpos_medium_patch16_cls_224"), RelPosViTAdapter),
    "vit_relpos_rpn": (_rpn, RelPosViTAdapter),
    "vit_srelpos": (lambda: _timm("vit_srelpos_small_patch16_224"), RelPosViTAdapter),
}
TOKEN_READOUT = ("beit_token", "eva02_token", "vit_relpos_cls")


def _images(batch: int = 2, seed: int = 1) -> Tensor:
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _probed(model: nn.Module, x: Tensor, target: int) -> tuple[list[Tensor], list[Tensor], Tensor | None, Tensor]:
    """Every block's probe output and the gradient of the summed target logit with respect to
    it, the pool's probe attention, and the logits: the reference methods' inputs."""
    view = private_view(model)
    with record_attention(view) as rec:
        logits = view(x)
    attn = [a for a in rec.attentions if a is not None]
    grads = list(torch.autograd.grad(logits[:, target].sum(), attn))
    pool = None if rec.pool is None else rec.pool.detach()
    return [a.detach() for a in attn], grads, pool, logits.detach()


def _row_weights(adapter: ViTAdapter, n: int, pool: Tensor | None, batch: int) -> Tensor:
    if pool is not None:
        return pool[:, :, 0].mean(dim=1)
    return adapter.readout_weights(n, torch.device("cpu")).expand(batch, -1)


def _map(name: str, model: nn.Module, x: Tensor, target: int, **options: Any) -> Tensor:
    return get_method(name)(model, **options).attribute(x, target=target, return_patch_map=True)


@pytest.mark.parametrize("variant", VARIANTS)
def test_probed_forward_is_the_models_own(variant: str) -> None:
    make, family = VARIANTS[variant]
    model = make()
    adapter = ViTAdapter(model)
    assert type(adapter) is family and not adapter.supports_token_removal
    x = _images()
    before = snapshot(model)
    with torch.no_grad():
        expected = model(x)  # timm's default path: fused attention
        view = private_view(model)
        with record_attention(view) as rec:
            got = view(x)
    assert_close(got, expected, "fp32_loose", f"{variant}: forward with probes vs plain forward")
    assert (got - expected).abs().max() <= 1e-5
    n = adapter.num_prefix_tokens + 16
    for a in rec.attentions:
        assert a is not None and a.shape == (2, 2, n, n)
        assert_close(a.sum(-1), torch.ones(2, 2, n), "fp32", "probabilities sum to 1 over the keys")
    assert_untouched(model, before)


@pytest.mark.parametrize("variant", ["beit", "eva02_token", "vit_relpos_rpn"])
def test_probe_output_is_what_the_model_uses(variant: str) -> None:
    model, x = VARIANTS[variant][0](), _images()
    view = private_view(model)
    with torch.no_grad():
        with record_attention(view, override={-1: lambda a: a.clone()}):
            same = view(x)
        with record_attention(view, override={-1: lambda a: torch.eye(a.shape[-1]).expand_as(a)}):
            changed = view(x)
    assert_close(same, model(x).detach(), "fp32_loose", "identity replacement")
    assert (changed - same).abs().max() > 1e-3  # a replaced probe output changes the prediction


@pytest.mark.parametrize(
    ("variant", "rows", "include_prefix", "attention_pool", "prefix"),
    [
        ("beit", None, False, False, 1),
        ("beit_token", (0,), False, False, 1),
        ("eva02", None, False, False, 1),
        ("eva02_map_reg", None, False, True, 3),
        ("vit_relpos", None, False, False, 0),
        ("vit_relpos_cls", (0,), False, False, 1),
    ],
)
def test_readout(variant: str, rows: Any, include_prefix: bool, attention_pool: bool, prefix: int) -> None:
    adapter = ViTAdapter(VARIANTS[variant][0]())
    ro = adapter.readout
    assert (ro.rows, ro.include_prefix, ro.attention_pool) == (rows, include_prefix, attention_pool)
    assert adapter.num_prefix_tokens == prefix and adapter.grid_size((32, 32)) == (4, 4)


@pytest.mark.parametrize(
    ("name", "pool"),
    [("eva02_tiny_patch14_224", "max"), ("eva02_tiny_patch14_224", "avgmax"), ("beit_base_patch16_224", "")],
)
def test_unsupported_pooling_is_refused_naming_it(name: str, pool: str) -> None:
    model = _timm(name, global_pool=pool)
    with pytest.raises(ValueError, match=f"global_pool={pool!r}"):
        _ = ViTAdapter(model).readout
    with pytest.raises(ValueError, match=f"global_pool={pool!r}"):
        get_method("rollout")(model).attribute(_images(), target=0)


def test_transformer_attribution_refuses_with_the_reason() -> None:
    for variant in ("beit", "eva02", "vit_relpos"):
        model = VARIANTS[variant][0]()
        assert ViTAdapter(model).lrp_unsupported is not None
        with pytest.raises(TypeError, match="LRP|relevance"):
            get_method("transformer_attribution")(model)


@pytest.mark.parametrize("variant", ["beit", "beit_token", "eva02_map_reg", "vit_relpos", "vit_relpos_cls"])
def test_raw_attention_and_rollout_against_the_recorded_attention(variant: str) -> None:
    model, x = VARIANTS[variant][0](), _images()
    adapter = ViTAdapter(model)
    attn, _, pool, _ = _probed(model, x, 0)
    n = attn[0].shape[-1]
    w = _row_weights(adapter, n, pool, 2)
    fused = [a.mean(dim=1) for a in attn]
    raw = torch.einsum("bn,bnm->bm", w, fused[-1])
    assert_close(_map("raw_attention", model, x, 0), adapter.patch_columns(raw, (32, 32)), "fp32", "raw attention")
    eye = torch.eye(n)
    rows = w
    for a in reversed(fused):  # w (A_L + I)/2 ... (A_1 + I)/2: rows of row-stochastic A + I
        rows = torch.einsum("bn,bnm->bm", rows, 0.5 * (a + eye))
    assert_close(_map("rollout", model, x, 0), adapter.patch_columns(rows, (32, 32)), "fp32_loose", "rollout")


@pytest.mark.parametrize("variant", TOKEN_READOUT)
@pytest.mark.parametrize("target", [0, 3])
def test_gae_and_attention_gradcam_against_the_recorded_gradients(variant: str, target: int) -> None:
    model, x = VARIANTS[variant][0](), _images()
    adapter = ViTAdapter(model)
    attn, grads, _, _ = _probed(model, x, target)
    n, p = attn[0].shape[-1], adapter.num_prefix_tokens
    relevance = torch.eye(n).expand(2, n, n)
    for a, g in zip(attn, grads):  # rule 6: R <- R + mean_h((grad * A)^+) R
        relevance = relevance + (g * a).clamp(min=0).mean(dim=1) @ relevance
    expected = adapter.patch_columns(relevance[:, 0], (32, 32))
    assert_close(_map("gae", model, x, target), expected, "fp32_loose", "GAE")
    a_row, g_row = attn[-1][:, :, 0, p:], grads[-1][:, :, 0, p:]
    cam = (a_row * g_row.mean(dim=-1, keepdim=True)).mean(dim=1).clamp(min=0).reshape(2, 4, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an all-negative example warns (EmptyMapWarning)
        assert_close(_map("attention_gradcam", model, x, target), cam, "fp32_loose", "attention Grad-CAM")


@pytest.mark.parametrize("variant", ["beit_token", "eva02", "vit_relpos_rpn"])
def test_vit_gradcam_against_its_layer(variant: str) -> None:
    model, x = VARIANTS[variant][0](), _images()
    adapter = ViTAdapter(model)
    last = adapter.blocks[-1]
    post_norm = variant == "vit_relpos_rpn"  # x + norm1(attn(x)): the previous block's output is read
    assert adapter.gradcam_layer is (adapter.blocks[-2] if post_norm else last.norm1)
    acts: list[Tensor] = []
    handle = adapter.gradcam_layer.register_forward_hook(lambda _m, _i, out: acts.append(out))
    try:
        score = model(x)[:, 1].sum()
    finally:
        handle.remove()
    (grad,) = torch.autograd.grad(score, acts[0])
    p = adapter.num_prefix_tokens
    cam = (grad[:, p:].mean(dim=1, keepdim=True) * acts[0].detach()[:, p:]).sum(-1).clamp(min=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert_close(_map("vit_gradcam", model, x, 1), cam.reshape(2, 4, 4), "fp32_loose", "ViT Grad-CAM")


def test_one_block_post_norm_model_has_no_default_gradcam_layer() -> None:
    model = _rpn(depth=1)
    with pytest.raises(ValueError, match="layer="):
        get_method("vit_gradcam")(model)


@pytest.mark.parametrize("kind", ["cls", "avg", "reg", "siglip"])
def test_masking_equals_removal_on_an_absolute_position_vit(kind: str) -> None:
    if kind == "siglip":
        model = build("siglip")[0]
    else:
        model = make_vit(kind, **({"fc_norm": True} if kind == "avg" else {}))
    x = _images(3)
    keep = torch.tensor([[0, 5, 6, 15], [3, 2, 9, 12], [1, 4, 7, 8]])
    with torch.no_grad():
        shorter, view = private_view(model), private_view(model)
        with keep_patch_tokens(shorter, keep):
            removed = shorter(x)
        with mask_patch_tokens(view, keep):
            masked = view(x)
    assert (masked - removed).abs().max() <= 1e-5, kind
    assert (masked - model(x)).abs().max() > 1e-3  # the masking did something


@pytest.mark.parametrize("masking_first", [True, False])
def test_masked_attention_is_recorded_and_zero_at_removed_keys(masking_first: bool) -> None:
    model, x = VARIANTS["eva02_map_reg"][0](), _images()
    keep = torch.tensor([[0, 1], [7, 15]])
    view = private_view(model)
    with ExitStack() as stack:
        if masking_first:
            stack.enter_context(mask_patch_tokens(view, keep))
        rec = stack.enter_context(record_attention(view))
        if not masking_first:  # its hooks run before record_attention's all the same
            stack.enter_context(mask_patch_tokens(view, keep))
        with torch.no_grad():
            view(x)
    assert "captum_vit_probe" not in view.attn_pool._modules and view.blocks[0].attn.fused_attn
    p = 3
    kept = torch.zeros(2, p + 16, dtype=torch.bool)
    kept[:, :p] = True
    kept[0, [p, p + 1]] = kept[1, [p + 7, p + 15]] = True
    removed = ~kept[:, None, None, :]
    for a in [*rec.attentions, rec.pool]:
        assert a is not None
        assert bool((a.masked_select(removed.expand_as(a)) == 0).all())  # removed keys get nothing
        assert_close(a.sum(-1), torch.ones(a.shape[:-1]), "fp32", "rows sum to 1 over the kept keys")


def test_mask_patch_tokens_checks_its_indices() -> None:
    view = private_view(build("vit_relpos")[0])
    x = _images()
    with pytest.raises(ValueError, match="integer tensor"):
        with mask_patch_tokens(view, torch.zeros(2, 3)):
            pass
    with pytest.raises(ValueError, match="at least one patch"):
        with mask_patch_tokens(view, torch.zeros(2, 0, dtype=torch.long)):
            pass
    with pytest.raises(ValueError, match=r"indices must be in \[0, 16\)"), torch.no_grad():
        with mask_patch_tokens(view, torch.tensor([[0, 16], [1, 2]])):
            view(x)
    with pytest.raises(ValueError, match="batch"), torch.no_grad():
        with mask_patch_tokens(view, torch.tensor([[0, 1]])):
            view(x)
    with pytest.raises(ValueError, match="cannot be removed"):
        with keep_patch_tokens(view, torch.tensor([[0, 1], [2, 3]])):
            pass


def test_mutex_masks_where_tokens_cannot_be_removed(monkeypatch: pytest.MonkeyPatch) -> None:
    model, x = make_vit("cls"), _images()
    removal = MUTEX(model).explain_masks(x, torch.tensor([0, 2]))
    monkeypatch.setattr(ViTAdapter, "supports_token_removal", False)  # take the masking path
    masking = MUTEX(model).explain_masks(x, torch.tensor([0, 2]))
    assert torch.equal(masking.masks, removal.masks)
    assert_close(masking.probabilities, removal.probabilities, "fp32_loose", "MUTEX scores: masking vs removal")


@pytest.mark.parametrize("variant", ["beit", "eva02_map_reg", "vit_relpos"])
def test_mutex_scores_are_the_masked_models_probabilities(variant: str) -> None:
    model, x = VARIANTS[variant][0](), _images()
    result = MUTEX(model, head_fusions=("sum",)).explain_masks(x, torch.tensor([0, 4]))
    b, m = 1, 5  # one (image, mask) pair, rescored by hand
    keep = torch.nonzero(result.masks[b, m])[:, 0][None]
    view = private_view(model)
    with torch.no_grad(), mask_patch_tokens(view, keep):
        prob = view(x[b : b + 1]).softmax(-1)[0, 4]
    assert_close(result.probabilities[b, m], prob, "fp32_loose", "MUTEX score")
    assert torch.isfinite(result.vote()).all() and result.vote().std() > 0


def test_diffmask_hooks_and_ltx_explainer_parts() -> None:
    model, x = VARIANTS["beit"][0](), _images()
    adapter = ViTAdapter(model)
    with torch.no_grad(), record_hidden_states(model) as hs:
        model(x)
    assert [tuple(s.shape) for s in hs.states if s is not None] == [(2, 16, 32)] + [(2, 17, 32)] * 3
    backbone = copy.deepcopy(model)
    ViTAdapter(backbone).strip_head()
    assert ViTAdapter(backbone).num_classes == 0
    with torch.no_grad():
        assert_close(ViTAdapter(backbone).final_tokens(x), adapter.final_tokens(x), "exact", "final tokens")
    explainer = build_explainer(model)
    frozen = {n for n, p in explainer.backbone.named_parameters() if not p.requires_grad}
    # fc_norm follows the pooling, which the explainer never runs: trained, it would have no gradient
    assert {"fc_norm.weight", "patch_embed.proj.weight", "cls_token"} <= frozen
    assert "blocks.0.attn.relative_position_bias_table" not in frozen
    assert model.fc_norm.weight.requires_grad  # the explainee is untouched
    shared = build_explainer(VARIANTS["beit_shared_bias"][0]())
    assert not any(p.requires_grad for p in shared.backbone.rel_pos_bias.parameters())


@pytest.mark.parametrize("variant", ["beit", "eva02", "vit_relpos"])
@pytest.mark.parametrize("method", [m for m in list_methods("vit") if m != "transformer_attribution"])
def test_every_method_works(variant: str, method: str) -> None:
    model, x = VARIANTS[variant][0](), _images()
    before = snapshot(model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        maps = [_map(method, model, x, t, **options_for(method, model)) for t in (0, 2)]
    assert all(bool(torch.isfinite(m).all()) and m.shape == (2, 4, 4) for m in maps)
    if any(bool((m.flatten(1) == 0).all(1).any()) for m in maps):  # an empty map is announced
        assert any(issubclass(w.category, EmptyMapWarning) for w in caught)
    assert any(float(m.std()) > 0 for m in maps), f"{method} gives constant maps on {variant}"
    assert_untouched(model, before)


def test_ltx_finetunes_an_average_pooled_timm_vit_with_fc_norm() -> None:
    # timm's default for global_pool='avg': fc_norm after the pooling, which the explainer skips
    model = make_vit("avg", fc_norm=True)
    maps = _map("ltx", model, _images(), 1, **options_for("ltx", model))
    assert bool(torch.isfinite(maps).all()) and float(maps.std()) > 0
