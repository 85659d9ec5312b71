"""DiffMask's L0 term: the official average over every gated position (class token included)
by default, the patches-only average as a named option (issue 18, item 4)."""

from __future__ import annotations

import pytest
import torch

from captum_vit.explainers import DiffMaskGates, DiffMaskObjective, log_prob_nonzero
from captum_vit.models.hooks import record_hidden_states
from captum_vit.models.vit import ViTAdapter
from captum_vit.testing import assert_close, input_for, make_vit


def _official_log_l0(
    model: torch.nn.Module, gates: DiffMaskGates, x: torch.Tensor, k: int, prefix: bool
) -> torch.Tensor:
    """The L0 term written out as the official code computes it: every gate reads
    ``concat(h_0, h_i)`` where ``h_0`` is the patch embedding with the raw prefix tokens
    prepended; ``log P(gate != 0)`` is summed over states 0..k and averaged over positions."""
    p = ViTAdapter(model).num_prefix_tokens
    with torch.no_grad(), record_hidden_states(ViTAdapter(model)) as hs:
        model(x)
    states = [s for s in hs.states if s is not None]
    raw = [getattr(model, n) for n in ("cls_token", "dist_token", "reg_token") if getattr(model, n, None) is not None]
    h0 = torch.cat([torch.cat(raw, 1).expand(x.shape[0], -1, -1), states[0]], 1)
    full = [h0, *states[1:]]
    total = torch.zeros(x.shape[0], h0.shape[1])
    for j in range(k + 1):
        total = total + log_prob_nonzero(gates.gates[j](h0, full[j]))
    return (total if prefix else total[:, p:]).mean()


@pytest.mark.parametrize("kind", ["cls", "dist", "reg"])
@pytest.mark.parametrize("positions", ["all", "patches"])
def test_l0_term_matches_the_official_average(kind: str, positions: str) -> None:
    model = make_vit(kind)
    gates = DiffMaskGates.for_model(model, seed=0)
    x = input_for(model, batch=2)
    # α = 0 leaves the L0 term alone in the loss.
    obj = DiffMaskObjective(model, gates, alpha_init=0.0, l0_positions=positions)
    k = 2
    with torch.no_grad():
        loss = obj(x, layer=k)["loss"]
        expected = _official_log_l0(model, gates, x, k, prefix=positions == "all")
        other = _official_log_l0(model, gates, x, k, prefix=positions != "all")
    assert_close(loss, expected, "fp32", f"L0 term, l0_positions={positions!r}")
    assert not torch.allclose(loss, other, rtol=0, atol=1e-6), "the two averages must differ on this model"


def test_official_average_is_the_default() -> None:
    model = make_vit("cls")
    assert DiffMaskObjective(model, DiffMaskGates.for_model(model, seed=0)).l0_positions == "all"


def test_prefix_gates_do_not_change_what_is_masked() -> None:
    """The prefix gates only enter the L0 term: with the same RNG state both options draw the
    same patch gates, so their KL terms are identical."""
    model = make_vit("reg")
    gates = DiffMaskGates.for_model(model, seed=0)
    x = input_for(model, batch=2)
    kls = []
    for positions in ("all", "patches"):
        torch.manual_seed(3)
        kls.append(DiffMaskObjective(model, gates, l0_positions=positions)(x, layer=1)["kl"])
    assert_close(kls[0], kls[1], "exact")


def test_bad_l0_positions_is_rejected() -> None:
    model = make_vit("cls")
    with pytest.raises(ValueError, match="l0_positions must be 'all' or 'patches'"):
        DiffMaskObjective(model, l0_positions="cls")
