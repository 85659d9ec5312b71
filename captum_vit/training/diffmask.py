"""Vision DiffMask: gate networks, the hard-concrete distribution and the Lagrangian objective.

Vision DiffMask (Nalmpantis et al., CVPRW 2023; methods.md §6) adapts DiffMask (De Cao et al.,
EMNLP 2020) to ViTs. Small gate networks read the frozen ViT's hidden states and predict, per
patch, whether the patch-embedding output may be replaced by one learned placeholder vector
without moving the output distribution further than a KL tolerance ε. Training minimises the
expected number of kept patches under that constraint, with one Lagrange multiplier per hidden
state.

This module holds the model and the loss; :mod:`captum_vit.training.diffmask_train` trains it,
:class:`captum_vit.attr.VisionDiffMask` turns trained gates into attributions.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm

from captum_vit.models.hooks import record_hidden_states, replace_patch_embeddings
from captum_vit.models.vit import ViTAdapter
from captum_vit.training.diffmask_hard_concrete import (
    STRETCH_HIGH,
    STRETCH_LOW,
    TEMPERATURE,
    expected_keep,
    hard_concrete_sample,
    log_prob_nonzero,
)
from captum_vit.training.diffmask_optim import LookaheadAdam

__all__ = [
    "STRETCH_HIGH",
    "STRETCH_LOW",
    "TEMPERATURE",
    "DiffMaskGates",
    "DiffMaskObjective",
    "GateNetwork",
    "LookaheadAdam",
    "expected_keep",
    "hard_concrete_sample",
    "kl_divergence",
    "log_prob_nonzero",
    "model_fingerprint",
]


class GateNetwork(nn.Module):
    """One gate: ``concat(h_0, h_i)`` → weight-norm Linear(2d→d/4) → tanh → weight-norm
    Linear(d/4→1) → tanh → ``× mul_activation + add_activation`` (a learnable scalar).
    The output is one hard-concrete logit per token (methods.md §6.2)."""

    def __init__(self, embed_dim: int, mul_activation: float = 15.0, add_activation: float = 8.0) -> None:
        super().__init__()
        hidden = max(1, embed_dim // 4)
        self.net = nn.Sequential(
            weight_norm(nn.Linear(2 * embed_dim, hidden)),
            nn.Tanh(),
            weight_norm(nn.Linear(hidden, 1)),
            nn.Tanh(),
        )
        self.mul_activation = mul_activation
        self.add_activation = nn.Parameter(torch.tensor(float(add_activation)))

    def forward(self, h0: Tensor, hi: Tensor) -> Tensor:
        return self.net(torch.cat([h0, hi], dim=-1)).squeeze(-1) * self.mul_activation + self.add_activation


class DiffMaskGates(nn.Module):
    """All gate networks of one explainee plus the learned placeholder vector.

    Parameters
    ----------
    embed_dim : int
        The ViT's token width ``d``.
    num_states : int
        Hidden states read: ``num_blocks + 2`` (patch embedding, each block's input, the last
        block's output).
    mul_activation, add_activation : float
        Gate output scale and initial offset (the paper's CLI defaults 15 and 8, methods.md §6.3).
    placeholder : bool
        Learn the placeholder (Xavier-normal init); ``False`` uses a fixed zero vector
        (the official ``--no_placeholder``).
    fingerprint : str
        :func:`model_fingerprint` of the explainee the gates were trained for ("" if unknown).

    Examples
    --------
    >>> import timm
    >>> m = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3,
    ...                       depth=2, img_size=32).eval()
    >>> gates = DiffMaskGates.for_model(m, seed=0)
    >>> with torch.no_grad():
    ...     logits = gates.gate_logits(m, torch.rand(2, 3, 32, 32))
    >>> tuple(logits.shape)  # (hidden states, batch, patches)
    (4, 2, 4)
    """

    def __init__(
        self,
        embed_dim: int,
        num_states: int,
        mul_activation: float = 15.0,
        add_activation: float = 8.0,
        placeholder: bool = True,
        fingerprint: str = "",
    ) -> None:
        super().__init__()
        if embed_dim < 1 or num_states < 1:
            raise ValueError(f"embed_dim and num_states must be positive, got {embed_dim}, {num_states}")
        self.config = dict(
            embed_dim=int(embed_dim),
            num_states=int(num_states),
            mul_activation=float(mul_activation),
            add_activation=float(add_activation),
            placeholder=bool(placeholder),
        )
        self.fingerprint = fingerprint
        self.gates = nn.ModuleList(GateNetwork(embed_dim, mul_activation, add_activation) for _ in range(num_states))
        value = torch.empty(1, 1, embed_dim)
        if placeholder:
            self.placeholder = nn.Parameter(nn.init.xavier_normal_(value))
        else:
            self.register_buffer("placeholder", value.zero_())

    @classmethod
    def for_model(cls, model: nn.Module, seed: int | None = None, **kwargs: Any) -> DiffMaskGates:
        """Untrained gates sized for ``model``; with ``seed`` the initialisation is
        deterministic and the caller's global RNG is left as it was."""
        adapter = ViTAdapter(model)
        embed_dim = _token_width(adapter)
        kwargs.setdefault("fingerprint", model_fingerprint(model))
        if seed is None:
            return cls(embed_dim, adapter.num_blocks + 2, **kwargs)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return cls(embed_dim, adapter.num_blocks + 2, **kwargs)

    def check_model(self, model: nn.Module) -> ViTAdapter:
        """The model's adapter, after checking the gates fit its width and depth."""
        adapter = ViTAdapter(model)
        d = _token_width(adapter)
        k = adapter.num_blocks + 2
        if (d, k) != (self.config["embed_dim"], self.config["num_states"]):
            raise ValueError(
                f"gates were built for embed_dim={self.config['embed_dim']} and "
                f"{self.config['num_states']} hidden states; the model has {d} and {k}"
            )
        return adapter

    def gate_logits(self, model: nn.Module, x: Tensor, forward_args: tuple[Any, ...] = ()) -> Tensor:
        """Run ``model`` once (without gradient) and return the ``(states, B, patches)`` gate
        logits; :meth:`logits_and_output` also returns the model output."""
        return self.logits_and_output(model, x, forward_args)[0]

    def logits_and_output(
        self, model: nn.Module, x: Tensor, forward_args: tuple[Any, ...] = ()
    ) -> tuple[Tensor, Tensor]:
        """Gate logits ``(states, B, patches)`` and the unmasked model output ``(B, classes)``.

        The ViT runs without gradient (it is frozen, methods.md §6.1); the gate networks run
        with gradient when it is enabled. Prefix-token positions get no gate: the placeholder
        only replaces patch tokens.
        """
        adapter = self.check_model(model)
        p = adapter.num_prefix_tokens
        with torch.no_grad(), record_hidden_states(adapter) as hs:
            out = _logits(model(x, *forward_args))
        states = [s for s in hs.states if s is not None]
        if len(states) != len(self.gates):
            raise RuntimeError(f"recorded {len(states)} hidden states, expected {len(self.gates)}")
        h0 = states[0].detach()
        patches = [h0] + [s.detach()[:, p:] for s in states[1:]]
        return torch.stack([g(h0, h) for g, h in zip(self.gates, patches, strict=True)]), out

    def masked_output(self, model: nn.Module, x: Tensor, keep: Tensor, forward_args: tuple[Any, ...] = ()) -> Tensor:
        """Model output with each patch embedding ``h`` replaced by ``keep*h + (1-keep)*b``
        (``keep``: ``(B, patches)`` in [0, 1]; ``b`` the placeholder; methods.md §6.1)."""

        def mix(h: Tensor) -> Tensor:
            g = keep.to(h.dtype).unsqueeze(-1)
            return g * h + (1 - g) * self.placeholder.to(h.dtype)

        with replace_patch_embeddings(model, mix):
            return _logits(model(x, *forward_args))

    # ----------------------------------------------------------------- persistence
    def save(self, path: str | Path) -> None:
        """Write the gates as safetensors, with the configuration in the file's metadata."""
        meta = {"config": json.dumps(self.config), "fingerprint": self.fingerprint}
        save_file({k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}, str(path), metadata=meta)

    @classmethod
    def load(cls, path: str | Path) -> DiffMaskGates:
        """Read gates written by :meth:`save`."""
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        if "config" not in meta:
            raise ValueError(f"{path} is not a DiffMask gate file (no 'config' metadata)")
        gates = cls(**json.loads(meta["config"]), fingerprint=meta.get("fingerprint", ""))
        gates.load_state_dict(load_file(str(path)))
        return gates


def _token_width(adapter: ViTAdapter) -> int:
    """The width of the patch-embedding output (the tokens the placeholder replaces)."""
    return int(adapter.model.patch_embed.proj.out_channels)  # type: ignore[union-attr, arg-type]


def _logits(out: Tensor | tuple[Tensor, ...]) -> Tensor:
    if isinstance(out, tuple):  # distilled models in distillation-training mode
        return sum(out) / len(out)  # type: ignore[return-value]
    return out


def model_fingerprint(model: nn.Module) -> str:
    """A short SHA-256 over the model's parameter names, shapes and values: identifies the
    explainee a gate checkpoint was trained for.

    Examples
    --------
    >>> model_fingerprint(nn.Linear(2, 2)) == model_fingerprint(nn.Linear(2, 2))
    False
    """
    h = hashlib.sha256()
    for name, p in model.state_dict().items():
        h.update(name.encode())
        h.update(str(tuple(p.shape)).encode())
        h.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def kl_divergence(logits_p: Tensor, logits_q: Tensor) -> Tensor:
    """Per-example ``KL(p || q)`` between the softmax distributions of two logit tensors."""
    logp, logq = F.log_softmax(logits_p, -1), F.log_softmax(logits_q, -1)
    return (logp.exp() * (logp - logq)).sum(-1)


class DiffMaskObjective(nn.Module):
    """The trainable DiffMask system: gates, placeholder and one Lagrange multiplier per
    hidden state, around a frozen private copy of the explainee.

    ``forward(images)`` draws a hidden state ``k`` (uniformly, or proportionally to
    ``layer_weights``), samples hard-concrete gates for states ``0..k`` and multiplies them
    (a patch survives only if every gate keeps it), runs the masked ViT and returns

        L = α_k · (KL(p_orig ‖ p_masked) − ε) + mean_patches Σ_{j≤k} log P(g_j ≠ 0)

    (methods.md §6.3). The gates and placeholder minimise L; the multipliers maximise it
    (use :meth:`optimizer`, whose multiplier group has ``maximize=True`` and is clipped to
    ``[0, alpha_max]`` after every step).

    The KL here is a real ``KL(p_orig ‖ p_masked)`` between the full softmax distributions.
    The official repository's evaluation "KL" is not a KL: it is the cross-entropy of the
    masked prediction to the one-hot original class (methods.md §6.7 item 3).

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
    ) -> None:
        super().__init__()
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
        logits, original = self.gates.logits_and_output(model, images)
        k = int(torch.multinomial(self.layer_weights, 1)) if layer is None else layer % logits.shape[0]
        # Index the stacked tensors (rather than slicing the list) so every gate network and
        # every multiplier is part of the graph: DDP then needs no find_unused_parameters.
        keep = hard_concrete_sample(logits).cumprod(0)[k]
        log_l0 = log_prob_nonzero(logits).cumsum(0)[k]
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

    def optimizer(
        self, lr: float = 2e-5, lr_placeholder: float = 1e-3, lr_alpha: float = 0.3, lookahead_k: int = 6
    ) -> LookaheadAdam:
        """LookaheadAdam over three groups (methods.md §6.3): gate networks (``lr``), the
        placeholder (``lr_placeholder``) and the multipliers (``lr_alpha``, gradient ascent,
        clipped to ``[0, alpha_max]``)."""
        gate_params = [p for n, p in self.gates.named_parameters() if n != "placeholder"]
        groups: list[dict[str, Any]] = [{"params": gate_params, "lr": lr}]
        if isinstance(self.gates.placeholder, nn.Parameter):
            groups.append({"params": [self.gates.placeholder], "lr": lr_placeholder})
        groups.append({"params": [self.alphas], "lr": lr_alpha, "maximize": True, "bounds": (0.0, self.alpha_max)})
        return LookaheadAdam(groups, k=lookahead_k)
