"""Hugging Face ``transformers`` ViTs (:mod:`captum_vit.models.families.hf`): the probed attention
is the model's own function, the readouts are what the heads read, and every method works or
refuses with its reason. Tiny random configs built in code; nothing downloads."""

from __future__ import annotations

import subprocess
import sys
import warnings
from typing import Any

import pytest
import torch
from torch import Tensor, nn

transformers = pytest.importorskip("transformers")

from captum_vit.attr import EmptyMapWarning, get_method, list_methods  # noqa: E402
from captum_vit.models import ViTAdapter  # noqa: E402
from captum_vit.models.hooks import record_attention, replace_patch_embeddings  # noqa: E402
from captum_vit.models.preprocess import model_logits  # noqa: E402
from captum_vit.models.spec_hf import HFImageClassifier  # noqa: E402
from captum_vit.models.token_selection import keep_patch_tokens  # noqa: E402
from captum_vit.models.view import private_view  # noqa: E402
from captum_vit.testing import assert_close  # noqa: E402
from captum_vit.testing.contract import assert_untouched, options_for, snapshot  # noqa: E402

T = transformers
FAMILIES = [
    "vit", "vit_model", "deit", "deit_teacher", "dinov2", "dinov2_registers",
    "clip_vision", "clip_classifier", "siglip_vision", "siglip_classifier",
]  # fmt: skip
EMBEDDING = {"vit_model", "clip_vision", "siglip_vision"}
PREFIX = {"deit": 2, "deit_teacher": 2, "dinov2_registers": 3, "siglip_vision": 0, "siglip_classifier": 0}


def build(name: str, eager: bool = False, **extra: Any) -> nn.Module:
    """A tiny random model of the family ``name`` (2 layers, 2 heads, width 32, 32x32 images,
    8x8 patches, 5 labels); ``eager``: built with the eager attention (``output_attentions``)."""
    torch.manual_seed(0)
    kw: dict[str, Any] = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8)
    impl = {"attn_implementation": "eager"} if eager else {}
    mlp = {"intermediate_size": 64}
    text = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    if name in ("vit", "vit_model"):
        cfg = T.ViTConfig(**kw, **mlp, **impl, num_labels=5)
        return (T.ViTForImageClassification(cfg) if name == "vit" else T.ViTModel(cfg)).eval()
    if name in ("deit", "deit_teacher"):
        cls = T.DeiTForImageClassification if name == "deit" else T.DeiTForImageClassificationWithTeacher
        return cls(T.DeiTConfig(**kw, **mlp, **impl, num_labels=5)).eval()
    if name == "dinov2":
        return T.Dinov2ForImageClassification(T.Dinov2Config(**kw, mlp_ratio=2, **impl, num_labels=5)).eval()
    if name == "dinov2_registers":
        cfg = T.Dinov2WithRegistersConfig(**kw, mlp_ratio=2, num_register_tokens=2, **impl, num_labels=5)
        return T.Dinov2WithRegistersForImageClassification(cfg).eval()
    if name == "clip_vision":
        return T.CLIPVisionModel(T.CLIPVisionConfig(**kw, **mlp, **impl)).eval()
    if name == "clip_classifier":
        vision = T.CLIPVisionConfig(**kw, **mlp).to_dict()
        cfg = T.CLIPConfig(text_config=text, vision_config=vision, num_labels=5, **impl)
        return T.CLIPForImageClassification(cfg).eval()
    if name == "siglip_vision":
        return T.SiglipVisionModel(T.SiglipVisionConfig(**kw, **mlp, **impl, **extra)).eval()
    if name == "siglip_classifier":
        vision = T.SiglipVisionConfig(**kw, **mlp).to_dict()
        cfg = T.SiglipConfig(text_config=text, vision_config=vision, num_labels=5, **impl)
        return T.SiglipForImageClassification(cfg).eval()
    raise KeyError(name)


def scores(name: str, output: Any) -> Tensor:
    """What is explained: the logits, or an embedding model's first 5 pooled features."""
    return output.pooler_output[:, :5] if name in EMBEDDING else model_logits(output)


def output_fn(name: str) -> dict[str, Any]:
    return {"output_fn": lambda o: o.pooler_output[:, :5]} if name in EMBEDDING else {}


@pytest.fixture(scope="module", autouse=True)
def _quiet_transformers() -> None:
    T.logging.set_verbosity_error()  # tiny text configs trip a token-id warning


@pytest.mark.parametrize("name", FAMILIES)
def test_probed_attention_is_the_models_own_forward(name: str) -> None:
    model = build(name)
    adapter = ViTAdapter(model)
    assert type(adapter).__name__ == "HFViTAdapter" and adapter.num_prefix_tokens == PREFIX.get(name, 1)
    x = torch.randn(3, 3, 32, 32)
    configs = [(a, a.config) for a in adapter.attentions]
    impl = model.config._attn_implementation
    with torch.no_grad():
        expected = scores(name, model(x))
        view = private_view(model, training=False)
        with record_attention(adapter.rebuild(view)) as rec:
            got = scores(name, view(x))
    assert (got - expected).abs().max() <= 1e-5, "probed attention vs the model's own forward"
    attn = rec.stacked()  # (L, B, heads, N, N)
    n = adapter.num_prefix_tokens + 16
    assert attn.shape == (2, 3, 2, n, n)
    assert_close(attn.sum(-1), torch.ones(2, 3, 2, n), "fp32", "probability rows sum to 1")
    # the user's model: the same config objects, unchanged, and no probe
    assert model.config._attn_implementation == impl
    assert all(a.config is c and "captum_vit_probe" not in a._modules for a, c in configs)


@pytest.mark.parametrize("name", ["vit", "deit_teacher", "dinov2_registers", "clip_classifier", "siglip_vision"])
def test_recorded_attention_equals_output_attentions(name: str) -> None:
    model = build(name, eager=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        reference = model(x, output_attentions=True).attentions
        view = private_view(model, training=False)
        with record_attention(ViTAdapter(view)) as rec:
            view(x)
    assert len(reference) == 2
    assert_close(rec.stacked(), torch.stack(list(reference)), "fp32", "probe vs output_attentions")


def test_replaced_attention_is_what_the_model_uses() -> None:
    """IIA replaces the probe's output: an identity attention in the last layer must give
    what the layer computes with each token reading only its own value."""
    model = build("vit")
    x = torch.randn(2, 3, 32, 32)
    last = model.vit.layers[-1].attention

    def own_value(mod: nn.Module, args: tuple[Tensor, ...], out: tuple[Tensor, Tensor]) -> tuple[Tensor, None]:
        return mod.o_proj(mod.v_proj(args[0])), None

    with torch.no_grad():
        handle = last.register_forward_hook(own_value)
        expected = model(x).logits
        handle.remove()
        view = private_view(model, training=False)
        eye = {-1: lambda a: torch.eye(a.shape[-1]).expand_as(a)}
        with record_attention(ViTAdapter(view), override=eye):
            got = view(x).logits
    assert_close(got, expected, "fp32", "identity attention through the probe")
    assert (got - model(x).logits).abs().max() > 1e-4


@pytest.mark.parametrize("name", ["dinov2_registers", "siglip_vision"])
def test_explicit_attention_is_reentrant(name: str) -> None:
    """A nested call leaves the enclosing call's probes (and hooks) in place."""
    model = build(name)
    view = private_view(model, training=False)
    adapter = ViTAdapter(view)
    with torch.no_grad(), record_attention(adapter) as rec:
        with adapter.explicit_attention():
            pass
        view(torch.randn(1, 3, 32, 32))
    assert all(a is not None for a in rec.attentions) and rec.pool is not None
    assert all("captum_vit_probe" not in m._modules for m in view.modules())
    assert all(a.config is b.config for a, b in zip(adapter.attentions, ViTAdapter(model).attentions))


@pytest.mark.parametrize("name", ["deit", "dinov2_registers", "clip_classifier", "siglip_classifier"])
def test_diffmask_gates_read_the_prefix_tokens(name: str) -> None:
    from captum_vit.explainers import DiffMaskGates

    model = build(name)
    adapter = ViTAdapter(model)
    prefix = adapter.prefix_token_parameters()
    assert prefix.shape == (1, adapter.num_prefix_tokens, 32)
    if name == "dinov2_registers":
        emb = model.dinov2_with_registers.embeddings
        assert_close(prefix, torch.cat([emb.cls_token, emb.register_tokens], 1), "exact")
    logits, _ = DiffMaskGates.for_model(model, seed=0).logits_and_output(model, torch.randn(2, 3, 32, 32), prefix=True)
    assert logits.shape == (adapter.num_blocks + 2, 2, adapter.num_prefix_tokens + 16) and torch.isfinite(logits).all()


def _hand_rollout(attentions: list[Tensor], row: Tensor) -> Tensor:
    """Abnar & Zuidema's rollout, written out: ``row @ Ã_L ... Ã_1``, ``Ã = (mean_h A + I) / 2``."""
    for a in reversed(attentions):
        fused = a.mean(1)
        row = torch.einsum("bn,bnm->bm", row, (fused + torch.eye(fused.shape[-1])) / 2)
    return row


@pytest.mark.parametrize("name", ["vit", "deit_teacher", "dinov2", "clip_classifier"])
def test_raw_attention_and_rollout_by_hand(name: str) -> None:
    model = build(name, eager=True)
    adapter = ViTAdapter(model)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        attentions = list(model(x, output_attentions=True).attentions)
    n, p = attentions[0].shape[-1], adapter.num_prefix_tokens
    weights = {  # the rows each head reads
        "vit": torch.eye(n)[0],
        "deit_teacher": (torch.eye(n)[0] + torch.eye(n)[1]) / 2,
        "dinov2": torch.cat([torch.tensor([0.5]), torch.full((n - 1,), 0.5 / (n - 1))]),
        "clip_classifier": torch.cat([torch.zeros(p), torch.full((n - p,), 1 / (n - p))]),
    }[name].expand(2, -1)
    raw = get_method("raw_attention")(model).attribute(x, target=0, return_patch_map=True)
    expected_raw = torch.einsum("bn,bnm->bm", weights, attentions[-1].mean(1))[:, p:].reshape(2, 4, 4)
    assert_close(raw, expected_raw, "fp32_loose", "raw attention vs output_attentions")
    rollout = get_method("rollout")(model).attribute(x, target=0, return_patch_map=True)
    expected = _hand_rollout(attentions, weights)[:, p:].reshape(2, 4, 4)
    assert_close(rollout, expected, "fp32_loose", "rollout vs by hand")


@pytest.mark.parametrize("name", ["dinov2", "dinov2_registers"])
def test_dinov2_pool_gradient_is_each_tokens_share_of_the_score(name: str) -> None:
    """``y = W_c t_0 + W_p mean_j t_j + b`` read through the pooling weights ``a``: the share
    ``a_j ∂y/∂a_j`` is ``W_c t_0`` for the class token, ``W_p t_j / n`` for a patch token, 0
    for a register, and the shares add up to ``y - b``."""
    model = build(name)
    adapter = ViTAdapter(model)
    x, target = torch.randn(2, 3, 32, 32), 3
    view = private_view(model, training=False)
    view_adapter = adapter.rebuild(view)
    with record_attention(view_adapter, tokens=True) as rec:
        y = view(x).logits[:, target]
        assert rec.pool is not None and rec.tokens is not None
        (grad,) = torch.autograd.grad(y.sum(), [rec.pool])
    share = (grad * rec.pool).detach()[:, 0, 0]  # (B, N)
    tokens = rec.tokens.detach()
    w = model.classifier.weight[target].detach()
    d, p, n = tokens.shape[-1], adapter.num_prefix_tokens, tokens.shape[1]
    assert_close(share[:, 0], tokens[:, 0] @ w[:d], "fp32_loose", "class token's share")
    assert_close(share[:, p:], tokens[:, p:] @ w[d:] / (n - p), "fp32_loose", "patch tokens' shares")
    assert_close(share[:, 1:p], torch.zeros(2, p - 1), "exact", "registers take no share")
    assert_close(share.sum(1), y.detach() - model.classifier.bias[target].detach(), "fp32_loose", "shares add up")
    assert_close(adapter.readout_weights(n, torch.device("cpu")).sum(), torch.tensor(1.0), "fp32", "weights sum to 1")


@pytest.mark.parametrize("name", FAMILIES)
def test_every_method_works_or_refuses_with_its_reason(name: str) -> None:
    model = build(name)
    before = snapshot(model)
    x = torch.randn(2, 3, 32, 32)
    for method in list_methods("vit"):
        cls = get_method(method)
        options = options_for(method, model) | output_fn(name)
        if method == "transformer_attribution":
            with pytest.raises((TypeError, ValueError), match="LRP|relevance|output_fn"):
                cls(model, **options)
            continue
        maps = []
        for target in range(3):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                m = cls(model, **options).attribute(x, target=target, return_patch_map=True)
            assert m.shape == (2, 4, 4) and torch.isfinite(m).all(), f"{method} on {name}"
            empty = (m.flatten(1).abs().amax(1) == 0).any()
            assert not empty or any(issubclass(w.category, EmptyMapWarning) for w in caught), f"{method} on {name}"
            maps.append(m)
        assert any(float(m.flatten(1).std(1).max()) > 0 for m in maps), f"{method} on {name}: constant maps"
    assert_untouched(model, before)


@pytest.mark.parametrize("name", ["dinov2_registers", "siglip_vision"])
def test_maps_are_batch_consistent(name: str) -> None:
    """The pooling-weight probe (DINOv2) and SigLIP's pooling head work per image."""
    model, x = build(name), torch.randn(3, 3, 32, 32)
    for method in ("gae", "rollout"):
        explain = get_method(method)(model, **output_fn(name))
        batched = explain.attribute(x, target=[0, 1, 2], return_patch_map=True)
        alone = torch.cat([explain.attribute(x[i : i + 1], target=i, return_patch_map=True) for i in range(3)])
        assert_close(batched, alone, "fp32_loose", f"{method} on {name}: batched vs alone")


@pytest.mark.parametrize("name", ["vit", "dinov2_registers", "clip_vision", "siglip_classifier"])
def test_token_removal_keeps_prefix_and_chosen_patches(name: str) -> None:
    """MUTEX removes patch tokens at the first block's input: absolute positions are added
    before it (DINOv2's registers too), so keeping every patch is the plain forward."""
    model = build(name)
    adapter = ViTAdapter(model)
    assert adapter.supports_token_removal
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = scores(name, model(x))
        view = private_view(model, training=False)
        va = adapter.rebuild(view)
        with keep_patch_tokens(va, torch.arange(16).expand(2, -1)):
            everything = scores(name, view(x))
        with keep_patch_tokens(va, torch.tensor([[0, 5, 9], [1, 2, 3]])), record_attention(va) as rec:
            view(x)
    assert_close(everything, expected, "fp32", "keeping every patch token")
    assert rec.stacked().shape[-1] == adapter.num_prefix_tokens + 3


@pytest.mark.parametrize("name", ["deit", "clip_classifier"])
def test_patch_embedding_replacement_round_trips(name: str) -> None:
    """DiffMask's hook point: ``(B, h*w, D)`` tokens from ViT's patch embeddings and from
    CLIP's ``(B, D, h, w)`` convolution, put back in the module's layout."""
    model = build(name)
    x = torch.randn(2, 3, 32, 32)
    seen: list[Tensor] = []
    with torch.no_grad():
        expected = model(x).logits
        with replace_patch_embeddings(model, lambda t: seen.append(t) or t):
            same = model(x).logits
        with replace_patch_embeddings(model, torch.zeros_like):
            changed = model(x).logits
    assert seen[0].shape == (2, 16, 32)
    assert_close(same, expected, "exact", "identity replacement")
    assert (changed - expected).abs().max() > 1e-4


def test_wrapped_models_are_found_and_explained_alike() -> None:
    """spec_hf's wrapper (forward returns logits) and a projection model hold one supported
    model; the maps are those of the inner classifier."""
    model = build("vit")
    wrapper = HFImageClassifier(model, {"num_classes": 5}).eval()
    adapter = ViTAdapter(wrapper)
    assert adapter.inner == "model" and adapter.num_classes == 5
    x = torch.randn(2, 3, 32, 32)
    gae = get_method("gae")
    assert_close(gae(wrapper).attribute(x, target=1), gae(model).attribute(x, target=1), "fp32", "wrapper vs inner")
    torch.manual_seed(0)
    vision = T.CLIPVisionConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                image_size=32, patch_size=8, projection_dim=8)  # fmt: skip
    assert ViTAdapter(T.CLIPVisionModelWithProjection(vision)).inner == "vision_model"


def test_embedding_model_needs_output_fn_and_siglip_needs_its_head() -> None:
    with pytest.raises(ValueError, match="output_fn"):
        get_method("gae")(build("clip_vision")).attribute(torch.randn(1, 3, 32, 32), target=0)
    headless = build("siglip_vision", vision_use_head=False)
    rollout = get_method("rollout")(headless, output_fn=lambda o: o.last_hidden_state.mean((1, 2)))
    with pytest.raises(ValueError, match="vision_use_head"):
        rollout.attribute(torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match="spatial size"):
        ViTAdapter(build("vit")).check_input(torch.randn(1, 3, 48, 48))
    assert ViTAdapter(build("dinov2")).grid_size((48, 40)) == (6, 5)  # DINOv2 takes any size


def test_model_logits_reads_a_model_output() -> None:
    out = T.modeling_outputs.ImageClassifierOutput(logits=torch.ones(1, 3))
    assert_close(model_logits(out), torch.ones(1, 3), "exact")
    with pytest.raises(TypeError, match="logits"):
        model_logits(T.modeling_outputs.BaseModelOutputWithPooling(last_hidden_state=torch.ones(1, 2, 3)))


def test_transformers_is_not_imported_for_other_models() -> None:
    code = (
        "import sys, timm; from captum_vit.models import ViTAdapter\n"
        "ViTAdapter(timm.create_model('vit_tiny_patch16_224', pretrained=False, depth=1, img_size=32))\n"
        "print('transformers' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300)
    assert out.stdout.strip() == "False"
