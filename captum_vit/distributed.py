"""Joining a ``torchrun`` launch: the one place that talks to ``torch.distributed`` set-up.

Training (:class:`captum_vit.training.Trainer`) and dataset evaluation (``captum-vit evaluate``)
both run multi-process under ``torchrun``; both join through :func:`init_distributed` and leave
through :func:`shutdown`, so a process group created here is destroyed here and one created by
the caller is left alone.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """Whether a process group is initialised (by us or by the caller)."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank, 0 without a process group."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """The number of processes, 1 without a process group."""
    return dist.get_world_size() if is_distributed() else 1


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands in a launch.

    ``owns_group`` is true when :func:`init_distributed` created the process group, so that
    :func:`shutdown` destroys only what it created.
    """

    rank: int
    world_size: int
    device: torch.device
    owns_group: bool


def _launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_distributed(device: str | torch.device | None = None) -> DistributedContext:
    """Join the ``torchrun`` launch described by the environment, if any.

    Uses nccl when the processes run on CUDA (one GPU per ``LOCAL_RANK``), gloo otherwise.
    Without torchrun's variables (or with ``WORLD_SIZE=1``) it creates nothing. An existing
    process group (created by the caller) is joined as it is.

    Parameters
    ----------
    device
        ``"cpu"``, ``"cuda"`` or ``"cuda:N"``; ``None`` picks CUDA when available. Under torchrun
        a bare ``"cuda"`` becomes ``cuda:LOCAL_RANK``.

    Returns
    -------
    DistributedContext

    Examples
    --------
    >>> ctx = init_distributed("cpu")
    >>> (ctx.rank, ctx.world_size, ctx.device.type, ctx.owns_group)
    (0, 1, 'cpu', False)
    """
    want = torch.device(device) if device is not None else None
    use_cuda = (want.type == "cuda") if want is not None else torch.cuda.is_available()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        index = want.index if want is not None and want.index is not None else local
        chosen = torch.device("cuda", index if (_launched_by_torchrun() or is_distributed()) else (index or 0))
    else:
        chosen = torch.device("cpu")
    owns = False
    if not is_distributed() and _launched_by_torchrun():
        if use_cuda:
            torch.cuda.set_device(chosen)
        dist.init_process_group("nccl" if use_cuda else "gloo")
        owns = True
    return DistributedContext(rank(), world_size(), chosen, owns)


def shutdown(ctx: DistributedContext) -> None:
    """Destroy the process group if :func:`init_distributed` created it."""
    if ctx.owns_group and is_distributed():
        dist.destroy_process_group()
