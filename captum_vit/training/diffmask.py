"""``captum-vit train-diffmask``: train Vision DiffMask gates for any ViT.

Trains :class:`~captum_vit.explainers.DiffMaskObjective` (gates, placeholder and Lagrange
multipliers) for any ``--model`` of :mod:`captum_vit.models.spec` (a registered name,
``timm:<name>`` with its weights) on any dataset of :mod:`captum_vit.data.datasets` (default:
the synthetic benchmark's training split; another dataset gives up ``--val-size`` and
``--held-out`` random images for validation and the held-out figures) with the shared
:class:`~captum_vit.training.trainer.Trainer` (progress bar, atomic ``last.pt`` checkpoints,
``--resume``, ``--device``, ``--amp``, ``torchrun`` multi-process training) and
:class:`LookaheadAdam`, the official optimiser. ``--out DIR`` receives the checkpoints and the selected gates as
``best.safetensors`` (``VisionDiffMask(model, gates="DIR/best.safetensors")``); ``--register
NAME`` also adds them to the user registry, where ``VisionDiffMask(model)`` finds them by the
model's weights fingerprint.

Defaults are the official command line's: α₀ 20, lr 2e-5, ε 0.1, placeholder lr 1e-3,
multiplier lr 0.3, gate scale 15 and offset 8, batch 32, seed 123, 5 epochs, 1,200 warm-up
steps for the gates and the placeholder.

Model selection follows the official code: the validation value (on the validation images;
synthetic: :data:`~captum_vit.data.splits.DIFFMASK_VAL_SEED`) is the mean expected L0 when the
held-out KL is at most ``--select-max-kl`` (official 0.8) and the agreement of masked and
original predictions at least ``--select-min-acc`` (0.75); otherwise infinity.

Examples
--------
>>> p = argparse.ArgumentParser()
>>> add_arguments(p)
>>> a = p.parse_args([])
>>> a.epsilon, a.lr, a.alpha, a.batch_size, a.seed
(0.1, 2e-05, 20.0, 32, 123)
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from captum_vit._cli_common import CLIError, output_dir, positive_int, wrote
from captum_vit.data.datasets import add_data_arguments
from captum_vit.data.splits import DIFFMASK_VAL_SEED, EXPLAINER_TRAIN_SEED, HELD_OUT_SEED
from captum_vit.hardware import add_hardware_arguments, apply_threads, check_hardware
from captum_vit.models.spec import add_model_arguments, model_from_args, spec_from_args
from captum_vit.training._common import (
    add_register_arguments,
    check_register,
    check_resume,
    command_line,
    registry_folder,
    training_splits,
)

if TYPE_CHECKING:
    from torch import Tensor, nn

    from captum_vit.explainers.diffmask_objective import DiffMaskObjective


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


def diffmask_optimizer(
    objective: DiffMaskObjective,
    lr: float = 2e-5,
    lr_placeholder: float = 1e-3,
    lr_alpha: float = 0.3,
    lookahead_k: int = 6,
) -> LookaheadAdam:
    """The official optimiser of a :class:`~captum_vit.explainers.DiffMaskObjective`:
    LookaheadAdam over three groups, the gate networks (``lr``), the placeholder
    (``lr_placeholder``) and the multipliers (``lr_alpha``, gradient *ascent*, clipped to
    ``[0, alpha_max]``: the Lagrangian's max over α)."""
    gates = objective.gates
    gate_params = [p for n, p in gates.named_parameters() if n != "placeholder"]
    groups: list[dict[str, Any]] = [{"params": gate_params, "lr": lr}]
    if isinstance(gates.placeholder, torch.nn.Parameter):
        groups.append({"params": [gates.placeholder], "lr": lr_placeholder})
    bounds = (0.0, objective.alpha_max)
    groups.append({"params": [objective.alphas], "lr": lr_alpha, "maximize": True, "bounds": bounds})
    return LookaheadAdam(groups, k=lookahead_k)


# ------------------------------------------------------------------------------ CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    a = parser.add_argument
    add_model_arguments(parser)
    a("--out", type=Path, default=Path("runs/diffmask"), help="checkpoints (last.pt, best.pt) and best.safetensors")
    a("--resume", action="store_true", help="continue from OUT/last.pt")
    a(
        "--train-size", type=positive_int, default=None,
        help=f"synthetic: images rendered (default 10000, seed {EXPLAINER_TRAIN_SEED}); else: the first N (default all)",
    )  # fmt: skip
    a(
        "--val-size", type=positive_int, default=256,
        help=f"validation images (synthetic: seed {DIFFMASK_VAL_SEED}; else: held out of --data-root at random)",
    )  # fmt: skip
    a(
        "--held-out", type=positive_int, default=1_000,
        help=f"held-out images for the figures (synthetic: seed {HELD_OUT_SEED}; else: held out of --data-root)",
    )  # fmt: skip
    a("--epochs", type=positive_int, default=5)
    a("--max-steps", type=positive_int, default=None, help="override the step count implied by --epochs")
    a("--batch-size", type=positive_int, default=32)
    a("--seed", type=int, default=123)
    a("--lr", type=float, default=2e-5, help="gate networks")
    a("--lr-placeholder", type=float, default=1e-3)
    a("--lr-alpha", type=float, default=0.3, help="Lagrange multipliers (gradient ascent)")
    a("--alpha", type=float, default=20.0, help="initial Lagrange multiplier")
    a("--alpha-max", type=float, default=200.0)
    a("--epsilon", type=float, default=0.1, help="KL tolerance")
    a("--mul-activation", type=float, default=15.0)
    a("--add-activation", type=float, default=8.0)
    a("--warmup-steps", type=int, default=1200)
    a("--no-placeholder", action="store_true", help="replace by zeros instead of a learned vector")
    a("--layer-weights", type=str, default=None, help="comma-separated weights of drawing each hidden state")
    a(
        "--l0-positions",
        default="all",
        choices=("all", "patches"),
        help="positions the L0 term averages over: all gated ones, class token included (official), or patches",
    )
    a("--select-max-kl", type=float, default=0.8)
    a("--select-min-acc", type=float, default=0.75)
    a("--checkpoint-every", type=positive_int, default=200)
    a("--validate-every", type=positive_int, default=200)
    a("--no-progress", action="store_true")
    add_data_arguments(parser)
    add_hardware_arguments(parser, amp=True)
    add_register_arguments(parser, "selected gates")


def _layer_weights(args: argparse.Namespace) -> list[float] | None:
    if not args.layer_weights:
        return None
    try:
        return [float(w) for w in args.layer_weights.split(",")]
    except ValueError:
        raise ValueError(f"--layer-weights: expected comma-separated numbers, got {args.layer_weights!r}") from None


def check(args: argparse.Namespace) -> None:
    """Check the options, load the model and the data before any training starts; sets
    ``args.plan`` to ``(train, validation, held-out)``."""
    from captum_vit.models.vit import is_vit

    output_dir(args.out, "--out")
    check_hardware(args)
    check_register(args)
    _layer_weights(args)
    model = model_from_args(args)
    if not is_vit(model):
        raise CLIError(f"--model {args.model}: Vision DiffMask gates are built for timm ViTs")
    check_resume(args, model)
    args.plan = training_splits(args, model, DIFFMASK_VAL_SEED, default_train_size=10_000, held_out=args.held_out)


def run(args: argparse.Namespace) -> int:
    from captum_vit.distributed import init_distributed, shutdown

    if getattr(args, "plan", None) is None:
        check(args)
    apply_threads(args)
    ctx = init_distributed(args.device)
    try:
        return _train(args, ctx.device, ctx.rank, ctx.world_size)
    finally:
        shutdown(ctx)


def _train(args: argparse.Namespace, device: torch.device, rank: int, processes: int) -> int:
    from captum_vit.explainers.diffmask_gates import DiffMaskGates
    from captum_vit.explainers.diffmask_objective import DiffMaskObjective, evaluate_gates
    from captum_vit.models.fingerprint import half_fingerprints, model_fingerprint
    from captum_vit.models.preprocess import normalize_for
    from captum_vit.models.registry import register_weights
    from captum_vit.training.checkpoint import load_checkpoint
    from captum_vit.training.trainer import Trainer

    torch.manual_seed(args.seed)  # the gates' initialisation; Trainer seeds the data order
    model = model_from_args(args)
    train, val_set, held_set = args.plan
    gates = DiffMaskGates.for_model(
        model,
        mul_activation=args.mul_activation,
        add_activation=args.add_activation,
        placeholder=not args.no_placeholder,
    )
    gates.vouch_half_fingerprints(half_fingerprints(model))  # saved with them: model.half() finds them
    weights = _layer_weights(args)
    objective = DiffMaskObjective(
        model, gates, args.epsilon, args.alpha, args.alpha_max, weights, l0_positions=args.l0_positions
    ).to(device)
    opt = diffmask_optimizer(objective, args.lr, args.lr_placeholder, args.lr_alpha)
    warm = max(1, args.warmup_steps)
    ramp = lambda s: min(1.0, (s + 1) / warm)  # noqa: E731
    # Warm-up for the gate and placeholder groups only; the multipliers' rate is constant.
    sched = torch.optim.lr_scheduler.LambdaLR(opt, [ramp] * (len(opt.param_groups) - 1) + [lambda s: 1.0])
    val = normalize_for(model, _images(val_set)).to(device)

    def loss_fn(net: nn.Module, batch: Any) -> tuple[Tensor, dict[str, float]]:
        out = net(normalize_for(model, batch[0]))
        return out["loss"], {k: float(out[k]) for k in ("kl", "l0", "keep")}

    def validate(obj: nn.Module, step: int) -> float:
        assert isinstance(obj, DiffMaskObjective)
        m = evaluate_gates(obj.explainee, obj.gates, val, seed=args.seed)
        ok = m["kl"] <= args.select_max_kl and m["agreement"] >= args.select_min_acc
        return m["expected_keep"] if ok else float("inf")

    steps = args.max_steps or max(1, args.epochs * (len(train) // args.batch_size))
    trainer = Trainer(
        objective,
        opt,
        loss_fn,
        train,
        args.batch_size,
        steps,
        scheduler=sched,
        validate=validate,
        checkpoint_dir=args.out,
        checkpoint_every=args.checkpoint_every,
        validate_every=args.validate_every,
        seed=args.seed,
        device=device,
        progress=not args.no_progress,
        num_workers=args.workers,
        amp=args.amp,
        metadata={"explainee_fingerprint": gates.fingerprint},  # checked on --resume
    )
    start = time.perf_counter()
    result = trainer.fit(resume=args.resume)
    elapsed = time.perf_counter() - start
    if rank != 0:
        return 0
    if result.best_checkpoint is not None and result.best_step is not None:  # the selected step, as the official code
        objective.load_state_dict(load_checkpoint(result.best_checkpoint)["model"])
    gates = objective.gates.cpu()
    best = Path(args.out) / "best.safetensors"
    gates.save(best)
    wrote(best, f"the gates of step {result.best_step or result.step}")
    held = normalize_for(model, _images(held_set))
    metrics = evaluate_gates(objective.explainee.cpu(), gates, held, seed=args.seed)
    summary = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())
    print(f"[diffmask] {result.step} steps in {elapsed:.0f} s; selected step {result.best_step}; held-out: {summary}")
    if args.register:
        registered = register_weights(
            args.register,
            "diffmask",
            gates.state_dict(),
            registry_folder(args),
            metadata=gates.weights_metadata(),
            explainee=spec_from_args(args).describe(),
            explainee_fingerprint=model_fingerprint(model),
            explainee_half_fingerprints=half_fingerprints(model),
            kwargs=dict(gates.config),
            training={
                "command": command_line("train-diffmask", add_arguments, args),
                "steps": result.step,
                "selected_step": result.best_step,
                "wall_time_s": round(elapsed, 1),
                "dataset": args.dataset,
                "train_images": len(train),
                **({"train_seed": EXPLAINER_TRAIN_SEED} if args.dataset == "synthetic" else {}),
                "threads": torch.get_num_threads(),
                "processes": processes,
            },
            held_out={"images": args.held_out, "epsilon": args.epsilon}
            | ({"seed": HELD_OUT_SEED} if args.dataset == "synthetic" else {"dataset": args.dataset})
            | {k: round(v, 4) for k, v in metrics.items()},
        )
        wrote(registered.path, f"registered as {args.register!r}")
    return 0


def _images(dataset: Any) -> Tensor:
    """The pixel images of a (small) dataset, stacked."""
    return torch.stack([dataset[i][0] for i in range(len(dataset))])
