"""MUTEX (docs/methods.md §4): statistics on hand-made cases, and the whole method against a
straightforward loop reference (per image, per mask, one forward each; scipy statistics;
token dropping written out on timm's modules)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats as sps
from torch import nn

from captum_vit.attr import MUTEX, get_method
from captum_vit.attr.mutex import STATISTICS, MutexMasks, kept_count_index, node_statistics, quantile_masks
from captum_vit.models.hooks import record_attention
from captum_vit.testing import assert_close, input_for, make_vit

# ----------------------------------------------------------------- statistics


def _stats(values: list[float], median: str = "lower") -> dict[str, float]:
    c = torch.tensor(values, dtype=torch.float64)[:, None]  # (layers, 1 node)
    return dict(zip(STATISTICS, node_statistics(c, median)[:, 0].tolist()))


def test_statistics_hand_made_general_node() -> None:
    s = _stats([1.0, 2.0, 3.0, 4.0])
    q = np.array([0.1, 0.2, 0.3, 0.4])
    std = math.sqrt(1.25)
    expected = {
        "coherence": float(-(q * np.log(q)).sum()),
        "max": 4.0,
        "min": 1.0,
        "sum": 10.0,
        "std": std,
        "sum_std": 10.0 / std,
        "median": 2.0,  # even number of layers: the lower middle value, as torch.median (official)
        "skewness": 0.0,
        "kurtosis": 2.5625 / 1.5625 - 3.0,  # m4 / m2^2 - 3
    }
    for k, v in expected.items():
        assert s[k] == pytest.approx(v, rel=1e-12, abs=1e-9), k  # 1e-9: rounding of scale-free stats
    averaged = _stats([1.0, 2.0, 3.0, 4.0], median="mean_of_middle")
    assert averaged == {**s, "median": 2.5}  # only the median changes: mean of the middle two


def test_median_options_differ_only_for_an_even_layer_count() -> None:
    even = torch.tensor([[4.0, 1.0], [1.0, 1.0], [2.0, 3.0], [8.0, 3.0]], dtype=torch.float64)  # 4 layers, 2 nodes
    lower, mean = node_statistics(even, "lower"), node_statistics(even, "mean_of_middle")
    med = STATISTICS.index("median")
    # sorted node 0: 1 2 4 8 -> lower 2, mean 3; node 1: 1 1 3 3 -> lower 1, mean 2
    assert lower[med].tolist() == [2.0, 1.0] and mean[med].tolist() == [3.0, 2.0]
    assert torch.equal(torch.cat([lower[:med], lower[med + 1 :]]), torch.cat([mean[:med], mean[med + 1 :]]))
    # a constant third node at 2.5 sits between node 0's two medians, so the top token changes
    three = torch.cat([even, torch.full((4, 1), 2.5, dtype=torch.float64)], dim=1)
    lo_mask = quantile_masks(node_statistics(three, "lower")[med], 1.0)
    mean_mask = quantile_masks(node_statistics(three, "mean_of_middle")[med], 1.0)
    assert lo_mask.tolist() == [False, False, True] and mean_mask.tolist() == [True, False, False]
    odd = even[:3]
    assert torch.equal(node_statistics(odd, "lower"), node_statistics(odd, "mean_of_middle"))
    with pytest.raises(ValueError, match="median"):
        node_statistics(even, "middle")


def test_statistics_hand_made_skewed_node() -> None:
    s = _stats([0.0, 0.0, 1.0, 0.0])
    assert s["coherence"] == 0.0  # all mass in one layer: 0 log 0 = 0
    assert s["median"] == 0.0 and s["sum"] == 1.0
    assert s["skewness"] == pytest.approx(2 / math.sqrt(3), abs=1e-9)
    assert s["kurtosis"] == pytest.approx(-2 / 3, abs=1e-9)
    assert s["std"] == pytest.approx(math.sqrt(0.1875), rel=1e-12)


def test_statistics_edge_cases_constant_and_zero_nodes() -> None:
    const = _stats([2.0, 2.0, 2.0])
    assert const["coherence"] == pytest.approx(math.log(3), abs=1e-9)
    assert const["std"] == 0.0 and const["skewness"] == 0.0 and const["kurtosis"] == 0.0
    assert const["sum_std"] == math.inf and const["median"] == 2.0
    zero = _stats([0.0, 0.0, 0.0])
    assert all(zero[k] == 0.0 for k in STATISTICS)
    single = _stats([5.0])  # starting_layer = last block: one layer
    assert single["coherence"] == 0.0 and single["median"] == 5.0 and single["sum_std"] == math.inf
    assert not torch.isnan(node_statistics(torch.rand(3, 2, 7))).any()
    with pytest.raises(ValueError, match="centrality"):
        node_statistics(torch.zeros(0, 4))


def test_quantile_masks_threshold_index_and_ties() -> None:
    assert kept_count_index(196, 0.5) == 97
    assert kept_count_index(10, 0.7) == 6  # 10*0.7 is 7.000000000000001 in floating point
    assert kept_count_index(4, 1.0) == 3
    s = torch.tensor([[4.0, 1.0, 3.0, 2.0], [0.0, 0.0, 0.0, 5.0], [1.0, 1.0, 1.0, 1.0]])
    m = quantile_masks(s, 0.5)  # threshold = 2nd smallest value
    assert m.tolist() == [[True, False, True, True], [True, True, True, True], [True] * 4]
    assert quantile_masks(s, 1.0)[0].tolist() == [True, False, False, False]
    assert quantile_masks(torch.tensor([math.inf, 1.0, math.inf, 0.0]), 0.75).tolist() == [True, False, True, False]


def test_vote_hand_made() -> None:
    masks = torch.tensor([[[1, 1, 0], [0, 1, 0]]], dtype=torch.bool)  # 1 image, 2 masks, 3 tokens
    probs = torch.tensor([[0.2, 0.6]])
    v = MutexMasks(masks, probs, ["a", "b"], torch.tensor([0])).vote()
    assert_close(v, torch.tensor([[0.2, 0.4, 0.0]]), "fp32")  # token 2 in no mask: max(1, 0)


# ------------------------------------------------------------ loop reference


def _reference_masks(
    attn: np.ndarray, p: int, min_cut: float, token_ratio: float, start: int, median: str
) -> np.ndarray:
    """One image's ``(54, n)`` masks from its ``(L, heads, N, N)`` attention, in loops."""
    masks = []
    for op in (np.min, np.max, np.sum):
        ins, outs = [], []
        for layer in range(start, attn.shape[0]):
            g = op(attn[layer], axis=0)[p:, p:].astype(np.float64)
            g = np.where(g < min_cut * g.max(), 0.0, g)
            ins.append(g.sum(axis=0))
            outs.append(g.sum(axis=1))
        for cent in (np.array(ins), np.array(outs)):  # (layers, n)
            for name in STATISTICS:
                score = np.array([_node_stat(cent[:, j], name, median) for j in range(cent.shape[1])])
                thr = np.sort(score)[math.ceil(len(score) * token_ratio) - 1]
                masks.append(score >= thr)
    return np.array(masks)


def _node_stat(c: np.ndarray, name: str, median: str = "lower") -> float:
    if name == "median":  # torch.median (the official code) takes the lower middle value; np.median averages
        return float(np.sort(c)[(len(c) - 1) // 2]) if median == "lower" else float(np.median(c))
    value = _raw_node_stat(c, name)  # scale-free statistics are rounded to 9 decimals (documented)
    return (
        round(value, 9) if name in ("coherence", "sum_std", "skewness", "kurtosis") and math.isfinite(value) else value
    )


def _raw_node_stat(c: np.ndarray, name: str) -> float:
    const = c.max() == c.min()
    if name == "coherence":
        return 0.0 if c.sum() == 0 else float(sps.entropy(c))
    if name == "sum_std":
        return (math.inf if c.sum() > 0 else 0.0) if const else float(c.sum() / np.std(c))
    if name in ("skewness", "kurtosis"):
        return 0.0 if const else float(sps.skew(c) if name == "skewness" else sps.kurtosis(c))
    fn = {"max": np.max, "min": np.min, "sum": np.sum, "std": np.std}[name]
    return float(fn(c))


def _forward_kept(model: nn.Module, x1: torch.Tensor, keep: np.ndarray) -> torch.Tensor:
    """Logits of the ViT run on the prefix tokens plus the ``keep`` patch tokens only."""
    p = model.num_prefix_tokens
    t = model._pos_embed(model.patch_embed(x1))
    t = torch.cat([t[:, :p], t[:, p + torch.as_tensor(np.flatnonzero(keep))]], dim=1)
    return model.forward_head(model.norm(model.blocks(model.norm_pre(t))))


def _reference(model: nn.Module, x: torch.Tensor, targets: list[int | None], **opts: float | str) -> tuple:
    min_cut, ratio = float(opts.get("min_cut", 0.01)), float(opts.get("token_ratio", 0.5))
    start, median = int(opts.get("starting_layer", 0)), str(opts.get("median", "lower"))
    all_masks, all_probs = [], []
    with torch.no_grad():
        for i, t in enumerate(targets):
            x1 = x[i : i + 1]
            with record_attention(model) as rec:
                logits = model(x1)
            t = int(logits.argmax()) if t is None else t
            masks = _reference_masks(
                rec.stacked()[:, 0].numpy(), model.num_prefix_tokens, min_cut, ratio, start, median
            )
            probs = [float(_forward_kept(model, x1, m).softmax(-1)[0, t]) for m in masks]
            all_masks.append(masks)
            all_probs.append(probs)
    masks_t, probs_t = torch.as_tensor(np.array(all_masks)), torch.tensor(all_probs)
    vote = (masks_t.double() * probs_t[..., None]).sum(1) / masks_t.sum(1).clamp_min(1)
    return masks_t, probs_t, vote


@pytest.mark.parametrize(
    ("kind", "opts"),
    [
        ("cls", {}),
        ("cls", {"min_cut": 0.3, "token_ratio": 0.7, "starting_layer": 1}),
        ("cls", {"median": "mean_of_middle"}),
        ("dist", {}),
        ("reg", {"token_ratio": 0.25}),
        ("avg", {}),
        ("rect", {"min_cut": 0.1}),
        ("dynamic", {}),  # run at 40x48, not the model's 32x32
    ],
)
def test_matches_loop_reference(kind: str, opts: dict[str, float | str]) -> None:
    model = make_vit(kind)
    x = (
        torch.randn(2, 3, 40, 48, generator=torch.Generator().manual_seed(3))
        if kind == "dynamic"
        else input_for(model, 2)
    )
    targets: list[int | None] = [0, 3]  # class 0 must be honoured (official code: truthiness bug)
    method = MUTEX(model, internal_batch_size=17, **opts)  # type: ignore[arg-type]
    got = method.explain_masks(x, torch.tensor(targets))
    ref_masks, ref_probs, ref_vote = _reference(model, x, targets, **opts)
    assert torch.equal(got.masks, ref_masks)
    assert got.targets.tolist() == targets
    assert_close(got.probabilities, ref_probs, "fp32_loose", f"{kind} mask probabilities")
    h, w = method.vit.grid_size(tuple(x.shape[-2:]))
    pmap = method.attribute(x, target=targets, return_patch_map=True)
    assert_close(pmap, ref_vote.reshape(-1, h, w).float(), "fp32_loose", f"{kind} map")
    full = method.attribute(x, target=targets)
    assert full.shape == x.shape and torch.equal(full[:, 0, :: x.shape[-2] // h, :: x.shape[-1] // w], pmap)


def test_masks_keep_different_counts_and_batching_is_invariant() -> None:
    """Ties make masks keep different numbers of tokens; grouping by count and chunking
    must not change anything, and a batch equals its examples run alone."""
    model = make_vit("cls")
    x = input_for(model, batch=3, seed=5)
    ref = MUTEX(model, min_cut=0.3, internal_batch_size=1).explain_masks(x)
    assert ref.masks.sum(-1).unique().numel() >= 2, "test needs masks of different sizes"
    assert ref.masks.shape == (3, 54, 16) and len(ref.names) == 54 and ref.names[0] == "min/in/coherence"
    for ibs in (5, 54, 1000):
        got = MUTEX(model, min_cut=0.3, internal_batch_size=ibs).explain_masks(x)
        assert torch.equal(got.masks, ref.masks)
        assert_close(got.probabilities, ref.probabilities, "fp32_loose", f"internal_batch_size={ibs}")
    for i in range(3):
        single = MUTEX(model, min_cut=0.3).explain_masks(x[i : i + 1])
        assert torch.equal(single.masks[0], ref.masks[i])
        assert_close(single.probabilities[0], ref.probabilities[i], "fp32_loose")


def test_target_none_explains_prediction_and_class_zero_differs() -> None:
    model = make_vit("cls")
    x = input_for(model, batch=4)
    pred = model(x).argmax(1)
    method = MUTEX(model)
    none = method.explain_masks(x)
    assert torch.equal(none.targets, pred)
    zero = method.explain_masks(x, torch.zeros(4, dtype=torch.long))
    assert torch.equal(zero.masks, none.masks)  # masks do not depend on the class
    differs = pred != 0
    assert differs.any(), "test needs an image not predicted as class 0"
    assert not torch.allclose(zero.probabilities[differs], none.probabilities[differs])


def test_registered_and_options_validated() -> None:
    assert get_method("mutex") is MUTEX
    model = make_vit("cls")
    assert MUTEX(model).interpolate_mode == "nearest"
    bad = [
        {"min_cut": -0.1},
        {"min_cut": 1.5},
        {"token_ratio": 0.0},
        {"token_ratio": 1.2},
        {"starting_layer": 2},
        {"starting_layer": -1},
        {"internal_batch_size": 0},
        {"head_fusions": ("median",)},
        {"head_fusions": ()},
        {"impl": "cuda"},
        {"median": "middle"},
    ]
    for opts in bad:
        with pytest.raises(ValueError, match=next(iter(opts))):
            MUTEX(model, **opts)  # type: ignore[arg-type]
    m = MUTEX(model, head_fusions=("sum",), token_ratio=1.0).explain_masks(input_for(model, batch=1))
    assert m.masks.shape == (1, 18, 16) and (m.masks.sum(-1) >= 1).all()


def test_memory_budget_groups_images_without_changing_the_map() -> None:
    """A budget below one image's graphs builds them one image at a time; the map is the same."""
    model = make_vit("reg")
    x = input_for(model, batch=3)
    seen: list[int] = []
    handle = model.patch_embed.register_forward_hook(lambda _m, inp, _o: seen.append(int(inp[0].shape[0])))
    try:
        whole = MUTEX(model).attribute(x, target=[0, 1, 2], return_patch_map=True)
        assert seen[0] == 3  # one graph pass over the batch, then the scoring passes
        seen.clear()
        one_by_one = MUTEX(model, memory_budget=1).attribute(x, target=[0, 1, 2], return_patch_map=True)
        assert seen[:3] == [1, 1, 1], seen
    finally:
        handle.remove()
    assert_close(one_by_one, whole, "exact")
    with pytest.raises(ValueError, match="memory_budget"):
        MUTEX(model, memory_budget=0)
