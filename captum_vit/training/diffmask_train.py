"""``captum-vit train-diffmask``: train Vision DiffMask gates for a shipped ViT.

Trains :class:`~captum_vit.training.diffmask.DiffMaskObjective` on the synthetic benchmark's
training split with the shared :class:`~captum_vit.training.trainer.Trainer` (progress bar,
atomic ``last.pt`` checkpoints, ``--resume``, ``torchrun`` multi-process training), then
writes the gates as safetensors and, with ``--register``, ships them in the package manifest
so that ``VisionDiffMask(load_pretrained("synthetic-vit"))`` uses them by default.

Defaults are the official command line's (methods.md §6.3): α₀ 20, lr 2e-5, ε 0.1,
placeholder lr 1e-3, multiplier lr 0.3, gate scale 15 and offset 8, batch 32, seed 123,
5 epochs, 1,200 warm-up steps for the gates and the placeholder.

Model selection follows the official code: the validation value is the mean expected L0 when
the held-out KL is at most ``--select-max-kl`` (official 0.8) and the agreement of masked and
original predictions at least ``--select-min-acc`` (0.75); otherwise infinity.

Examples
--------
>>> import argparse
>>> p = argparse.ArgumentParser()
>>> add_arguments(p)
>>> a = p.parse_args([])
>>> a.epsilon, a.lr, a.alpha, a.batch_size, a.seed
(0.1, 2e-05, 20.0, 32, 123)
>>> command_line(p.parse_args(["--lr", "1e-3", "--resume"]))
'captum-vit train-diffmask --resume --lr 0.001'
"""

from __future__ import annotations

import argparse
import shlex
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from captum_vit.data.synthetic import SyntheticDataset, generate
from captum_vit.training.diffmask import (
    DiffMaskGates,
    DiffMaskObjective,
    expected_keep,
    hard_concrete_sample,
    kl_divergence,
)
from captum_vit.training.trainer import Trainer, init_distributed, is_distributed, load_checkpoint, rank

#: The benchmark's first training split (train_classifier.TRAIN_SEED) and two held-out seeds.
TRAIN_SEED, VAL_SEED, HELD_OUT_SEED = 1000, 4242, 999_999


def add_arguments(parser: argparse.ArgumentParser) -> None:
    a = parser.add_argument
    a("--model", default="synthetic-vit", help="shipped ViT to explain (a load_pretrained name)")
    a("--out-dir", type=Path, default=Path("runs/diffmask"), help="checkpoints (last.pt, best.pt) and gates")
    a("--resume", action="store_true", help="continue from OUT_DIR/last.pt")
    a("--train-size", type=int, default=10_000, help=f"training images (seed {TRAIN_SEED})")
    a("--val-size", type=int, default=256, help="validation images for model selection")
    a("--held-out", type=int, default=1_000, help="held-out images for the recorded KL and kept fraction")
    a("--epochs", type=int, default=5)
    a("--max-steps", type=int, default=None, help="override the step count implied by --epochs")
    a("--batch-size", type=int, default=32)
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
    a("--select-max-kl", type=float, default=0.8)
    a("--select-min-acc", type=float, default=0.75)
    a("--checkpoint-every", type=int, default=200)
    a("--validate-every", type=int, default=200)
    a("--threads", type=int, default=None, help="torch CPU threads")
    a("--register", default=None, help="ship the gates under this load_pretrained name (rank 0)")
    a("--weights-dir", type=Path, default=None, help="manifest folder to read --model from and register in")
    a("--no-progress", action="store_true")


def normaliser(model: nn.Module) -> tuple[Tensor, Tensor]:
    """``(mean, std)`` as ``(1, C, 1, 1)`` from the model's ``pretrained_cfg`` (identity if absent)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    mean = torch.tensor(cfg.get("mean", (0.0, 0.0, 0.0)), dtype=torch.float).view(1, -1, 1, 1)
    std = torch.tensor(cfg.get("std", (1.0, 1.0, 1.0)), dtype=torch.float).view(1, -1, 1, 1)
    return mean, std


@torch.no_grad()
def evaluate_gates(
    model: nn.Module, gates: DiffMaskGates, images: Tensor, seed: int = 0, batch_size: int = 100
) -> dict[str, float]:
    """Held-out faithfulness of trained gates on normalised ``images``, at the last state.

    ``kl`` and ``agreement``: the mean real ``KL(p_orig ‖ p_masked)`` and the fraction of
    unchanged predictions with sampled hard-concrete gates (as trained; seeded); ``kept``:
    the fraction of patches those gates keep; ``kl_expected`` / ``expected_keep``: the same
    with the deterministic expected keep probability (the attribution map) as a soft mask.
    """
    totals = dict.fromkeys(("kl", "agreement", "kept", "kl_expected", "expected_keep"), 0.0)
    gen = torch.Generator(device=images.device).manual_seed(seed)
    for start in range(0, images.shape[0], batch_size):
        x = images[start : start + batch_size]
        logits, original = gates.logits_and_output(model, x)
        sampled = hard_concrete_sample(logits, generator=gen).prod(0)
        soft = expected_keep(logits)
        masked, masked_soft = gates.masked_output(model, x, sampled), gates.masked_output(model, x, soft)
        totals["kl"] += float(kl_divergence(original, masked).sum())
        totals["agreement"] += float((masked.argmax(-1) == original.argmax(-1)).sum())
        totals["kept"] += float((sampled > 0).float().mean(-1).sum())
        totals["kl_expected"] += float(kl_divergence(original, masked_soft).sum())
        totals["expected_keep"] += float(soft.mean(-1).sum())
    return {k: v / images.shape[0] for k, v in totals.items()}


def command_line(args: argparse.Namespace) -> str:
    """The command reproducing ``args``: every option that differs from its default."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    parts = ["captum-vit", "train-diffmask"]
    for action in parser._actions:
        if not action.option_strings or action.dest == "help":
            continue
        value = getattr(args, action.dest, action.default)
        if value == action.default:
            continue
        flag = action.option_strings[0]
        parts += [flag] if isinstance(action, argparse._StoreTrueAction) else [flag, str(value)]
    return shlex.join(parts)


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    finally:
        if is_distributed():
            dist.destroy_process_group()


def _run(args: argparse.Namespace) -> int:
    from captum_vit.models.pretrained import (
        WEIGHTS_DIR,
        load_pretrained,
        sha256_file,
        write_manifest_entry,
    )

    if args.threads:
        torch.set_num_threads(args.threads)
    device = init_distributed()
    torch.manual_seed(args.seed)  # the gates' initialisation; Trainer seeds the data order
    model = load_pretrained(args.model, args.weights_dir)
    mean, std = normaliser(model)
    weights = [float(w) for w in args.layer_weights.split(",")] if args.layer_weights else None
    gates = DiffMaskGates.for_model(
        model,
        mul_activation=args.mul_activation,
        add_activation=args.add_activation,
        placeholder=not args.no_placeholder,
    )
    objective = DiffMaskObjective(model, gates, args.epsilon, args.alpha, args.alpha_max, weights).to(device)
    opt = objective.optimizer(args.lr, args.lr_placeholder, args.lr_alpha)
    warm = max(1, args.warmup_steps)
    ramp = lambda s: min(1.0, (s + 1) / warm)  # noqa: E731
    # Warm-up for the gate and placeholder groups only; the multipliers' rate is constant.
    sched = torch.optim.lr_scheduler.LambdaLR(opt, [ramp] * (len(opt.param_groups) - 1) + [lambda s: 1.0])
    size = int(model.pretrained_cfg["input_size"][-1])  # type: ignore[index]
    train = SyntheticDataset(args.train_size, seed=TRAIN_SEED, image_size=size)
    val = (generate(args.val_size, seed=VAL_SEED, image_size=size).images.to(device) - mean.to(device)) / std.to(device)

    def loss_fn(net: nn.Module, batch: Any) -> tuple[Tensor, dict[str, float]]:
        out = net((batch[0] - mean.to(batch[0].device)) / std.to(batch[0].device))
        return out["loss"], {k: float(out[k]) for k in ("kl", "l0", "keep")}

    def validate(obj: nn.Module, step: int) -> float:
        assert isinstance(obj, DiffMaskObjective)
        m = evaluate_gates(obj.explainee, obj.gates, val, seed=args.seed)
        ok = m["kl"] <= args.select_max_kl and m["agreement"] >= args.select_min_acc
        return m["expected_keep"] if ok else float("inf")

    steps = args.max_steps or args.epochs * (args.train_size // args.batch_size)
    trainer = Trainer(
        objective,
        opt,
        loss_fn,
        train,
        args.batch_size,
        steps,
        scheduler=sched,
        validate=validate,
        checkpoint_dir=args.out_dir,
        checkpoint_every=args.checkpoint_every,
        validate_every=args.validate_every,
        seed=args.seed,
        progress=not args.no_progress,
    )
    start = time.perf_counter()
    result = trainer.fit(resume=args.resume)
    elapsed = time.perf_counter() - start
    if rank() != 0:
        return 0
    if result.best_checkpoint is not None and result.best_step is not None:  # the selected step, as the official code
        objective.load_state_dict(load_checkpoint(result.best_checkpoint)["model"])
    gates = objective.gates.cpu()
    gates_path = Path(args.out_dir) / "gates.safetensors"
    gates.save(gates_path)
    held = (generate(args.held_out, seed=HELD_OUT_SEED, image_size=size).images - mean) / std
    metrics = evaluate_gates(objective.explainee.cpu(), gates, held, seed=args.seed)
    summary = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())
    print(f"[diffmask] {result.step} steps in {elapsed:.0f} s; selected step {result.best_step}; held-out: {summary}")
    if args.register:
        file = Path(args.weights_dir or WEIGHTS_DIR) / f"{args.register}.safetensors"
        gates.save(file)
        file.chmod(0o644)
        entry = {
            "file": file.name,
            "sha256": sha256_file(file),
            "builder": "captum_vit.training.diffmask:DiffMaskGates",
            "kwargs": dict(gates.config, fingerprint=gates.fingerprint),
            "explains": args.model,
            "training": {
                "command": command_line(args),
                "steps": result.step,
                "selected_step": result.best_step,
                "wall_time_s": round(elapsed, 1),
                "train_seed": TRAIN_SEED,
                "threads": torch.get_num_threads(),
            },
            "held_out": {"images": args.held_out, "seed": HELD_OUT_SEED, "epsilon": args.epsilon}
            | {k: round(v, 4) for k, v in metrics.items()},
        }
        write_manifest_entry(args.register, entry, args.weights_dir)
        print(f"[diffmask] registered {args.register!r} -> {file}")
    return 0
