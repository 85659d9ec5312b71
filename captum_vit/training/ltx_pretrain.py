"""pLTX pretraining: ``captum-vit pretrain-ltx`` and :func:`pretrain_ltx`.

Trains an explainer (:mod:`captum_vit.explainers.ltx_network`) for a frozen explainee (any
``--model`` of :mod:`captum_vit.models.spec`: a registered name, ``timm:<name>`` with its
weights) with the LTX loss (:mod:`captum_vit.explainers.ltx_objective`) on any dataset of
:mod:`captum_vit.data.datasets` (default: the synthetic benchmark's training split), with the
shared :class:`~captum_vit.training.trainer.Trainer`: AdamW, linear warmup over 20 % of the
steps actually run, then linear decay (the official code computes both from its 50k-image
folder instead), for the paper's 30 epochs unless ``--steps`` says otherwise; validation by
the positive-perturbation AUC (lower is better) on held-out images (synthetic: the split
:data:`~captum_vit.data.splits.LTX_VAL_SEED`; another dataset: ``--val-size`` images held out
at random), keeping the best checkpoint; atomic checkpoints and ``--resume``; ``--device``,
``--amp``, ``--workers``; data-parallel under ``torchrun``::

    torchrun --nproc-per-node 2 -m captum_vit.cli pretrain-ltx --model synthetic-vit ...

``--out DIR`` receives the checkpoints (``last.pt``, ``best.pt``) and the best explainer as
``best.safetensors`` (``LTX(model, explainer="DIR/best.safetensors")``). ``--register NAME``
also adds it (fp16) to the user registry, where ``LTX(model)`` finds it by the explainee's
weights fingerprint.
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from captum_vit._cli_common import CLIError, output_dir, positive_int, wrote
from captum_vit.data.datasets import add_data_arguments
from captum_vit.data.splits import EXPLAINER_TRAIN_SEED, LTX_VAL_SEED
from captum_vit.hardware import add_hardware_arguments, apply_threads, check_hardware
from captum_vit.models.fingerprint import half_fingerprints
from captum_vit.models.spec import add_model_arguments, model_from_args, spec_from_args
from captum_vit.training._common import (
    add_register_arguments,
    check_labels,
    check_register,
    check_resume,
    command_line,
    registry_folder,
    training_splits,
)

if TYPE_CHECKING:
    import torch
    from torch import nn
    from torch.utils.data import Dataset

    from captum_vit.explainers.ltx_network import LTXExplainer
    from captum_vit.explainers.ltx_objective import LTXObjective
    from captum_vit.training.trainer import TrainResult


def pretrain_ltx(
    explainee: nn.Module,
    train_set: Dataset,
    val_set: Dataset | None = None,
    *,
    steps: int = 1000,
    batch_size: int = 32,
    lr: float = 5e-4,
    weight_decay: float = 0.01,
    mask_weight: float | None = None,
    mask_loss: str = "bce",
    target: str = "label",
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int = 100,
    validate_every: int = 100,
    seed: int = 0,
    resume: bool = False,
    progress: bool = True,
    device: torch.device | str | None = None,
    num_workers: int = 0,
    amp: str | None = None,
) -> tuple[LTXExplainer, TrainResult]:
    """Pretrain an LTX/EEA explainer for ``explainee``.

    Parameters
    ----------
    explainee : nn.Module
        Timm ViT or ResNet-family classifier; a frozen copy is used (the given model is not
        modified, not even its ``.grad``).
    train_set, val_set : Dataset
        Examples ``(image, label, ...)`` with images ``(C, H, W)`` in [0, 1] pixel space.
    steps, batch_size, lr, weight_decay :
        AdamW schedule (global batch size).
    mask_weight, mask_loss :
        λ (default :func:`~captum_vit.explainers.default_mask_weight`) and the mask loss.
    target : str
        ``"label"`` (explain the ground truth, the papers' "target" runs) or ``"predicted"``;
        validation scores the same class (the explainee's prediction for ``"predicted"``).
    checkpoint_dir, checkpoint_every, validate_every, seed, resume, progress, device, num_workers, amp :
        As :class:`~captum_vit.training.trainer.Trainer`.

    Returns
    -------
    (explainer, TrainResult)
        The explainer with its **best** validation weights (the last ones without ``val_set``
        or checkpoints).

    Raises
    ------
    ValueError
        For a bad ``target``/``mask_loss``, or (``resume=True``) an unreadable ``last.pt`` or a
        checkpoint made for another explainee's weights, architecture, ``seed`` or ``batch_size``.
    NonFiniteLossError
        When a loss becomes NaN or infinite (the last good checkpoint is kept).

    Examples
    --------
    >>> import timm
    >>> from captum_vit.data.synthetic import SyntheticDataset
    >>> m = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=5, depth=1,
    ...                       img_size=32, patch_size=8, embed_dim=32, num_heads=2).eval()
    >>> e, res = pretrain_ltx(m, SyntheticDataset(8, image_size=32), steps=2, batch_size=4, progress=False)
    >>> res.step
    2
    """
    import torch

    from captum_vit.explainers.ltx_network import build_explainer
    from captum_vit.explainers.ltx_objective import LTXObjective, default_mask_weight
    from captum_vit.models.preprocess import model_logits, model_normalization
    from captum_vit.training.checkpoint import load_checkpoint
    from captum_vit.training.schedules import linear_warmup_decay
    from captum_vit.training.trainer import Trainer

    if target not in ("label", "predicted"):
        raise ValueError(f"target must be 'label' or 'predicted', got {target!r}")
    torch.manual_seed(seed)
    frozen = copy.deepcopy(explainee).eval().requires_grad_(False)
    explainer = build_explainer(frozen)
    explainer.vouch_half_fingerprints(half_fingerprints(frozen))  # saved with it: model.half() finds it
    dev = torch.device(device) if device is not None else next(frozen.parameters()).device
    frozen.to(dev)
    mean, std = model_normalization(explainee)
    weight = default_mask_weight(explainer) if mask_weight is None else mask_weight
    objective = LTXObjective(frozen, mean.to(dev), std.to(dev), weight, mask_loss)

    def loss_fn(net: nn.Module, batch: Any) -> Any:
        pixels, labels = batch[0], batch[1]
        return objective(net, pixels, labels if target == "label" else None)

    validate = None
    if val_set is not None:
        val_images = torch.stack([val_set[i][0] for i in range(len(val_set))])  # type: ignore[arg-type]
        if target == "label":
            val_labels = torch.stack([torch.as_tensor(val_set[i][1]) for i in range(len(val_set))])  # type: ignore[arg-type]
        else:  # validated on the class it learns to explain (unlabelled datasets have none other)
            with torch.no_grad():
                val_labels = torch.cat(
                    [model_logits(frozen(objective.normalise(v.to(dev)))).argmax(1).cpu() for v in val_images.split(64)]
                )

        def validate(model: nn.Module, step: int) -> float:
            return validation_pos_auc(model, objective, val_images.to(dev), val_labels.to(dev))

    params = [p for p in explainer.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    trainer = Trainer(
        explainer,
        opt,
        loss_fn,
        train_set,
        batch_size,
        steps,
        scheduler=linear_warmup_decay(opt, steps),
        validate=validate,
        checkpoint_dir=checkpoint_dir,
        checkpoint_every=checkpoint_every,
        validate_every=validate_every,
        seed=seed,
        device=dev,
        progress=progress,
        num_workers=num_workers,
        amp=amp,
        # The explainer's explainee_sha256 buffer is overwritten by a resumed checkpoint's:
        # the trainer refuses a checkpoint made for other explainee weights.
        metadata={"explainee_fingerprint": explainer.explainee_fingerprint},
    )
    result = trainer.fit(resume=resume)
    if result.best_checkpoint is not None:
        explainer.load_state_dict(load_checkpoint(result.best_checkpoint)["model"])
    explainer.mask_weight = float(weight)  # LTX finetunes with the λ of pretraining by default
    return explainer.eval(), result


def validation_pos_auc(
    explainer: nn.Module, objective: LTXObjective, images: torch.Tensor, labels: torch.Tensor, batch: int = 64
) -> float:
    """Mean positive-perturbation AUC (Chefer's, lower is better) of the explainer's pLTX masks
    against ``labels`` on pixel-space ``images``."""
    import torch

    from captum_vit.metrics import positive_perturbation_auc

    aucs = []
    with torch.no_grad():
        for i in range(0, images.shape[0], batch):
            x, y = images[i : i + batch], labels[i : i + batch]
            masks = torch.sigmoid(explainer(objective.normalise(x)))
            up = torch.nn.functional.interpolate(
                masks[:, None], size=x.shape[-2:], mode="bilinear", align_corners=False
            )
            aucs.append(
                positive_perturbation_auc(objective.explainee, x, up, y, mean=objective.mean, std=objective.std)
            )
    return float(torch.cat(aucs).mean())


# ------------------------------------------------------------------------------ CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser, default=None, aliases=("--explainee",))
    a = parser.add_argument
    a("--out", type=Path, required=True, help="folder for the checkpoints (last.pt, best.pt) and best.safetensors")
    a("--epochs", type=positive_int, default=30, help="epochs over the training images (default 30, the paper's)")
    a("--steps", type=positive_int, default=None, help="optimiser steps (overrides --epochs)")
    a("--batch-size", type=positive_int, default=32, help="global batch size")
    a("--lr", type=float, default=5e-4)
    a("--mask-weight", type=float, default=None, help="λ (default: the papers' value for the size)")
    a("--mask-loss", default="bce", choices=("bce", "l1", "bce_double_sigmoid"))
    a("--target", default="label", choices=("label", "predicted"))
    a(
        "--train-size", type=positive_int, default=None,
        help=f"synthetic: images rendered (default 4000, seed {EXPLAINER_TRAIN_SEED}); else: the first N (default all)",
    )  # fmt: skip
    a(
        "--val-size", type=positive_int, default=128,
        help=f"validation images (synthetic: seed {LTX_VAL_SEED}; else: held out of --data-root at random)",
    )  # fmt: skip
    a("--checkpoint-every", type=positive_int, default=100)
    a("--validate-every", type=positive_int, default=100)
    a("--seed", type=int, default=0)
    a("--resume", action="store_true", help="continue from OUT/last.pt")
    a("--no-progress", action="store_true")
    add_data_arguments(parser)
    add_hardware_arguments(parser, amp=True)
    add_register_arguments(parser, "best explainer")


def check(args: argparse.Namespace) -> None:
    """Check the options, load the explainee and the data before any training starts; sets
    ``args.plan`` to ``(train, validation)``."""
    from captum_vit.models.cnn import is_cnn
    from captum_vit.models.vit import is_vit

    output_dir(args.out, "--out")
    check_hardware(args)
    check_register(args)
    model = model_from_args(args)
    if not (is_vit(model) or is_cnn(model)):
        raise CLIError(f"--model {args.model}: LTX explainers are built for timm ViTs and ResNet-family CNNs")
    check_resume(args, model)
    train, val, _ = training_splits(args, model, LTX_VAL_SEED, default_train_size=4000)
    if args.target == "label":
        check_labels(train, model)
    args.plan = (train, val)


def run(args: argparse.Namespace) -> int:
    import torch

    from captum_vit.distributed import init_distributed, shutdown
    from captum_vit.models.registry import register_weights

    if getattr(args, "plan", None) is None:
        check(args)
    apply_threads(args)
    train, val = args.plan
    explainee = model_from_args(args)
    steps = args.steps or max(1, args.epochs * (len(train) // args.batch_size))
    ctx = init_distributed(args.device)
    try:
        start = time.perf_counter()
        explainer, result = pretrain_ltx(
            explainee,
            train,
            val,
            steps=steps,
            batch_size=args.batch_size,
            lr=args.lr,
            mask_weight=args.mask_weight,
            mask_loss=args.mask_loss,
            target=args.target,
            checkpoint_dir=args.out,
            checkpoint_every=args.checkpoint_every,
            validate_every=args.validate_every,
            seed=args.seed,
            resume=args.resume,
            progress=not args.no_progress,
            device=ctx.device,
            num_workers=args.workers,
            amp=args.amp,
        )
        elapsed = time.perf_counter() - start
        if ctx.rank != 0:
            return 0
        explainer = explainer.cpu()
        print(
            f"best validation POS AUC {result.best_metric} at step {result.best_step}; {result.step} steps in "
            f"{elapsed:.0f} s ({result.step / max(elapsed, 1e-9):.3f} steps/s)"
        )
        best = Path(args.out) / "best.safetensors"
        explainer.save(best)
        wrote(best, "the best explainer")
        if args.register:
            spec = spec_from_args(args)
            training = {
                "command": command_line("pretrain-ltx", add_arguments, args),
                "steps": result.step,
                "best_step": result.best_step,
                "val_pos_auc": result.best_metric,
                "dataset": args.dataset,
                "train_images": len(train),
                "val_images": len(val),
                "wall_time_s": round(elapsed, 1),
                "threads": torch.get_num_threads(),
                "processes": ctx.world_size,
            }
            if args.dataset == "synthetic":
                training |= {"train_seed": EXPLAINER_TRAIN_SEED, "val_seed": LTX_VAL_SEED}
            registered = register_weights(
                args.register,
                "pltx",
                explainer.state_dict(),
                registry_folder(args),
                metadata=explainer.weights_metadata(),
                storage_dtype=torch.float16,
                explainee=spec.describe(),
                explainee_fingerprint=explainer.explainee_fingerprint,
                explainee_half_fingerprints=half_fingerprints(explainee),
                kwargs={"architecture": spec.architecture(explainee), "mask_weight": explainer.mask_weight},
                training=training,
            )
            wrote(registered.path, f"registered as {args.register!r}")
    finally:
        shutdown(ctx)
    return 0
