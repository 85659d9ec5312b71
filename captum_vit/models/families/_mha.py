"""An explicit forward of ``nn.MultiheadAttention`` whose probabilities pass through a probe.

``nn.MultiheadAttention`` computes its attention inside ``F.multi_head_attention_forward``
(fused ``scaled_dot_product_attention`` when no weights are asked for), so no module ever
outputs the probabilities. :func:`explicit_mha` recomputes the same function from the
module's own weights (``in_proj_weight`` / ``q_proj_weight``..., ``in_proj_bias``,
``bias_k`` / ``bias_v``, ``add_zero_attn``, ``out_proj``) with the post-softmax
probabilities ``(B, heads, Nq, Nk)`` passed through a probe module, whose output replaces
them: a forward hook on the probe reads them, or returns a replacement.

:func:`probed_mha` installs that forward on given ``nn.MultiheadAttention`` modules (of a
private view) for the duration, with the probe registered as a child of each module. The
torchvision ViT family and Hugging Face's SigLIP pooling head both use it.
"""

from __future__ import annotations

import math
import types
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from captum_vit.models.vit import PROBE_NAME

#: Name of the probe child installed by :func:`probed_mha`.
MHA_PROBE = PROBE_NAME


def _projections(mha: nn.MultiheadAttention) -> tuple[Tensor, Tensor, Tensor]:
    if mha._qkv_same_embed_dim:
        assert mha.in_proj_weight is not None  # set by nn.MultiheadAttention when kdim == vdim == embed_dim
        wq, wk, wv = mha.in_proj_weight.chunk(3)
        return wq, wk, wv
    assert mha.q_proj_weight is not None and mha.k_proj_weight is not None and mha.v_proj_weight is not None
    return mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight


def _additive(mask: Tensor, like: Tensor, name: str) -> Tensor:
    """A boolean mask (``True``: not attended) or a float one as an additive float mask."""
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=like.dtype, device=like.device).masked_fill(mask, float("-inf"))
    if not mask.is_floating_point():
        raise TypeError(f"{name} must be a bool or floating-point tensor, got dtype {mask.dtype}")
    return mask.to(like.dtype)


def explicit_mha(
    mha: nn.MultiheadAttention,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    probe: nn.Module,
    key_padding_mask: Tensor | None = None,
    attn_mask: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """``mha(query, key, value)`` computed explicitly, the probabilities passed through ``probe``.

    Parameters
    ----------
    mha : nn.MultiheadAttention
        The module whose weights are used (batch-first or not, with or without biases,
        ``add_bias_kv`` and ``add_zero_attn``).
    query, key, value : Tensor
        As ``mha.forward`` takes them: ``(B, N, D)`` when ``mha.batch_first``, else
        ``(N, B, D)``; or unbatched ``(N, D)``.
    probe : nn.Module
        Applied to the post-softmax probabilities ``(B, heads, Nq, Nk)``; its output replaces
        them (dropout, in training mode, comes after it, as in PyTorch).
    key_padding_mask, attn_mask : Tensor, optional
        As ``mha.forward`` takes them (boolean ``True`` = not attended, or additive floats;
        ``attn_mask`` ``(Nq, Nk)`` or ``(B * heads, Nq, Nk)``).

    Returns
    -------
    tuple[Tensor, Tensor]
        The attention output, shaped as ``query``, and the probe's output ``(B, heads, Nq, Nk)``.

    Examples
    --------
    >>> mha = nn.MultiheadAttention(8, 2, batch_first=True).eval()
    >>> x = torch.randn(3, 5, 8)
    >>> out, probs = explicit_mha(mha, x, x, x, nn.Identity())
    >>> torch.allclose(out, mha(x, x, x, need_weights=False)[0], atol=1e-6)
    True
    >>> tuple(probs.shape), torch.allclose(probs.sum(-1), torch.ones(3, 2, 5))
    ((3, 2, 5, 5), True)
    """
    unbatched = query.dim() == 2
    if unbatched:
        query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
        if key_padding_mask is not None:
            key_padding_mask = key_padding_mask.unsqueeze(0)
    elif not mha.batch_first:
        query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
    b, nq, d = query.shape
    heads, hd = mha.num_heads, mha.head_dim
    wq, wk, wv = _projections(mha)
    bq = bk = bv = None
    if mha.in_proj_bias is not None:
        bq, bk, bv = mha.in_proj_bias.chunk(3)
    q, k, v = F.linear(query, wq, bq), F.linear(key, wk, bk), F.linear(value, wv, bv)

    mask = None if attn_mask is None else _additive(attn_mask, q, "attn_mask")
    pad = None if key_padding_mask is None else _additive(key_padding_mask, q, "key_padding_mask")
    if mha.bias_k is not None and mha.bias_v is not None:
        k = torch.cat([k, mha.bias_k.expand(b, 1, -1)], dim=1)
        v = torch.cat([v, mha.bias_v.expand(b, 1, -1)], dim=1)
        mask = None if mask is None else F.pad(mask, (0, 1))
        pad = None if pad is None else F.pad(pad, (0, 1))

    q = q.reshape(b, nq, heads, hd).transpose(1, 2)
    k = k.reshape(b, k.shape[1], heads, hd).transpose(1, 2)
    v = v.reshape(b, v.shape[1], heads, hd).transpose(1, 2)
    if mha.add_zero_attn:
        k = torch.cat([k, k.new_zeros(b, heads, 1, hd)], dim=2)
        v = torch.cat([v, v.new_zeros(b, heads, 1, hd)], dim=2)
        mask = None if mask is None else F.pad(mask, (0, 1))
        pad = None if pad is None else F.pad(pad, (0, 1))

    logits = (q / math.sqrt(hd)) @ k.transpose(-2, -1)
    if mask is not None:
        logits = logits + (mask.reshape(b, heads, nq, -1) if mask.dim() == 3 else mask)
    if pad is not None:
        logits = logits + pad[:, None, None, :]
    probs = probe(logits.softmax(dim=-1))
    attn = F.dropout(probs, p=mha.dropout, training=mha.training)
    out = (attn @ v).transpose(1, 2).reshape(b, nq, d)
    out = mha.out_proj(out)
    if unbatched:
        out = out.squeeze(0)
    elif not mha.batch_first:
        out = out.transpose(0, 1)
    return out, probs


def _probed_forward(
    self: nn.MultiheadAttention,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    key_padding_mask: Tensor | None = None,
    need_weights: bool = True,
    attn_mask: Tensor | None = None,
    average_attn_weights: bool = True,
    is_causal: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """``nn.MultiheadAttention.forward``'s signature and result, computed by :func:`explicit_mha`."""
    if is_causal and attn_mask is None:
        raise RuntimeError("is_causal=True needs attn_mask, as in nn.MultiheadAttention.forward")
    probe = self._modules[MHA_PROBE]
    if probe is None:
        raise RuntimeError("the attention probe was removed while probed_mha() was active")
    out, probs = explicit_mha(self, query, key, value, probe, key_padding_mask, attn_mask)
    if not need_weights:
        return out, None
    weights = probs.mean(dim=1) if average_attn_weights else probs
    return out, weights.squeeze(0) if query.dim() == 2 else weights


@contextmanager
def probed_mha(modules: Sequence[nn.MultiheadAttention]) -> Iterator[list[nn.Module]]:
    """Make each module's attention explicit for the duration; yield the probes.

    Each module gets an identity probe child named :data:`MHA_PROBE` and an instance-level
    forward computing :func:`explicit_mha`; both are removed on exit, also when the body raises.
    It changes the modules it is given: call it on a private view's modules only.

    Raises
    ------
    TypeError
        If a module is not an ``nn.MultiheadAttention``.

    Examples
    --------
    >>> mha = nn.MultiheadAttention(8, 2).eval()
    >>> x = torch.randn(5, 3, 8)
    >>> with probed_mha([mha]) as (probe,):
    ...     seen = []
    ...     _ = probe.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    ...     _ = mha(x, x, x, need_weights=False)
    >>> seen, MHA_PROBE in mha._modules, "forward" in mha.__dict__
    ([torch.Size([3, 2, 5, 5])], False, False)
    """
    for m in modules:
        if not isinstance(m, nn.MultiheadAttention):
            raise TypeError(f"modules must be nn.MultiheadAttention, got {type(m).__name__}")
    probes: list[nn.Module] = []
    try:
        for m in modules:
            probe = nn.Identity()
            m._modules[MHA_PROBE] = probe
            m.forward = types.MethodType(_probed_forward, m)  # type: ignore[method-assign]
            probes.append(probe)
        yield probes
    finally:
        for m in modules:
            m._modules.pop(MHA_PROBE, None)
            m.__dict__.pop("forward", None)
