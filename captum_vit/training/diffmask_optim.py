"""Adam with Lookahead, and per-group box constraints (the optimiser of Vision DiffMask,
methods.md §6.3)."""

from __future__ import annotations

from typing import Any

import torch


class LookaheadAdam(torch.optim.Adam):
    """Adam with Lookahead (Zhang et al., NeurIPS 2019): every ``k`` steps the weights move
    ``la_alpha`` of the way from the slow copy to the fast ones and both continue from there.

    A parameter group may carry ``bounds=(low, high)``: its parameters are clipped after
    every step (the projection of the Lagrange multipliers). The slow weights live in the
    optimiser state, so ``state_dict()`` checkpoints them.

    Examples
    --------
    >>> w = torch.nn.Parameter(torch.tensor([1.0]))
    >>> opt = LookaheadAdam([{"params": [w], "lr": 1.0, "maximize": True, "bounds": (0.0, 1.5)}], k=2)
    >>> for _ in range(2):
    ...     w.grad = torch.tensor([1.0])
    ...     opt.step()
    >>> w  # two ascent steps clipped to 1.5, then halfway back to the slow weight 1.0
    Parameter containing:
    tensor([1.2500], requires_grad=True)
    """

    def __init__(self, params: Any, k: int = 6, la_alpha: float = 0.5, **kwargs: Any) -> None:
        if k < 1 or not 0.0 < la_alpha <= 1.0:
            raise ValueError(f"lookahead needs k >= 1 and 0 < la_alpha <= 1, got k={k}, la_alpha={la_alpha}")
        super().__init__(params, **kwargs)
        self.lookahead_k, self.la_alpha = k, la_alpha

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:  # type: ignore[override]
        # Adam initialises a parameter's state only while it is empty, so the slow copy of a
        # new parameter is taken now but stored after Adam's step.
        fresh = {
            p: p.detach().clone()
            for g in self.param_groups
            for p in g["params"]
            if p.grad is not None and "slow" not in self.state[p]
        }
        loss = super().step(closure)
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:  # Adam skipped it too
                    continue
                st = self.state[p]
                if p in fresh:
                    st["slow"], st["la_step"] = fresh[p], 0
                if group.get("bounds") is not None:
                    p.clamp_(*group["bounds"])  # projected gradient step; slow weights stay feasible
                st["la_step"] += 1
                if st["la_step"] % self.lookahead_k == 0:
                    st["slow"].add_(p - st["slow"], alpha=self.la_alpha)
                    p.copy_(st["slow"])
        return loss
