"""The stretched-and-rectified binary concrete ("hard concrete") gate of Vision DiffMask.

Louizos, Welling & Kingma, "Learning Sparse Neural Networks through L0 Regularization",
ICLR 2018, §4; with the constants of the official Vision DiffMask code (Nalmpantis et al.,
"Vision DiffMask", CVPRW 2023, §3).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

#: Hard-concrete constants of the official Vision DiffMask code. Note r = 1.0, not the
#: usual 1.1 of Louizos et al.: a gate reaches exactly 1 only in the limit.
TEMPERATURE, STRETCH_LOW, STRETCH_HIGH = 0.2, -0.2, 1.0


def hard_concrete_sample(
    logits: Tensor,
    temperature: float = TEMPERATURE,
    low: float = STRETCH_LOW,
    high: float = STRETCH_HIGH,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Reparameterised sample of the stretched-and-rectified binary concrete gate.

    ``s = sigmoid((logits + log(u) - log(1-u)) / temperature)``, stretched to ``(low, high)``
    and clamped to ``[0, 1]`` (Louizos et al., ICLR 2018, eq. 10-11).

    Examples
    --------
    >>> g = hard_concrete_sample(torch.zeros(1000), generator=torch.Generator().manual_seed(0))
    >>> bool(g.min() >= 0) and bool(g.max() <= 1)
    True
    """
    u = torch.rand(logits.shape, generator=generator, dtype=logits.dtype, device=logits.device)
    u = u.clamp(1e-6, 1 - 1e-6)
    s = torch.sigmoid((logits + torch.log(u) - torch.log1p(-u)) / temperature)
    return (s * (high - low) + low).clamp(0.0, 1.0)


def log_prob_nonzero(
    logits: Tensor, temperature: float = TEMPERATURE, low: float = STRETCH_LOW, high: float = STRETCH_HIGH
) -> Tensor:
    """Closed-form ``log P(gate != 0)`` of :func:`hard_concrete_sample`: the log expected L0.

    The gate is non-zero when the unstretched sample exceeds ``u0 = -low / (high - low)``;
    with logistic noise that is ``-softplus(temperature * logit(u0) - logits)``.

    Examples
    --------
    >>> round(log_prob_nonzero(torch.tensor(0.0)).exp().item(), 4)
    0.5798
    """
    u0 = -low / (high - low)
    return -F.softplus(temperature * math.log(u0 / (1 - u0)) - logits)


def expected_keep(logits: Tensor, layer: int = -1) -> Tensor:
    """Inference map: the expected keep probability at hidden state ``layer``, the product of
    ``P(gate != 0)`` over states ``0..layer`` (the paper's cumulative aggregation, §3).

    Parameters
    ----------
    logits : Tensor
        ``(states, B, patches)`` gate logits.

    Returns
    -------
    Tensor
        ``(B, patches)`` in [0, 1].
    """
    return log_prob_nonzero(logits).cumsum(0)[layer].exp()
