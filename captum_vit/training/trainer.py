"""A small, generic training loop shared by the explainer trainings (LTX, DiffMask).

What it does
------------
* iterates a map-style dataset in a seeded, epoch-dependent order (``DistributedSampler``
  with ``set_epoch``, also for one process), so the data order depends only on ``seed``;
* calls ``loss_fn(model, batch)`` and takes one optimiser step (and one scheduler step) per
  batch; ``loss_fn`` returns the loss, or ``(loss, {"name": float, ...})`` for the progress
  bar and the history;
* shows a ``tqdm`` progress bar (rank 0 only);
* every ``checkpoint_every`` steps writes ``last.pt`` atomically (a temporary file in the same
  folder, then ``os.replace``) holding the model, optimiser and scheduler states, the RNG
  states of torch (CPU and CUDA), numpy and Python (per rank), the step and the best metric;
* every ``validate_every`` steps calls ``validate(model, step) -> float`` (rank 0, under a
  forked RNG so validation never changes the training stream) and writes ``best.pt`` when the
  metric improves (``higher_is_better`` picks the direction);
* ``fit(resume=True)`` continues from ``last.pt``: because the data order, the RNG states and
  the step are restored, a run killed after its last checkpoint and resumed ends with the
  same weights as an uninterrupted run with the same seed (up to float non-associativity);
  a checkpoint written with another ``seed`` or ``batch_size``, or other ``metadata`` (e.g.
  the explainee's weights fingerprint), is refused before anything is loaded;
* a non-finite loss stops training with :class:`NonFiniteLossError` before the bad step is
  applied; the last good checkpoint on disk is left untouched;
* ``amp="bf16"`` or ``"fp16"`` runs ``loss_fn`` under ``torch.autocast`` (fp16 with a
  gradient scaler, whose state is checkpointed); ``num_workers`` worker processes load the
  batches, into pinned memory when training on CUDA;
* under ``torchrun`` (or any initialised ``torch.distributed`` process group) the model is
  wrapped in ``DistributedDataParallel``, each rank takes ``batch_size // world_size``
  examples of every global batch, and only rank 0 validates and writes checkpoints.
  :func:`captum_vit.distributed.init_distributed` joins torchrun's launch (gloo on CPU, nccl
  on CUDA). With a deterministic per-example-mean loss, 2-process training equals 1-process
  training with the same global ``batch_size``;
* a dataset with a ``set_epoch(epoch)`` method is told each epoch before it is read, so it
  can render fresh examples per epoch (as the classifiers' training does).

Requirements on the caller: ``loss_fn`` should return a mean over the examples of the batch
(DDP averages the ranks' gradients); randomness inside ``loss_fn`` must come from torch,
numpy or Python's global generators (their states are checkpointed); BatchNorm layers in
training mode make DDP differ from one process (their statistics are per rank).

Examples
--------
>>> import torch
>>> from torch.utils.data import TensorDataset
>>> torch.manual_seed(0)  # doctest: +ELLIPSIS
<torch._C.Generator object at ...>
>>> data = TensorDataset(torch.randn(16, 3), torch.randn(16, 1))
>>> model = torch.nn.Linear(3, 1)
>>> def loss_fn(m, batch):
...     x, y = batch
...     return ((m(x) - y) ** 2).mean()
>>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
>>> result = Trainer(model, opt, loss_fn, data, batch_size=4, max_steps=8, progress=False).fit()
>>> result.step
8
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm.auto import tqdm

from captum_vit.distributed import is_distributed, rank, world_size
from captum_vit.training.checkpoint import (
    atomic_save,
    load_checkpoint,
    move_to,
    resume_conflict,
    rng_state,
    set_rng_state,
)

LossOutput = Tensor | tuple[Tensor, Mapping[str, float]]
LossFn = Callable[[nn.Module, Any], LossOutput]
ValidateFn = Callable[[nn.Module, int], float]

LAST, BEST = "last.pt", "best.pt"


class NonFiniteLossError(FloatingPointError):
    """Raised when a training loss is NaN or infinite; training stops before that step."""


@dataclass
class TrainResult:
    """What :meth:`Trainer.fit` returns."""

    step: int
    best_metric: float | None
    best_step: int | None
    history: list[dict[str, float]] = field(default_factory=list)
    last_checkpoint: Path | None = None
    best_checkpoint: Path | None = None


def _all_finite(loss: Tensor) -> bool:
    ok = torch.isfinite(loss.detach()).all().to(torch.float32).reshape(1)
    if is_distributed():  # every rank must stop together
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    return bool(ok.item() > 0)


# -------------------------------------------------------------------------- trainer
class Trainer:
    """Train ``model`` by minimising ``loss_fn`` over ``dataset`` (see the module docstring).

    Parameters
    ----------
    model : nn.Module
        The trained network (not a user's explainee); it is put in training mode.
    optimizer : torch.optim.Optimizer
        Over ``model``'s trainable parameters.
    loss_fn : callable
        ``loss_fn(model, batch) -> loss`` or ``(loss, logs)``; ``model`` is the DDP wrapper
        when distributed, so call it rather than its submodules for gradient averaging.
    dataset : Dataset
        A map-style dataset; batches are collated with ``collate_fn``.
    batch_size : int
        The global batch size (divisible by the world size).
    max_steps : int
        Total optimiser steps (across epochs).
    scheduler : LRScheduler, optional
        Stepped once per optimiser step.
    validate : callable, optional
        ``validate(model, step) -> float`` on the unwrapped model; called every
        ``validate_every`` steps and after the last step.
    higher_is_better : bool
        Direction of the validation metric (False: lower is better, as positive-perturbation AUC).
    checkpoint_dir : str or Path, optional
        Where ``last.pt`` and ``best.pt`` go; None disables checkpointing.
    checkpoint_every, validate_every : int
        Intervals in optimiser steps.
    seed : int
        Seeds the data order (and nothing else: seed the model yourself).
    grad_clip : float, optional
        Clip the global gradient norm to this value.
    device : torch.device, optional
        Defaults to the device of the model's first parameter.
    collate_fn, num_workers :
        Passed to the ``DataLoader``.
    pin_memory, amp :
        Pinned-memory batches (default: on CUDA); mixed precision ``"bf16"``/``"fp16"`` (CUDA).
    drop_last : bool
        Drop each epoch's last, incomplete batch (default); ``False`` trains on it too, so an
        epoch is ``ceil(len(dataset) / batch_size)`` steps (per-process counts under DDP).
    progress : bool
        Show the tqdm bar (rank 0 only).
    metadata : mapping, optional
        Plain values stored in ``last.pt`` under ``"metadata"`` (e.g. ``{"explainee_fingerprint":
        ...}``); resuming from a checkpoint whose metadata gives another value for one of these
        keys is refused.

    Raises
    ------
    ValueError
        For a non-positive ``batch_size``/``max_steps``/interval, a batch size the world size
        does not divide, a dataset smaller than one batch, or (from :meth:`fit` with
        ``resume=True``) an unreadable ``last.pt`` or a checkpoint whose model, ``seed``,
        ``batch_size`` or ``metadata`` does not match this trainer's.
    NonFiniteLossError
        From :meth:`fit`, when a loss is NaN or infinite.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        loss_fn: LossFn,
        dataset: Dataset,
        batch_size: int,
        max_steps: int,
        *,
        scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
        validate: ValidateFn | None = None,
        higher_is_better: bool = False,
        checkpoint_dir: str | Path | None = None,
        checkpoint_every: int = 100,
        validate_every: int = 100,
        seed: int = 0,
        grad_clip: float | None = None,
        device: torch.device | str | None = None,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        num_workers: int = 0,
        drop_last: bool = True,
        progress: bool = True,
        pin_memory: bool | None = None,
        amp: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        for name, v in (("batch_size", batch_size), ("max_steps", max_steps)):
            if not isinstance(v, int) or v <= 0:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        for name, v in (("checkpoint_every", checkpoint_every), ("validate_every", validate_every)):
            if not isinstance(v, int) or v <= 0:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if batch_size % world_size():
            raise ValueError(f"batch_size {batch_size} must be divisible by the world size {world_size()}")
        self.local_batch = batch_size // world_size()
        if len(dataset) // world_size() < self.local_batch:  # type: ignore[arg-type]
            raise ValueError(f"dataset of {len(dataset)} examples is smaller than one batch of {batch_size}")  # type: ignore[arg-type]
        self.model, self.optimizer, self.loss_fn, self.dataset = model, optimizer, loss_fn, dataset
        self.batch_size, self.max_steps, self.scheduler = batch_size, max_steps, scheduler
        self.validate, self.higher_is_better = validate, higher_is_better
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.checkpoint_every, self.validate_every = checkpoint_every, validate_every
        self.seed, self.grad_clip, self.progress = seed, grad_clip, progress
        self.collate_fn, self.num_workers = collate_fn, num_workers
        self.metadata = dict(metadata or {})
        if device is None:
            p = next(model.parameters(), None)
            device = p.device if p is not None else torch.device("cpu")
        self.device = torch.device(device)
        if amp not in (None, "bf16", "fp16"):
            raise ValueError(f"amp must be None, 'bf16' or 'fp16', got {amp!r}")
        if amp == "fp16" and self.device.type != "cuda":
            raise ValueError("amp='fp16' needs a CUDA device; use 'bf16' on the CPU")
        self.amp_dtype = {None: None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=amp == "fp16")
        self.pin_memory = self.device.type == "cuda" if pin_memory is None else pin_memory
        self.sampler: DistributedSampler[Any] = DistributedSampler(
            dataset, num_replicas=world_size(), rank=rank(), shuffle=True, seed=seed, drop_last=True
        )
        self.drop_last = drop_last
        per_rank = len(self.sampler)
        self.steps_per_epoch = per_rank // self.local_batch if drop_last else -(-per_rank // self.local_batch)
        self.step = 0
        self.best_metric: float | None = None
        self.best_step: int | None = None
        self.history: list[dict[str, float]] = []

    # --------------------------------------------------------------- checkpoints
    def _paths(self) -> tuple[Path | None, Path | None]:
        if self.checkpoint_dir is None:
            return None, None
        return self.checkpoint_dir / LAST, self.checkpoint_dir / BEST

    def state_dict(self) -> dict[str, Any]:
        rngs: list[Any] = [rng_state()]
        if is_distributed():
            rngs = [None] * world_size()
            dist.all_gather_object(rngs, rng_state())
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict(),
            "rng": rngs,
            "step": self.step,
            "best_metric": self.best_metric,
            "best_step": self.best_step,
            "history": self.history,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "metadata": self.metadata,
        }

    def check_resumable(self, state: Mapping[str, Any]) -> None:
        """Raise ``ValueError`` when ``state`` was written with another ``seed`` or
        ``batch_size`` (an exact resume needs both), or with ``metadata`` that gives another
        value for one of this trainer's metadata keys; older checkpoints without a field pass."""
        conflict = resume_conflict(state, {"seed": self.seed, "batch_size": self.batch_size, **self.metadata})
        if conflict is None:
            return
        name, theirs, ours = conflict
        if name in ("seed", "batch_size"):
            raise ValueError(
                f"the checkpoint was written with {name}={theirs!r}, this trainer has {name}={ours!r}: "
                "an exact resume needs the same value"
            )
        raise ValueError(f"the checkpoint was written with {name} {theirs!r}, this trainer has {ours!r}")

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict` (model, optimiser, scheduler, RNG, counters), after
        :meth:`check_resumable`."""
        self.check_resumable(state)
        try:
            self.model.load_state_dict(state["model"])
        except RuntimeError as e:
            raise ValueError(f"checkpoint does not match the model being trained: {e}") from None
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        rngs = state["rng"]
        set_rng_state(rngs[rank()] if rank() < len(rngs) else rngs[0])
        self.step, self.best_metric, self.best_step = int(state["step"]), state["best_metric"], state["best_step"]
        self.history = list(state.get("history", []))

    def _save_last(self) -> None:
        last, _ = self._paths()
        if last is None:
            return
        state = self.state_dict()  # collective under DDP: every rank takes part
        if rank() == 0:
            atomic_save(state, last)

    # ---------------------------------------------------------------- validation
    def _run_validation(self) -> None:
        if self.validate is None:
            return
        metric = [float("nan")]
        if rank() == 0:
            was_training = self.model.training
            with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
                self.model.eval()
                with torch.no_grad():
                    metric[0] = float(self.validate(self.model, self.step))
                self.model.train(was_training)
        if is_distributed():
            dist.broadcast_object_list(metric, src=0)
        value = metric[0]
        self.history.append({"step": float(self.step), "val": value})
        better = self.best_metric is None or (
            value > self.best_metric if self.higher_is_better else value < self.best_metric
        )
        if math.isfinite(value) and better:
            self.best_metric, self.best_step = value, self.step
            _, best = self._paths()
            if best is not None and rank() == 0:
                atomic_save({"model": self.model.state_dict(), "step": self.step, "metric": value}, best)

    # ---------------------------------------------------------------------- loop
    def _batches(self, epoch: int, skip: int) -> DataLoader:
        self.sampler.set_epoch(epoch)
        set_epoch = getattr(self.dataset, "set_epoch", None)
        if callable(set_epoch):
            set_epoch(epoch)
        indices = list(self.sampler)[skip * self.local_batch : self.steps_per_epoch * self.local_batch]
        # A dedicated generator: DataLoader draws a base seed when iterated, which must not
        # consume the global RNG (a resumed run creates its loader at a different point).
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return DataLoader(
            self.dataset,
            batch_size=self.local_batch,
            sampler=indices,
            drop_last=self.drop_last,
            collate_fn=self.collate_fn,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            generator=gen,
        )

    def fit(self, resume: bool = False) -> TrainResult:
        """Train to ``max_steps``; with ``resume=True`` continue from ``checkpoint_dir/last.pt``
        when it exists (a fresh start otherwise)."""
        last, best = self._paths()
        if resume:
            if last is None:
                raise ValueError("resume=True needs a checkpoint_dir")
            if last.exists():
                self.load_state_dict(load_checkpoint(last, self.device))
        self.model.to(self.device)
        net: nn.Module = self.model
        if is_distributed():
            ids = [self.device.index] if self.device.type == "cuda" else None
            net = DistributedDataParallel(self.model, device_ids=ids)
        self.model.train()
        bar = tqdm(
            total=self.max_steps, initial=self.step, disable=not self.progress or rank() != 0, dynamic_ncols=True
        )
        try:
            while self.step < self.max_steps:
                epoch, skip = divmod(self.step, self.steps_per_epoch)
                for batch in self._batches(epoch, skip):
                    logs = self._train_step(net, move_to(batch, self.device))
                    self.step += 1
                    bar.update(1)
                    bar.set_postfix(logs, refresh=False)
                    if self.step % self.validate_every == 0 or self.step == self.max_steps:
                        self._run_validation()
                    if self.step % self.checkpoint_every == 0 or self.step == self.max_steps:
                        self._save_last()
                    if self.step >= self.max_steps:
                        break
        finally:
            bar.close()
        return TrainResult(
            step=self.step,
            best_metric=self.best_metric,
            best_step=self.best_step,
            history=self.history,
            last_checkpoint=last if last is not None and last.exists() else None,
            best_checkpoint=best if best is not None and best.exists() else None,
        )

    def _train_step(self, net: nn.Module, batch: Any) -> dict[str, float]:
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            out = self.loss_fn(net, batch)
        loss, logs = (out, {}) if isinstance(out, Tensor) else out
        if loss.dim() != 0:
            raise ValueError(f"loss_fn must return a scalar loss, got shape {tuple(loss.shape)}")
        if not _all_finite(loss):
            where = f"; the last good checkpoint is {self._paths()[0]}" if self.checkpoint_dir else ""
            raise NonFiniteLossError(
                f"non-finite training loss ({loss.item()}) at step {self.step + 1}; training stopped "
                f"before applying it{where}. Lower the learning rate or check the inputs."
            )
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.scaler.step(self.optimizer)  # with fp16, skipped when the scaled gradients overflowed
        self.scaler.update()
        if self.scheduler is not None:
            self.scheduler.step()
        record = {"loss": float(loss.detach())} | {k: float(v) for k, v in logs.items()}
        return record


__all__: Sequence[str] = [
    "NonFiniteLossError",
    "TrainResult",
    "Trainer",
]
