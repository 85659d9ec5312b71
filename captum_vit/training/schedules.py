"""Learning-rate schedules of the training commands (``LambdaLR`` factors per optimiser step)."""

from __future__ import annotations

import math

import torch


def linear_warmup_decay(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_fraction: float = 0.2
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup over ``warmup_fraction`` of ``total_steps``, then linear decay to 0 (the
    official LTX schedule, but computed from the steps actually run rather than from the
    size of its 50k-image training folder)."""
    if not 0.0 <= warmup_fraction < 1.0:
        raise ValueError(f"warmup_fraction must be in [0, 1), got {warmup_fraction}")
    warm = max(1, int(round(warmup_fraction * total_steps)))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return max(0.0, (total_steps - step) / max(1, total_steps - warm))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def warmup_cosine(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``warmup_steps`` (at least one), then cosine decay to 0 at
    ``total_steps``, as DeiT trains ViTs (Touvron et al., ICML 2021, §6).

    Examples
    --------
    >>> opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    >>> sched = warmup_cosine(opt, total_steps=20, warmup_steps=2)
    >>> [round(f(s), 3) for f in sched.lr_lambdas for s in (0, 1, 2, 11, 19)]
    [0.5, 1.0, 1.0, 0.5, 0.008]
    """
    warm = max(1, warmup_steps)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / (total_steps - warm)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
