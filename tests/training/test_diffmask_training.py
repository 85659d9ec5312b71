"""Vision DiffMask training: hard-concrete gates, multipliers, placeholder, objective, trainer."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from captum_vit.data.synthetic import SyntheticDataset
from captum_vit.explainers import (
    DiffMaskGates,
    DiffMaskObjective,
    hard_concrete_sample,
    kl_divergence,
    log_prob_nonzero,
)
from captum_vit.models.hooks import record_hidden_states
from captum_vit.testing import assert_close, input_for, make_vit
from captum_vit.training.diffmask import diffmask_optimizer
from captum_vit.training.trainer import Trainer


# ----------------------------------------------------------------- hard concrete
@pytest.mark.parametrize("logit", [-3.0, -1.0, 0.0, 0.7, 2.5])
def test_closed_form_nonzero_probability_matches_monte_carlo(logit: float) -> None:
    gen = torch.Generator().manual_seed(0)
    samples = hard_concrete_sample(torch.full((200_000,), logit), generator=gen)
    mc = (samples > 0).double().mean()
    assert_close(log_prob_nonzero(torch.tensor(logit)).exp(), mc, "mc", f"P(gate != 0) at logit {logit}")
    # Independent derivation: s > u0 = 1/6  <=>  logistic noise > T*logit(u0) - logit.
    threshold = 0.2 * math.log((1 / 6) / (5 / 6)) - logit
    assert_close(log_prob_nonzero(torch.tensor(logit)).exp(), torch.tensor(1 / (1 + math.exp(threshold))))


def test_support_is_clamped_to_unit_interval_with_exact_zeros() -> None:
    gen = torch.Generator().manual_seed(1)
    samples = hard_concrete_sample(torch.linspace(-6, 6, 50_000), generator=gen)
    assert samples.min() == 0.0 and samples.max() <= 1.0
    assert (samples == 0).any(), "the stretched interval (-0.2, 1) must put mass exactly on 0"
    assert ((samples > 0) & (samples < 1)).any()
    # r = 1.0 (the official value): the unclamped sample never exceeds 1.
    assert (samples <= 1.0).all()


def test_samples_are_differentiable_in_the_logits() -> None:
    logits = torch.zeros(64, requires_grad=True)
    hard_concrete_sample(logits, generator=torch.Generator().manual_seed(2)).sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_kl_is_a_real_kl() -> None:
    p, q = torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([[0.0, 1.0, 0.0]])
    expected = F.kl_div(F.log_softmax(q, -1), F.log_softmax(p, -1), log_target=True, reduction="sum")
    assert_close(kl_divergence(p, q)[0], expected)
    assert_close(kl_divergence(p, p), torch.zeros(1), "fp32")


# ------------------------------------------------------------------- gates
def test_gate_logits_read_every_hidden_state() -> None:
    model = make_vit("reg")  # 5 prefix tokens: only patch positions get a gate
    gates = DiffMaskGates.for_model(model, seed=0)
    x = input_for(model, batch=2)
    with torch.no_grad():
        logits = gates.gate_logits(model, x)
        with record_hidden_states(model) as hs:
            model(x)
        h0 = hs.states[0]
        for i, state in enumerate(hs.states):
            hi = h0 if i == 0 else state[:, 5:]  # type: ignore[index]
            assert_close(logits[i], gates.gates[i](h0, hi), "fp32", f"state {i}")
    assert logits.shape == (4, 2, 16)


def test_for_model_is_deterministic_and_leaves_global_rng() -> None:
    model = make_vit("cls")
    state = torch.get_rng_state()
    a, b = DiffMaskGates.for_model(model, seed=3), DiffMaskGates.for_model(model, seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    for (k, v), w in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(v, w), k


def test_save_load_roundtrip(tmp_path) -> None:
    model = make_vit("cls")
    gates = DiffMaskGates.for_model(model, seed=0, mul_activation=10.0, placeholder=False)
    gates.save(tmp_path / "g.safetensors")
    loaded = DiffMaskGates.load(tmp_path / "g.safetensors")
    assert loaded.config == gates.config and loaded.fingerprint == gates.fingerprint
    x = input_for(model, batch=2)
    with torch.no_grad():
        assert_close(loaded.gate_logits(model, x), gates.gate_logits(model, x), "exact")


def test_gates_for_another_model_raise() -> None:
    gates = DiffMaskGates.for_model(make_vit("cls"), seed=0)
    with pytest.raises(ValueError, match="embed_dim=32"):
        gates.check_model(make_vit("cls", embed_dim=64))


# -------------------------------------------------------------- placeholder
def test_placeholder_replaces_only_the_dropped_patch_embeddings() -> None:
    model = make_vit("cls")
    gates = DiffMaskGates.for_model(model, seed=0)
    x = input_for(model, batch=2)
    keep = torch.ones(2, 16)
    keep[0, 3], keep[1, [0, 15]], keep[1, 7] = 0.0, 0.0, 0.25
    with torch.no_grad():
        with record_hidden_states(model) as clean:
            original = model(x)
        with record_hidden_states(model) as masked:
            gates.masked_output(model, x, keep)
        assert_close(gates.masked_output(model, x, torch.ones(2, 16)), original, "exact", "keep=1 is the identity")
    pos = model.pos_embed[0, 1:]  # position embeddings of the patches (class token first)
    h0 = clean.states[0]
    expected_patches = keep[..., None] * h0 + (1 - keep[..., None]) * gates.placeholder + pos
    block_in, clean_in = masked.states[1], clean.states[1]
    assert_close(block_in[:, 1:], expected_patches, "fp32", "patch rows = mix + position embedding")
    assert_close(block_in[:, :1], clean_in[:, :1], "exact", "class token untouched")
    untouched = keep == 1
    assert_close(block_in[:, 1:][untouched], clean_in[:, 1:][untouched], "exact", "kept patches untouched")


# -------------------------------------------------------------- multipliers
@pytest.mark.parametrize(("epsilon", "direction"), [(-1.0, 1), (50.0, -1)])
def test_multiplier_moves_with_the_constraint(epsilon: float, direction: int) -> None:
    """KL >= 0 > ε violates the constraint: α_k must grow; ε far above any KL: α_k shrinks.
    Multipliers of other states stay put."""
    torch.manual_seed(0)
    model = make_vit("cls")
    obj = DiffMaskObjective(model, DiffMaskGates.for_model(model, seed=0), epsilon=epsilon)
    opt = diffmask_optimizer(obj, lr_alpha=0.3)
    before = obj.alphas.detach().clone()
    out = obj(input_for(model, batch=2), layer=2)
    opt.zero_grad()
    out["loss"].backward()
    assert_close(obj.alphas.grad[2], out["kl"] - epsilon, "fp32", "dL/dα_k = KL - ε")  # type: ignore[index]
    opt.step()
    change = obj.alphas.detach() - before
    assert direction * change[2] > 0.2, f"α_2 moved by {change[2]}"
    assert_close(change[[0, 1, 3]], torch.zeros(3), "exact")


def test_multipliers_are_clipped() -> None:
    model = make_vit("cls")
    for epsilon, alpha0, bound in ((-1.0, 199.9, 200.0), (50.0, 0.1, 0.0)):
        obj = DiffMaskObjective(model, DiffMaskGates.for_model(model, seed=0), epsilon=epsilon, alpha_init=alpha0)
        opt = diffmask_optimizer(obj, lr_alpha=1.0)
        for _ in range(3):
            opt.zero_grad()
            obj(input_for(model, batch=2), layer=0)["loss"].backward()
            opt.step()
            assert obj.alphas[0].item() == bound


def test_training_does_not_touch_the_explainee() -> None:
    model = make_vit("cls")
    params = {k: v.clone() for k, v in model.state_dict().items()}
    obj = DiffMaskObjective(model, DiffMaskGates.for_model(model, seed=0))
    obj(input_for(model, batch=2))["loss"].backward()
    assert all(p.grad is None and p.requires_grad for p in model.parameters())
    assert all(torch.equal(v, params[k]) for k, v in model.state_dict().items())
    assert not any(n.startswith("_explainee") for n, _ in obj.named_parameters())
    assert set(obj.state_dict()) == {"alphas"} | {f"gates.{k}" for k in obj.gates.state_dict()}


# ---------------------------------------------------------- training loop
def _benchmark(n: int) -> TensorDataset:
    data = SyntheticDataset(n, seed=1000, image_size=32)
    return TensorDataset(torch.stack([(data[i][0] - 0.5) / 0.22 for i in range(n)]))


def _fixed_loss(obj: DiffMaskObjective, images: torch.Tensor) -> float:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        return sum(float(obj(images, layer=k)["loss"].detach()) for k in range(4)) / 4


def _trainer(obj: DiffMaskObjective, data: TensorDataset, steps: int, **kw: object) -> Trainer:
    # Multipliers frozen (lr 0): the gates then minimise a fixed objective, which must fall.
    opt = diffmask_optimizer(obj, lr=1e-3, lr_placeholder=1e-3, lr_alpha=0.0)
    return Trainer(obj, opt, lambda net, b: net(b[0])["loss"], data, 8, steps, progress=False, seed=5, **kw)


def test_a_few_steps_on_the_benchmark_lower_the_loss() -> None:
    torch.manual_seed(0)
    model = make_vit("cls")
    data = _benchmark(48)
    obj = DiffMaskObjective(model, DiffMaskGates.for_model(model, seed=0))
    held = torch.stack([data[i][0] for i in range(16)])
    before = _fixed_loss(obj, held)
    _trainer(obj, data, 12).fit()
    after = _fixed_loss(obj, held)
    assert after < before - 0.2, f"loss {before:.3f} -> {after:.3f}"


def test_resume_matches_an_uninterrupted_run(tmp_path) -> None:
    model, data = make_vit("cls"), _benchmark(32)

    def fresh() -> DiffMaskObjective:
        torch.manual_seed(0)
        return DiffMaskObjective(model, DiffMaskGates.for_model(model, seed=0))

    straight = fresh()
    _trainer(straight, data, 6).fit()
    first = fresh()
    _trainer(first, data, 3, checkpoint_dir=tmp_path, checkpoint_every=3).fit()
    resumed = fresh()
    _trainer(resumed, data, 6, checkpoint_dir=tmp_path, checkpoint_every=3).fit(resume=True)
    for (k, v), w in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert_close(w, v, "fp32_loose", k)
