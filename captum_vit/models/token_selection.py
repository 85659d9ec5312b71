"""Run a ViT on a subset of its patch tokens (MUTEX scores its token masks this way,
docs/methods.md §4.1 step 7).

:func:`keep_patch_tokens` removes the other tokens from the sequence (absolute position
embeddings only); :func:`mask_patch_tokens` computes the same function for models whose
attention depends on token positions, by masking the other tokens out of every attention.
Like every context in :mod:`captum_vit.models.hooks`, they instrument the model they are given
(a private view, in the methods) and remove their hooks on exit.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from captum_vit.models.hooks import removing_hooks
from captum_vit.models.vit import ViTAdapter


@contextmanager
def keep_patch_tokens(model: nn.Module | ViTAdapter, indices: Tensor) -> Iterator[None]:
    """Run the ViT on a subset of patch tokens only (MUTEX, docs/methods.md §4.1 step 7).

    After the position embeddings are added, the sequence is cut to the prefix tokens plus
    the patch tokens ``indices`` (``(B, K)`` long tensor, indices into the patch grid in
    raster order); the other tokens are removed, not replaced by a baseline.

    Examples
    --------
    >>> import timm
    >>> m = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3,
    ...                       depth=1, img_size=32).eval()
    >>> from captum_vit.models.hooks import record_attention
    >>> with keep_patch_tokens(m, torch.tensor([[0, 3]])), record_attention(m) as rec:
    ...     _ = m(torch.rand(1, 3, 32, 32))
    >>> rec.attentions[0].shape[-1]  # class token + 2 kept patches
    3
    """
    adapter = model if isinstance(model, ViTAdapter) else ViTAdapter(model)
    if indices.dim() != 2 or indices.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"indices must be a (batch, kept) integer tensor, got {tuple(indices.shape)} {indices.dtype}")
    p = adapter.num_prefix_tokens

    if not adapter.supports_token_removal:
        raise ValueError(
            f"tokens cannot be removed from a {type(adapter.module).__name__}: its attention depends on token "
            "positions (relative position bias or rotary embeddings)"
        )

    def pre_hook(_m: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        # the first block's input: prefix tokens and position embeddings are in place
        out = args[0]
        if out.shape[0] != indices.shape[0]:
            raise ValueError(f"indices batch {indices.shape[0]} does not match input batch {out.shape[0]}")
        idx = indices.to(out.device).long() + p
        idx = idx.unsqueeze(-1).expand(-1, -1, out.shape[-1])
        return (torch.cat([out[:, :p], out.gather(1, idx)], dim=1), *args[1:])

    with removing_hooks() as handles:
        handles.append(adapter.blocks[0].register_forward_pre_hook(pre_hook))
        yield



@contextmanager
def mask_patch_tokens(model: nn.Module | ViTAdapter, indices: Tensor) -> Iterator[None]:
    """Run the ViT as if only the prefix tokens and the patch tokens ``indices`` were in the
    sequence, without removing any: what :func:`keep_patch_tokens` computes, for models whose
    attention depends on token positions (relative position bias, rotary embeddings; their
    adapter's ``supports_token_removal`` is ``False``). MUTEX scores its masks with it there.

    Every attention's probabilities ``p`` (each block's, and an attention pool's) become
    ``p * keep / sum(p * keep)`` over the keys, which is the softmax with a ``-inf`` logit for
    every removed key: each kept token's state is exactly the one it has when the others are
    removed, and the removed tokens compute states nothing reads. (Exact while some kept key's
    probability is representable: a row whose kept probabilities all underflowed to zero, a
    saturated softmax, gets the uniform distribution over the kept keys.) An average-pooling readout
    would still read them: their final states are replaced by the mean of the kept tokens it
    averages, which leaves that mean the mean over the kept tokens.

    It enters the adapter's :meth:`~captum_vit.models.vit.ViTAdapter.explicit_attention`
    and masks through its probes, ahead of every other hook on them (also ones registered
    before it), so a :func:`record_attention` records, and an override replaces, the masked
    probabilities. Enter it outside :func:`record_attention` where a family's
    ``explicit_attention`` is not re-entrant (the timm adapters' are).

    Parameters
    ----------
    model : nn.Module or ViTAdapter
        A supported ViT (of any family).
    indices : Tensor
        ``(B, K)`` integer indices of the kept patch tokens in raster order (a set: the order
        and repeats do not matter, unlike removal).

    Raises
    ------
    ValueError
        If ``indices`` is not a ``(B, K)`` integer tensor, is out of the patch range, or
        does not match the input batch; ``K = 0`` on a model without prefix tokens (nothing
        to attend to); for a readout the masking cannot follow (e.g. max pooling).

    Examples
    --------
    >>> import timm
    >>> from captum_vit.models.hooks import record_attention
    >>> m = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3,
    ...                       depth=2, img_size=32).eval()
    >>> x, keep = torch.rand(1, 3, 32, 32), torch.tensor([[0, 3]])
    >>> with keep_patch_tokens(m, keep):
    ...     removed = m(x)
    >>> with mask_patch_tokens(m, keep), record_attention(m) as rec:
    ...     masked = m(x)
    >>> a = rec.attentions[0]  # keys: the class token, patches 0 and 3 (positions 1 and 4)
    >>> torch.allclose(masked, removed, atol=1e-5), bool((a[..., [2, 3]] == 0).all())
    (True, True)
    """
    adapter = model if isinstance(model, ViTAdapter) else ViTAdapter(model)
    if indices.dim() != 2 or indices.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"indices must be a (batch, kept) integer tensor, got {tuple(indices.shape)} {indices.dtype}")
    p = adapter.num_prefix_tokens
    if p == 0 and indices.shape[1] == 0:
        raise ValueError("indices must keep at least one patch token of a model without prefix tokens")
    readout = adapter.readout  # raises ValueError for poolings no row readout describes
    cache: dict[tuple[int, torch.device], Tensor] = {}

    def keep_mask(n: int, batch: int, device: torch.device) -> Tensor:
        """``(B, n)`` boolean: prefix tokens and the kept patch tokens."""
        if batch != indices.shape[0]:
            raise ValueError(f"indices batch {indices.shape[0]} does not match input batch {batch}")
        if (n, device) not in cache:
            idx = indices.to(device).long()
            if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n - p):
                raise ValueError(f"indices must be in [0, {n - p}) (the patch tokens), got {idx.min()}..{idx.max()}")
            keep = torch.zeros(batch, n, dtype=torch.bool, device=device)
            keep[:, :p] = True
            keep.scatter_(1, idx + p, True)
            cache[(n, device)] = keep
        return cache[(n, device)]

    def on_probabilities(_m: nn.Module, _inp: tuple[Tensor, ...], out: Tensor) -> Tensor:
        keep = keep_mask(out.shape[-1], out.shape[0], out.device)[:, None, None, :].to(out.dtype)
        kept = out * keep
        total = kept.sum(dim=-1, keepdim=True)
        # A row whose kept probabilities all underflowed to 0 has lost its logits: it gets the
        # uniform distribution over the kept keys instead of 0/0.
        return torch.where(total > 0, kept / total.clamp_min(torch.finfo(out.dtype).tiny), keep / keep.sum(-1, True))

    def on_tokens(_m: nn.Module, _inp: tuple[Tensor, ...], out: Tensor) -> Tensor:
        keep = keep_mask(out.shape[1], out.shape[0], out.device)
        averaged = keep.clone()
        if not readout.include_prefix:
            averaged[:, :p] = False
        w = averaged.to(out.dtype).unsqueeze(-1)
        mean = (out * w).sum(dim=1, keepdim=True) / w.sum(dim=1, keepdim=True)
        return torch.where(keep.unsqueeze(-1), out, mean)

    with adapter.explicit_attention(), removing_hooks() as handles:
        for probe in adapter.attention_probes:
            handles.append(probe.register_forward_hook(on_probabilities, prepend=True))
        pool_probe = adapter.pool_attention_probe()
        if pool_probe is not None:
            handles.append(pool_probe.register_forward_hook(on_probabilities, prepend=True))
        elif readout.rows is None:
            handles.append(adapter.pool_input.register_forward_hook(on_tokens, prepend=True))
        yield
