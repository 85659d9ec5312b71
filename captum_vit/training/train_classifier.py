"""``captum-vit train-models``: train the synthetic-benchmark classifiers.

Trains a small timm ViT (class token, 6 blocks, 8x8 grid of 8-px patches on 64x64 images)
and a narrow timm ``resnet10t`` on freshly rendered images of
:mod:`captum_vit.data.synthetic` with the shared :class:`~captum_vit.training.trainer.Trainer`
(``torchrun`` data parallelism included). ``--out DIR`` becomes a registry folder: fp16
safetensors per model and a ``manifest.json`` entry holding the sha256, architecture,
preprocessing, class names, held-out accuracy (measured on the saved-and-reloaded fp16
weights, what ships), training wall time and the exact command, so that
``load_pretrained(name, weights_dir=DIR)`` loads them. ``--register NAME`` (one model) also adds
it to the user registry.

Recipe (why): the class is a patch-local texture, which a ViT learns from scratch in a few
epochs (a class decided by shape alone was not learnt). AdamW with a linear warm-up and
cosine decay, as DeiT (Touvron et al., ICML 2021, §6) trains ViTs; light label smoothing.
Every epoch renders new images (seed :func:`~captum_vit.data.splits.classifier_epoch_seed`),
so nothing is seen twice and no augmentation is needed.

The shipped weights were trained by the loop this command ran before it used the
``Trainer``: the same initialisation, optimiser, schedule, loss and images per epoch, in
another shuffling order (``DataLoader(shuffle=True)`` then, the ``Trainer``'s seeded
``DistributedSampler`` now), so rerunning the recorded command gives a model of the same
quality, not the same bytes.

Examples
--------
>>> import argparse
>>> p = argparse.ArgumentParser()
>>> add_arguments(p)
>>> p.parse_args(["--models", "synthetic-vit", "--epochs", "1"]).models
['synthetic-vit']
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from captum_vit._cli_common import CLIError, output_dir, positive_int, wrote
from captum_vit.data.splits import HELD_OUT_SEED, classifier_epoch_seed
from captum_vit.hardware import add_hardware_arguments, check_hardware
from captum_vit.training._common import add_register_arguments, check_register, command_line, registry_folder

if TYPE_CHECKING:
    from torch import nn

IMAGE_SIZE = 64
#: Channel statistics of the benchmark's images, rounded (2,000 images of seed 0: per-channel
#: mean 0.498-0.501, std 0.218).
MEAN = (0.5, 0.5, 0.5)
STD = (0.22, 0.22, 0.22)


@dataclass(frozen=True)
class Recipe:
    """Architecture and optimisation of one model."""

    timm_name: str
    kwargs: dict[str, Any]
    lr: float
    weight_decay: float
    epochs: int
    extra: dict[str, Any] = field(default_factory=dict)


_NUM_CLASSES = 5  # captum_vit.data.synthetic.NUM_CLASSES, without importing torch here
RECIPES: dict[str, Recipe] = {
    "synthetic-vit": Recipe(
        "vit_tiny_patch16_224",
        dict(img_size=IMAGE_SIZE, patch_size=8, embed_dim=128, depth=6, num_heads=4, num_classes=_NUM_CLASSES),
        lr=1e-3,
        weight_decay=0.05,
        # 3 epochs reached 95.3% (loss plateaued at chance for ~110 steps before the
        # textures were picked up); 5 epochs give the cosine schedule room after that.
        epochs=5,
    ),
    # The synthetic ViT without a class token, average-pooled: the fixture on which the
    # attention-graph methods' pooled readouts (docs/methods.md §1.1) are shown to localise.
    "synthetic-vit-avg": Recipe(
        "vit_tiny_patch16_224",
        dict(
            img_size=IMAGE_SIZE, patch_size=8, embed_dim=128, depth=6, num_heads=4, num_classes=_NUM_CLASSES,
            global_pool="avg", class_token=False,
        ),
        lr=1e-3,
        weight_decay=0.05,
        epochs=5,
    ),
    "synthetic-resnet": Recipe(
        "resnet10t",
        dict(channels=[32, 64, 128, 256], num_classes=_NUM_CLASSES),
        lr=2e-3,
        weight_decay=0.01,
        epochs=2,
    ),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    a = parser.add_argument
    a("--models", nargs="+", default=["synthetic-vit", "synthetic-resnet"], choices=list(RECIPES), help="models to train")
    a("--train-size", type=positive_int, default=10_000, help="images rendered per epoch")
    a("--epochs", type=positive_int, default=None, help="override every recipe's epoch count")
    a("--batch-size", type=positive_int, default=128)
    a("--held-out", type=positive_int, default=2_000, help=f"held-out images (seed {HELD_OUT_SEED}) for the accuracy")
    a("--seed", type=int, default=0, help="initialisation and shuffling seed")
    a("--out", type=Path, default=Path("runs/train-models"), help="folder for the weights and their manifest.json")
    a("--no-progress", action="store_true")
    # One thread is fastest on a shared, busy CPU; workers render images.
    add_hardware_arguments(parser, amp=True, workers=0, threads=1)
    add_register_arguments(parser, "trained model (one --models only)")


def check(args: argparse.Namespace) -> None:
    """Check the options before any training starts."""
    output_dir(args.out, "--out")
    check_hardware(args)
    check_register(args)
    if args.register and len(args.models) != 1:
        raise CLIError(f"--register names one model; got --models {' '.join(args.models)}")
    if args.ship and args.register and args.register != args.models[0]:
        raise CLIError("--ship registers a model under its recipe name: pass --register " + args.models[0])


def manifest_spec(recipe: Recipe) -> dict[str, Any]:
    """The registry fields that rebuild a recipe's model (``timm_name``, ``kwargs``,
    ``pretrained_cfg``, ``class_names``)."""
    from captum_vit.data.synthetic import CLASS_NAMES

    return {
        "timm_name": recipe.timm_name,
        "kwargs": recipe.kwargs,
        "pretrained_cfg": {
            "input_size": [3, IMAGE_SIZE, IMAGE_SIZE],
            "mean": list(MEAN),
            "std": list(STD),
            "num_classes": _NUM_CLASSES,
            "interpolation": "bilinear",
            "crop_pct": 1.0,
            "crop_mode": "center",
            "label_names": list(CLASS_NAMES),
        },
        "class_names": list(CLASS_NAMES),
    }


def held_out_accuracy(model: nn.Module, n: int, seed: int = HELD_OUT_SEED, batch_size: int = 250) -> float:
    """Top-1 accuracy on ``n`` freshly rendered single-object images (model in eval mode)."""
    import torch

    from captum_vit.data.synthetic import generate
    from captum_vit.models.preprocess import model_logits, normalize_for

    batch = generate(n, seed=seed, image_size=IMAGE_SIZE)
    correct = 0
    with torch.no_grad():
        for start in range(0, n, batch_size):
            logits = model_logits(model(normalize_for(model, batch.images[start : start + batch_size])))
            correct += int((logits.argmax(-1) == batch.labels[start : start + batch_size]).sum())
    return correct / n


def train_one(name: str, args: argparse.Namespace, device: Any = None) -> tuple[nn.Module, dict[str, Any]]:
    """Train one recipe with the :class:`~captum_vit.training.trainer.Trainer`; the trained
    model (on the CPU) and its training record."""
    import torch
    import torch.nn.functional as F

    from captum_vit.data.synthetic import SyntheticDataset
    from captum_vit.distributed import world_size
    from captum_vit.models.preprocess import model_logits, model_normalization, normalize
    from captum_vit.models.pretrained import build_architecture
    from captum_vit.training.schedules import warmup_cosine
    from captum_vit.training.trainer import Trainer

    class EpochImages(SyntheticDataset):
        """Fresh images each epoch: epoch ``e`` renders seed ``classifier_epoch_seed(e)``."""

        def set_epoch(self, epoch: int) -> None:
            self.seed = classifier_epoch_seed(epoch)

    recipe = RECIPES[name]
    epochs = args.epochs or recipe.epochs
    torch.manual_seed(args.seed)
    model = build_architecture(manifest_spec(recipe)).train()
    mean, std = model_normalization(model)
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    total = epochs * math.ceil(args.train_size / args.batch_size)

    def loss_fn(net: nn.Module, batch: Any) -> torch.Tensor:
        images, labels = batch[0], batch[1]
        return F.cross_entropy(model_logits(net(normalize(images, mean, std))), labels, label_smoothing=0.1)

    trainer = Trainer(
        model,
        opt,
        loss_fn,
        EpochImages(args.train_size, seed=classifier_epoch_seed(0), image_size=IMAGE_SIZE),
        args.batch_size,
        total,
        scheduler=warmup_cosine(opt, total, max(1, total // 10)),
        seed=args.seed,
        device=device,
        num_workers=args.workers,
        drop_last=False,  # every rendered image is trained on, as the recorded runs
        progress=not args.no_progress,
        amp=args.amp,
    )
    start = time.perf_counter()
    trainer.fit()
    record = {
        "command": command_line("train-models", add_arguments, args),
        "epochs": epochs,
        "images_per_epoch": args.train_size,
        "batch_size": args.batch_size,
        "lr": recipe.lr,
        "weight_decay": recipe.weight_decay,
        "train_seeds": [classifier_epoch_seed(e) for e in range(epochs)],
        "wall_time_s": round(time.perf_counter() - start, 1),
        "threads": torch.get_num_threads(),
        "processes": world_size(),
    }
    return model.cpu().eval(), record


def run(args: argparse.Namespace) -> int:
    import torch

    from captum_vit.distributed import init_distributed, shutdown
    from captum_vit.models.pretrained import load_entry
    from captum_vit.models.registry import register_weights, write_entry

    check(args)
    torch.set_num_threads(args.threads)
    ctx = init_distributed(args.device)
    try:
        for name in args.models:
            model, record = train_one(name, args, ctx.device)
            if ctx.rank != 0:
                continue
            state, spec = model.state_dict(), manifest_spec(RECIPES[name])
            entry = register_weights(
                name, "classifier", state, args.out, storage_dtype=torch.float16, training=record, **spec
            )
            # Measure what ships: the fp16 file reloaded through the public loader.
            accuracy = held_out_accuracy(load_entry(entry), args.held_out)
            held_out = {"accuracy": round(accuracy, 4), "images": args.held_out, "seed": HELD_OUT_SEED}
            entry = dataclasses.replace(entry, held_out=held_out)
            write_entry(entry)
            wrote(entry.path, f"{name}, held-out accuracy {accuracy:.2%} on {args.held_out} images")
            if args.register:
                registered = register_weights(
                    args.register, "classifier", state, registry_folder(args), storage_dtype=torch.float16,
                    training=record, held_out=held_out, **spec,
                )  # fmt: skip
                wrote(registered.path, f"registered as {args.register!r}")
    finally:
        shutdown(ctx)
    return 0
