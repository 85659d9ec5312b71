"""pLTX pretraining: ``captum-vit pretrain-ltx`` and :func:`pretrain_ltx` (methods.md §2.4).

Trains an explainer (:mod:`captum_vit.models.explainer`) for a frozen explainee with the LTX
loss (:mod:`captum_vit.training.ltx`) on the synthetic benchmark's training split, with the
shared :class:`~captum_vit.training.trainer.Trainer`: AdamW, linear warmup over 20 % of the
steps actually run, then linear decay (the official code computes both from the 50k-image
folder instead, §2.8 issue 2); validation by the positive-perturbation AUC (lower is
better) on a separate validation split, keeping the best checkpoint; atomic checkpoints and
``--resume``; data-parallel under ``torchrun``::

    torchrun --nproc-per-node 2 -m captum_vit.cli pretrain-ltx --explainee synthetic-vit ...

``--export NAME`` writes the best explainer as ``captum_vit/weights/NAME.safetensors`` with a
manifest entry (sha256, the explainee's fingerprint, the command), loadable with
``load_pretrained(NAME)`` and used by ``LTX`` on that explainee by default.
"""

from __future__ import annotations

import argparse
import copy
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn
from torch.utils.data import Dataset

from captum_vit.metrics import model_normalization, positive_perturbation_auc
from captum_vit.models.explainer import CNNExplainer, ViTExplainer, build_explainer
from captum_vit.training.ltx import LTXObjective, default_mask_weight
from captum_vit.training.trainer import Trainer, TrainResult, linear_warmup_decay, load_checkpoint, rank

#: Dataset seeds: the classifiers' first training split, and a validation split used by
#: nobody else (the leaderboard's held-out seed is not touched).
TRAIN_SEED = 1000
VAL_SEED = 424_242


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
) -> tuple[ViTExplainer | CNNExplainer, TrainResult]:
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
        λ (default :func:`~captum_vit.training.ltx.default_mask_weight`) and the mask loss.
    target : str
        ``"label"`` (explain the ground truth, the papers' "target" runs) or ``"predicted"``.
    checkpoint_dir, checkpoint_every, validate_every, seed, resume, progress, device :
        As :class:`~captum_vit.training.trainer.Trainer`.

    Returns
    -------
    (explainer, TrainResult)
        The explainer with its **best** validation weights (the last ones without ``val_set``
        or checkpoints).

    Raises
    ------
    ValueError
        For a bad ``target``/``mask_loss``, or a resumed checkpoint from another model.
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
    if target not in ("label", "predicted"):
        raise ValueError(f"target must be 'label' or 'predicted', got {target!r}")
    torch.manual_seed(seed)
    frozen = copy.deepcopy(explainee).eval().requires_grad_(False)
    explainer = build_explainer(frozen)
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
        val_labels = torch.stack([torch.as_tensor(val_set[i][1]) for i in range(len(val_set))])  # type: ignore[arg-type]

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


def export_explainer(
    explainer: ViTExplainer | CNNExplainer,
    name: str,
    explainee_name: str,
    info: dict[str, Any],
    weights_dir: Path | None = None,
    storage_dtype: torch.dtype = torch.float16,
) -> Path:
    """Write ``name.safetensors`` and its manifest entry (builder, sha256, explainee fingerprint).

    Floating-point weights are stored as ``storage_dtype`` (float16 by default, halving the
    package size; :func:`~captum_vit.models.pretrained.load_pretrained` casts them back to
    float32). Integer buffers (the explainee fingerprint) are stored as they are."""
    from captum_vit.models.pretrained import WEIGHTS_DIR, pretrained_entry, sha256_file, write_manifest_entry

    directory = Path(weights_dir or WEIGHTS_DIR)
    explainee_entry = pretrained_entry(explainee_name, directory)
    architecture = {k: explainee_entry[k] for k in ("timm_name", "kwargs", "pretrained_cfg") if k in explainee_entry}
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.safetensors"
    state = {
        k: (v.to(storage_dtype) if v.is_floating_point() else v).detach().cpu().contiguous()
        for k, v in explainer.state_dict().items()
    }
    save_file(state, str(path), metadata={"name": name, "explainee": explainee_name})
    path.chmod(0o644)
    entry = {
        "file": path.name,
        "sha256": sha256_file(path),
        "builder": "captum_vit.models.explainer:build_pretrained_explainer",
        "kwargs": {"explainee": explainee_name, "architecture": architecture, "mask_weight": explainer.mask_weight},
        "explainee": explainee_name,
        "explainee_sha256": explainer.explainee_fingerprint,
        "storage_dtype": str(storage_dtype).removeprefix("torch."),
        "training": info,
    }
    write_manifest_entry(name, entry, directory)
    return path


# ------------------------------------------------------------------------------ CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--explainee", required=True, help="shipped model name, e.g. synthetic-vit")
    parser.add_argument("--out", type=Path, required=True, help="checkpoint folder (last.pt, best.pt)")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=32, help="global batch size")
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--mask-weight", type=float, default=None, help="λ (default: the papers' value for the size)")
    parser.add_argument("--mask-loss", default="bce", choices=("bce", "l1", "bce_double_sigmoid"))
    parser.add_argument("--target", default="label", choices=("label", "predicted"))
    parser.add_argument("--train-size", type=int, default=4000)
    parser.add_argument("--val-size", type=int, default=128)
    parser.add_argument("--checkpoint-every", type=int, default=100)
    parser.add_argument("--validate-every", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    parser.add_argument(
        "--weights-dir", type=Path, default=None, help="folder of the manifest and weights (default: the package's)"
    )
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument(
        "--export", default=None, help="write the best explainer to the package weights under this name"
    )


def run(args: argparse.Namespace) -> int:
    from captum_vit.data.synthetic import SyntheticDataset
    from captum_vit.models.pretrained import load_pretrained
    from captum_vit.training.trainer import init_distributed

    device = init_distributed()
    explainee = load_pretrained(args.explainee, args.weights_dir)
    size = int(explainee.pretrained_cfg["input_size"][-1])  # type: ignore[index]
    start = time.perf_counter()
    explainer, result = pretrain_ltx(
        explainee,
        SyntheticDataset(args.train_size, seed=TRAIN_SEED, image_size=size),
        SyntheticDataset(args.val_size, seed=VAL_SEED, image_size=size),
        steps=args.steps,
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
        device=device,
    )
    elapsed = time.perf_counter() - start
    if rank() == 0:
        print(f"best validation POS AUC {result.best_metric} at step {result.best_step}; {elapsed:.0f} s")
        if args.export:
            info = {
                "command": "captum-vit " + shlex.join(sys.argv[1:]) if sys.argv[1:] else "captum-vit pretrain-ltx",
                "steps": result.step,
                "best_step": result.best_step,
                "val_pos_auc": result.best_metric,
                "train_seed": TRAIN_SEED,
                "val_seed": VAL_SEED,
                "wall_time_s": round(elapsed, 1),
                "threads": torch.get_num_threads(),
            }
            print(f"wrote {export_explainer(explainer, args.export, args.explainee, info, args.weights_dir)}")
    return 0
