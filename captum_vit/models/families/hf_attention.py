"""The probed attention of Hugging Face ``transformers`` models (the ``hf`` extra).

Every attention module of the supported vision models calls the function that
``ALL_ATTENTION_FUNCTIONS`` names by its ``config._attn_implementation`` (``"sdpa"`` by
default, which never materialises the probabilities). :func:`probed_hf_attention` gives each
given attention module a probe child and its *own copy* of its config naming
:func:`probe_attention`, registered as ``"captum_vit_probe"``: eager attention whose
post-softmax probabilities pass through the probe. The config object itself is shared with
the user's model through a private view (a shallow copy), so it is never changed.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from captum_vit.models.vit import PROBE_NAME

#: Name of the registered attention function and of the probe child it calls.
PROBE = PROBE_NAME


def probe_attention(
    module: nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **_kwargs: Any,
) -> tuple[Tensor, Tensor]:
    """Hugging Face's eager attention (``(B, heads, N, hd)`` query, key and value) with the
    post-softmax probabilities passed through ``module``'s probe child, whose output is used
    and returned: a forward hook on the probe reads them or returns a replacement.

    Examples
    --------
    >>> attn = nn.Module()
    >>> attn._modules[PROBE] = nn.Identity()
    >>> q = torch.randn(1, 2, 5, 4)
    >>> out, probs = probe_attention(attn, q, q, q, None)
    >>> tuple(out.shape), bool(torch.allclose(probs.sum(-1), torch.ones(1, 2, 5)))
    ((1, 5, 2, 4), True)
    """
    logits = torch.matmul(query, key.transpose(-2, -1)) * (query.shape[-1] ** -0.5 if scaling is None else scaling)
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:  # True: attended (the masks built for sdpa)
            logits = logits.masked_fill(~attention_mask, float("-inf"))
        else:
            logits = logits + attention_mask
    probs = F.softmax(logits, dim=-1, dtype=torch.float32).to(query.dtype)
    probe: Any = module._modules[PROBE]
    probs = probe(probs)
    out = torch.matmul(F.dropout(probs, p=dropout, training=module.training), value)
    return out.transpose(1, 2).contiguous(), probs


def _register_probe() -> None:
    from transformers import AttentionInterface

    if PROBE not in AttentionInterface._global_mapping:
        AttentionInterface.register(PROBE, probe_attention)


@contextmanager
def probed_hf_attention(attentions: Sequence[nn.Module]) -> Iterator[list[nn.Module]]:
    """Make the given attention modules run :func:`probe_attention` for the duration; yield
    their probes. Each module's ``config`` is rebound to a copy (one per distinct config) and
    rebound back on exit, also when the body raises; the original config is never written.
    Modules already probed by an enclosing call are left as they are.

    Raises
    ------
    TypeError
        If a module has no ``config`` with an ``_attn_implementation`` field.
    """
    for a in attentions:
        if "_attn_implementation_internal" not in getattr(getattr(a, "config", None), "__dict__", {}):
            raise TypeError(f"{type(a).__name__} has no config._attn_implementation to dispatch its attention on")
    _register_probe()
    # Re-entrant: modules an enclosing call already probes keep their probe (and its hooks).
    fresh = [a for a in attentions if PROBE not in a._modules]
    saved = [a.__dict__["config"] for a in fresh]
    copies: dict[int, Any] = {}
    try:
        for a, cfg in zip(fresh, saved):
            if id(cfg) not in copies:
                own = copy.copy(cfg)
                # the field, not the property's setter, which also writes into the sub-configs
                # that a shallow copy shares with the original
                own.__dict__["_attn_implementation_internal"] = PROBE
                copies[id(cfg)] = own
            a.__dict__["config"] = copies[id(cfg)]
            a._modules[PROBE] = nn.Identity()
        yield [a._modules[PROBE] for a in attentions]  # type: ignore[misc]
    finally:
        for a, cfg in zip(fresh, saved):
            a.__dict__["config"] = cfg
            a._modules.pop(PROBE, None)
