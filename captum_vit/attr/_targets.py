"""Turn every captum target form into one per-example class index."""

from __future__ import annotations

import numbers
from typing import Any

import torch
from torch import Tensor


def format_targets(target: Any, batch_size: int, num_classes: int) -> Tensor | None:
    """Normalise a captum ``TargetType`` to a ``(batch_size,)`` long tensor (CPU).

    Accepted forms (captum ``_select_targets`` for a ``(B, classes)`` output): ``None``
    (resolved later to the predicted class), an ``int``, a one-element tuple, a 0-d or
    one-element tensor, a 1-D tensor / ``list[int]`` / ``list[tuple]`` of length ``B``.

    ``num_classes`` 0 skips the upper range check (a model whose class count is unknown
    until it runs: :func:`resolve_targets` checks it on the scores); negative indices are
    always refused.

    Raises
    ------
    ValueError
        Wrong length, out-of-range class, or a multi-index tuple.
    TypeError
        Any other type.

    Examples
    --------
    >>> format_targets([2, (0,)], batch_size=2, num_classes=3)
    tensor([2, 0])
    >>> format_targets(1, batch_size=3, num_classes=3)
    tensor([1, 1, 1])
    >>> format_targets(None, batch_size=3, num_classes=3) is None
    True
    """
    if target is None:
        return None
    if isinstance(target, tuple):
        if len(target) != 1:
            raise ValueError(f"target tuple must hold one class index for a classifier, got {target}")
        target = target[0]
    if isinstance(target, bool):
        raise TypeError("target must be an int, tuple, list or tensor of class indices, got bool")
    if isinstance(target, numbers.Integral):  # int, numpy integers
        idx = torch.full((batch_size,), int(target), dtype=torch.long)
    elif isinstance(target, Tensor):
        if target.is_floating_point() or target.is_complex():
            raise TypeError(f"target tensor must hold integers, got dtype {target.dtype}")
        t = target.detach().cpu().long().flatten()
        if t.numel() == 1:
            idx = t.expand(batch_size).clone()
        elif target.dim() == 1 and t.numel() == batch_size:
            idx = t
        else:
            raise ValueError(f"target tensor must be a scalar or have shape ({batch_size},), got {tuple(target.shape)}")
    elif isinstance(target, list):
        if len(target) != batch_size:
            raise ValueError(f"target list must have one entry per example ({batch_size}), got {len(target)}")
        flat: list[int] = []
        for item in target:
            entry: Any = item
            if isinstance(entry, tuple):
                if len(entry) != 1:
                    raise ValueError(f"target list entries must be single class indices, got {entry}")
                entry = entry[0]
            if isinstance(entry, Tensor) and entry.numel() == 1:
                entry = int(entry.item())
            if not isinstance(entry, numbers.Integral) or isinstance(entry, bool):
                raise TypeError(f"target list entries must be ints, got {type(entry).__name__}")
            flat.append(int(entry))
        idx = torch.tensor(flat, dtype=torch.long)
    else:
        raise TypeError(f"target must be None, an int, a tuple, a list or a tensor, got {type(target).__name__}")
    if (idx < 0).any():
        raise ValueError(f"target must hold class indices >= 0, got {idx[idx < 0][0].item()}")
    if num_classes > 0 and (idx >= num_classes).any():
        bad = idx[idx >= num_classes][0].item()
        raise ValueError(f"target {bad} is out of range for a model with {num_classes} classes")
    return idx


def resolve_targets(target: Tensor | None, logits: Tensor) -> Tensor:
    """``target`` on the logits' device, or the predicted class where ``target`` is None."""
    if logits.dim() != 2:
        raise ValueError(f"the model must return (batch, classes) logits, got shape {tuple(logits.shape)}")
    if target is None:
        return logits.detach().argmax(dim=1)
    if target.shape[0] != logits.shape[0]:
        raise ValueError(f"target has {target.shape[0]} entries for a batch of {logits.shape[0]}")
    if (target >= logits.shape[1]).any() or (target < 0).any():
        bad = int(target[(target >= logits.shape[1]) | (target < 0)][0])
        raise ValueError(f"target {bad} is out of range for {logits.shape[1]} scores")
    return target.to(logits.device)
