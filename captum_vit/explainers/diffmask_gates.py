"""Vision DiffMask's gate networks: which patch embeddings a ViT can do without.

Vision DiffMask (Nalmpantis et al., CVPRW 2023) adapts DiffMask (De Cao et al., EMNLP 2020)
to ViTs. Small gate networks read the frozen ViT's hidden states and predict, per patch,
whether the patch-embedding output may be replaced by one learned placeholder vector without
moving the output distribution further than a KL tolerance. This module holds the gates (what
inference needs); :mod:`captum_vit.explainers.diffmask_objective` the training objective,
:class:`captum_vit.attr.VisionDiffMask` the attribution.
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm

from captum_vit._io import read_safetensors
from captum_vit.models.fingerprint import (
    HalfCopies,
    check_fingerprint,
    is_fingerprint,
    model_fingerprint,
    read_half_fingerprints,
)
from captum_vit.models.hooks import record_hidden_states, replace_patch_embeddings
from captum_vit.models.preprocess import model_logits
from captum_vit.models.registry import save_weights
from captum_vit.models.vit import ViTAdapter


class GateNetwork(nn.Module):
    """One gate: ``concat(h_0, h_i)`` → weight-norm Linear(2d→d/4) → tanh → weight-norm
    Linear(d/4→1) → tanh → ``× mul_activation + add_activation`` (a learnable scalar).
    The output is one hard-concrete logit per token (the official gate, paper §3)."""

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


class DiffMaskGates(HalfCopies, nn.Module):
    """All gate networks of one explainee plus the learned placeholder vector.

    Parameters
    ----------
    embed_dim : int
        The ViT's token width ``d``.
    num_states : int
        Hidden states read: ``num_blocks + 2`` (patch embedding, each block's input, the last
        block's output).
    mul_activation, add_activation : float
        Gate output scale and initial offset (the official command line's 15 and 8).
    placeholder : bool
        Learn the placeholder (Xavier-normal init); ``False`` uses a fixed zero vector
        (the official ``--no_placeholder``).
    fingerprint : str
        :func:`~captum_vit.models.fingerprint.model_fingerprint` of the explainee the gates were
        trained for; ``""`` for gates not tied to a model (never checked).

    Raises
    ------
    ValueError
        Non-positive sizes, or a ``fingerprint`` that is neither ``""`` nor 64 hex characters.

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
        if fingerprint and not is_fingerprint(fingerprint):
            raise ValueError(f"fingerprint must be '' or a model_fingerprint (64 hex characters), got {fingerprint!r}")
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
        """Untrained gates sized for ``model`` and tied to its fingerprint; with ``seed`` the
        initialisation is deterministic and the caller's global RNG is left as it was."""
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

    def check_weights_for(self, model: nn.Module) -> None:
        """Raise ``ValueError`` (naming both fingerprints) when the gates were trained for other
        weights than ``model``'s; gates without a fingerprint are not checked."""
        if self.fingerprint:
            check_fingerprint(self.fingerprint, model, "DiffMask gates", self._half_fingerprints())

    def _explainee_key(self) -> str:
        return self.fingerprint

    def gate_logits(self, model: nn.Module, x: Tensor, forward_args: tuple[Any, ...] = ()) -> Tensor:
        """Run ``model`` once (without gradient) and return the ``(states, B, patches)`` gate
        logits; :meth:`logits_and_output` also returns the model output."""
        # the output is not read: an embedding model's (no logits) needs no output_fn here
        return self._logits_and_raw_output(model, x, forward_args, prefix=False)[0]

    def logits_and_output(
        self, model: nn.Module, x: Tensor, forward_args: tuple[Any, ...] = (), prefix: bool = False
    ) -> tuple[Tensor, Tensor]:
        """Gate logits ``(states, B, patches)`` and the unmasked model output ``(B, classes)``.

        The ViT runs without gradient (it is frozen); the gate networks run with gradient
        when it is enabled. Only patch positions are masked (the placeholder replaces patch
        embeddings), so by default only they get a gate. With ``prefix=True`` the logits are
        ``(states, B, prefix + patches)``: the prefix positions (class token, ...) get a gate
        too, read from the raw prefix-token parameters at state 0, as the official code does;
        their only use is the official L0 term (``DiffMaskObjective(l0_positions="all")``).
        """
        logits, out = self._logits_and_raw_output(model, x, forward_args, prefix)
        return logits, model_logits(out)

    def _logits_and_raw_output(
        self, model: nn.Module, x: Tensor, forward_args: tuple[Any, ...], prefix: bool
    ) -> tuple[Tensor, Any]:
        adapter = self.check_model(model)
        p = adapter.num_prefix_tokens
        with torch.no_grad(), record_hidden_states(adapter) as hs:
            out = model(x, *forward_args)
        states = [s for s in hs.states if s is not None]
        if len(states) != len(self.gates):
            raise RuntimeError(f"recorded {len(states)} hidden states, expected {len(self.gates)}")
        h0 = states[0].detach()
        if prefix:
            h0 = torch.cat([_prefix_parameters(model, p).detach().to(h0).expand(h0.shape[0], -1, -1), h0], 1)
            tokens = [h0] + [s.detach() for s in states[1:]]
        else:
            tokens = [h0] + [s.detach()[:, p:] for s in states[1:]]
        return torch.stack([g(h0, h) for g, h in zip(self.gates, tokens, strict=True)]), out

    def masked_output(self, model: nn.Module, x: Tensor, keep: Tensor, forward_args: tuple[Any, ...] = ()) -> Tensor:
        """Model output with each patch embedding ``h`` replaced by ``keep*h + (1-keep)*b``
        (``keep``: ``(B, patches)`` in [0, 1]; ``b`` the placeholder)."""

        def mix(h: Tensor) -> Tensor:
            g = keep.to(h.dtype).unsqueeze(-1)
            return g * h + (1 - g) * self.placeholder.to(h.dtype)

        with replace_patch_embeddings(model, mix):
            return model_logits(model(x, *forward_args))

    # ----------------------------------------------------------------- persistence
    def weights_metadata(self) -> dict[str, str]:
        """The safetensors metadata of saved gates: the configuration and the fingerprint."""
        return {"kind": "diffmask", "config": json.dumps(self.config), "fingerprint": self.fingerprint} | (
            self._half_metadata()
        )

    def save(self, path: str | os.PathLike[str]) -> str:
        """Write the gates as safetensors (float32, the configuration in the metadata); returns
        the file's sha256."""
        return save_weights(path, self.state_dict(), self.weights_metadata())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> DiffMaskGates:
        """Read gates written by :meth:`save`.

        Raises
        ------
        ValueError
            A file without the gates' metadata.
        """
        state, meta = read_safetensors(path, "gates")
        if "config" not in meta:
            raise ValueError(f"{path} is not a DiffMask gate file (no 'config' metadata)")
        gates = cls(**json.loads(meta["config"]), fingerprint=meta.get("fingerprint", ""))
        gates.load_state_dict(state)
        gates.vouch_half_fingerprints(read_half_fingerprints(meta, path))
        return gates


def _prefix_parameters(model: nn.Module, count: int) -> Tensor:
    """The raw prefix tokens ``(1, count, d)`` in timm's order (class, distillation, registers):
    what the official code prepends to the patch embeddings to gate the prefix positions."""
    out = ViTAdapter(model).prefix_token_parameters()
    if out.shape[1] != count:
        raise ValueError(f"found {out.shape[1]} prefix-token parameters, the model uses {count} prefix tokens")
    return out


def _token_width(adapter: ViTAdapter) -> int:
    """The width of the patch-embedding output (the tokens the placeholder replaces)."""
    return adapter.embed_dim
