"""Vision DiffMask's objective and faithfulness measure: the KL constraint around the gates.

Training minimises the expected number of kept patches under the constraint
``KL(p_orig ‖ p_masked) ≤ ε``, with one Lagrange multiplier per hidden state (De Cao et al.,
EMNLP 2020, §3; Nalmpantis et al., CVPRW 2023, §3). :class:`DiffMaskObjective` is that
Lagrangian; :func:`evaluate_gates` measures trained gates on held-out images. The training
loop and its optimiser are those of ``captum-vit train-diffmask``.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from captum_vit.explainers.diffmask_gates import DiffMaskGates
from captum_vit.explainers.hard_concrete import expected_keep, hard_concrete_sample, log_prob_nonzero

#: Positions the L0 term of :class:`DiffMaskObjective` can average over.
L0_POSITIONS = ("all", "patches")


def kl_divergence(logits_p: Tensor, logits_q: Tensor) -> Tensor:
    """Per-example ``KL(p || q)`` between the softmax distributions of two logit tensors.

    Examples
    --------
    >>> kl_divergence(torch.tensor([[0.0, 0.0]]), torch.tensor([[0.0, 0.0]]))
    tensor([0.])
    """
    logp, logq = F.log_softmax(logits_p, -1), F.log_softmax(logits_q, -1)
    return (logp.exp() * (logp - logq)).sum(-1)


class DiffMaskObjective(nn.Module):
    """The trainable DiffMask system: gates, placeholder and one Lagrange multiplier per
    hidden state, around a frozen private copy of the explainee.

    ``forward(images)`` draws a hidden state ``k`` (uniformly, or proportionally to
    ``layer_weights``), samples hard-concrete gates for states ``0..k`` and multiplies them
    (a patch survives only if every gate keeps it), runs the masked ViT and returns

        L = α_k · (KL(p_orig ‖ p_masked) − ε) + mean_positions Σ_{j≤k} log P(g_j ≠ 0)

    The gates and placeholder minimise L; the multipliers ``alphas`` maximise it (the
    optimiser of ``captum-vit train-diffmask``, ``diffmask_optimizer``, ascends on them and
    clips them to ``[0, alpha_max]``).

    The L0 term averages over every gated position by default, the prefix tokens (class
    token, ...) included, as the official code (``expected_L0.mean(-1)`` over all 197 positions
    of ViT-B/16): the gate networks also score the prefix positions, although only patch
    embeddings are ever masked. ``l0_positions="patches"`` averages over the patches only (what
    this package did before; the term differs by 0.5-1.9 % on the two ViTs compared).

    The KL here is a real ``KL(p_orig ‖ p_masked)`` between the full softmax distributions.
    The official repository's evaluation "KL" is not a KL: it is the cross-entropy of the
    masked prediction to the one-hot original class.

    Parameters
    ----------
    model : nn.Module
        The explainee (timm ViT). A frozen deep copy is used; ``model`` is never modified.
    gates : DiffMaskGates, optional
        Gates to train (default: fresh gates for ``model``).
    epsilon : float
        KL tolerance ε (default 0.1).
    alpha_init, alpha_max : float
        Initial multiplier (20) and its upper clip (200).
    layer_weights : sequence of float, optional
        Unnormalised probabilities of drawing each hidden state (default uniform).
    l0_positions : str
        Positions the L0 term averages over: ``"all"`` (default, official: prefix tokens and
        patches) or ``"patches"``.

    References
    ----------
    Nalmpantis et al., "Vision DiffMask: Faithful Interpretation of Vision Transformers with
    Differentiable Patch Masking", CVPR Workshops 2023; De Cao et al., "How do Decisions
    Emerge across Layers in Neural Models? Interpretation with Differentiable Masking",
    EMNLP 2020, §3 (Lagrangian relaxation).

    Examples
    --------
    >>> import timm
    >>> m = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3,
    ...                       depth=2, img_size=32).eval()
    >>> obj = DiffMaskObjective(m, DiffMaskGates.for_model(m, seed=0))
    >>> out = obj(torch.rand(2, 3, 32, 32))
    >>> sorted(out)
    ['keep', 'kl', 'l0', 'layer', 'loss']
    >>> DiffMaskObjective(m, l0_positions="tokens")
    Traceback (most recent call last):
    ...
    ValueError: l0_positions must be 'all' or 'patches', got 'tokens'
    """

    layer_weights: Tensor

    def __init__(
        self,
        model: nn.Module,
        gates: DiffMaskGates | None = None,
        epsilon: float = 0.1,
        alpha_init: float = 20.0,
        alpha_max: float = 200.0,
        layer_weights: Iterable[float] | None = None,
        l0_positions: str = "all",
    ) -> None:
        super().__init__()
        if l0_positions not in L0_POSITIONS:
            raise ValueError(f"l0_positions must be 'all' or 'patches', got {l0_positions!r}")
        self.l0_positions = l0_positions
        frozen = copy.deepcopy(model).requires_grad_(False)
        # Kept out of the module tree: the explainee is neither trained, nor saved with the
        # gates, nor wrapped by DistributedDataParallel.
        self._explainee: tuple[nn.Module] = (frozen,)
        self.gates = gates if gates is not None else DiffMaskGates.for_model(model)
        self.gates.check_model(frozen)
        k = int(self.gates.config["num_states"])
        self.alphas = nn.Parameter(torch.full((k,), float(alpha_init)))
        self.epsilon, self.alpha_max = float(epsilon), float(alpha_max)
        w = torch.ones(k) if layer_weights is None else torch.as_tensor(list(layer_weights), dtype=torch.float)
        if w.shape != (k,) or (w < 0).any() or w.sum() <= 0:
            raise ValueError(f"layer_weights must be {k} non-negative numbers with a positive sum, got {w.tolist()}")
        self.register_buffer("layer_weights", w / w.sum(), persistent=False)

    @property
    def explainee(self) -> nn.Module:
        return self._explainee[0]

    def _apply(self, fn: Any, recurse: bool = True) -> DiffMaskObjective:
        # .to()/.cuda() move the private explainee copy along with the gates.
        self._explainee[0]._apply(fn, recurse)
        return super()._apply(fn, recurse)

    def forward(self, images: Tensor, layer: int | None = None) -> dict[str, Tensor]:
        model = self.explainee
        everywhere = self.l0_positions == "all"
        logits, original = self.gates.logits_and_output(model, images, prefix=everywhere)
        k = int(torch.multinomial(self.layer_weights, 1)) if layer is None else layer % logits.shape[0]
        # Index the stacked tensors (rather than slicing the list) so every gate network and
        # every multiplier is part of the graph: DDP then needs no find_unused_parameters.
        log_l0 = log_prob_nonzero(logits).cumsum(0)[k]
        if everywhere:  # the prefix positions count in the L0 term only; they are never masked
            logits = logits[..., int(self.gates.check_model(model).num_prefix_tokens) :]
        keep = hard_concrete_sample(logits).cumprod(0)[k]
        masked = self.gates.masked_output(model, images, keep)
        kl = kl_divergence(original, masked).mean()
        loss = self.alphas[k] * (kl - self.epsilon) + log_l0.mean()
        return {
            "loss": loss,
            "kl": kl.detach(),
            "l0": log_l0.detach().exp().mean(),
            "keep": (keep.detach() > 0).float().mean(),
            "layer": torch.tensor(k),
        }


@torch.no_grad()
def evaluate_gates(
    model: nn.Module, gates: DiffMaskGates, images: Tensor, seed: int = 0, batch_size: int = 100
) -> dict[str, float]:
    """Held-out faithfulness of trained gates on normalised ``images``, at the last state.

    Returns
    -------
    dict of str to float
        ``kl`` and ``agreement``: the mean real ``KL(p_orig ‖ p_masked)`` and the fraction of
        unchanged predictions with sampled hard-concrete gates (as trained; seeded); ``kept``:
        the fraction of patches those gates keep; ``kl_expected`` / ``expected_keep``: the same
        with the deterministic expected keep probability (the attribution map) as a soft mask.

    Examples
    --------
    >>> import timm
    >>> m = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3,
    ...                       depth=1, img_size=32).eval()
    >>> sorted(evaluate_gates(m, DiffMaskGates.for_model(m, seed=0), torch.rand(2, 3, 32, 32)))
    ['agreement', 'expected_keep', 'kept', 'kl', 'kl_expected']
    """
    totals = dict.fromkeys(("kl", "agreement", "kept", "kl_expected", "expected_keep"), 0.0)
    gen = torch.Generator(device=images.device).manual_seed(seed)
    for start in range(0, images.shape[0], batch_size):
        x = images[start : start + batch_size]
        logits, original = gates.logits_and_output(model, x)
        sampled = hard_concrete_sample(logits, generator=gen).prod(0)
        soft = expected_keep(logits)
        masked, masked_soft = gates.masked_output(model, x, sampled), gates.masked_output(model, x, soft)
        totals["kl"] += float(kl_divergence(original, masked).sum())
        totals["agreement"] += float((masked.argmax(-1) == original.argmax(-1)).sum())
        totals["kept"] += float((sampled > 0).float().mean(-1).sum())
        totals["kl_expected"] += float(kl_divergence(original, masked_soft).sum())
        totals["expected_keep"] += float(soft.mean(-1).sum())
    return {k: v / images.shape[0] for k, v in totals.items()}
